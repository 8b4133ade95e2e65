"""VRRPv2 (RFC 3768) and VRRPv3 (RFC 5798) advertisement codec: pure functions.

Owns: the VRRP message layout (spec §2), the Internet checksum with and without the v3
pseudo-header (spec §2.4), v2 PASS and keepalived's AH flavour (spec §5), the IPv4 header
hactl builds itself (IP_HDRINCL, spec §1.1) and every receive check in the order keepalived
2.2.7 applies them (spec §4.2). Intervals are centiseconds here and only here
(`adver_int_cs`); v2 carries whole seconds on the wire.

Invariants:
* `decode` raises only `VrrpDecodeError`, whose `reason` is a `DropReason` (a metric label).
* `encode(decode(b)) == b` for every message `decode` accepts with a correct checksum,
  except the v3 rsvd nibble, which is ignored on receive and zero on send (RFC 5798 §5.2.5).

Must not import: socket, asyncio, pyroute2, structlog, time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from hactl.errors import VrrpDecodeError
from hactl.vrrp.model import AuthType, IPAddress

__all__ = [
    "AH_HEADER_LEN",
    "IPPROTO_AH",
    "IPPROTO_VRRP",
    "MCAST_GROUP4",
    "MCAST_GROUP6",
    "Advertisement",
    "AhParams",
    "DropReason",
    "ReceivePolicy",
    "Received",
    "build_ipv4_header",
    "decode",
    "decode_ipv4",
    "encode",
    "encode_ipv4",
    "internet_checksum",
    "peek_vrid",
]

IPPROTO_VRRP = 112
IPPROTO_AH = 51
MCAST_GROUP4 = IPv4Address("224.0.0.18")
MCAST_GROUP6 = IPv6Address("ff02::12")
VRRP_TTL = 255
VRRP_TOS = 0xC0
HEADER_LEN = 8
AUTH_LEN = 8
AH_HEADER_LEN = 24
ICV_LEN = 12
TYPE_ADVERTISEMENT = 1


class DropReason(enum.StrEnum):
    """Why an advertisement was not used; stable labels for counters and logs.

    The first group comes from the codec in keepalived's check order (spec §4.2); the last
    group from the router (state, AH replay).
    """

    TRUNCATED = "truncated"
    IP_HEADER = "ip_header"
    AH_MISMATCH = "ah_mismatch"
    LENGTH = "length"
    TTL = "ttl"
    VERSION = "version"
    AUTH_TYPE_INVALID = "auth_type_invalid"
    AUTH_TYPE_MISMATCH = "auth_type_mismatch"
    AUTH_PASSWORD = "auth_password"
    AH_NEXT_HEADER = "ah_next_header"
    AH_ICV = "ah_icv"
    AH_SPI = "ah_spi"
    INTERVAL = "interval"
    TYPE = "type"
    ADDRESS_COUNT = "address_count"
    IP_LENGTH = "ip_length"
    CHECKSUM = "checksum"
    CAST = "cast"
    ADDRESS_LIST = "address_list"
    UNICAST_SOURCE = "unicast_source"
    # router-level reasons
    NOT_LISTENING = "not_listening"
    AH_REPLAY = "ah_replay"
    FAMILY = "family"
    LOWER_PRIORITY = "lower_priority"


@dataclass(frozen=True, slots=True, kw_only=True)
class Advertisement:
    """One VRRP ADVERTISEMENT message, version independent.

    `adver_int_cs` is in centiseconds for both versions (v2 puts whole seconds on the
    wire). `auth_data` is the v2 8-byte authentication field (empty for v3).
    """

    version: int
    vrid: int
    priority: int
    adver_int_cs: int
    addresses: tuple[IPAddress, ...]
    auth_type: AuthType = AuthType.NONE
    auth_data: bytes = b""

    @property
    def advert_interval(self) -> float:
        return self.adver_int_cs / 100


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivePolicy:
    """What one instance expects of an advert: the inputs of keepalived's checks (§4.2).

    `addresses` None skips the count and VIP-list checks (keepalived's
    skip_check_adv_addr for a repeat advert from the same master).
    """

    version: int
    unicast: bool = False
    adver_int_cs: int = 100
    auth_type: AuthType = AuthType.NONE
    auth_key: bytes = b""
    addresses: frozenset[IPAddress] | None = None
    unicast_peers: tuple[tuple[IPAddress, int, int], ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AhParams:
    """Sending with keepalived's AH: key (8 bytes), sequence number, unicast (TTL masking)."""

    key: bytes
    seq: int
    unicast: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """A decoded IPv4 datagram: the advert and the IP facts the router needs."""

    advertisement: Advertisement
    src: IPv4Address
    dst: IPv4Address
    ttl: int
    ah_seq: int | None = None


def internet_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 one's-complement checksum (odd lengths padded with a zero byte)."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(src: IPAddress, dst: IPAddress, length: int) -> bytes:
    if isinstance(src, IPv6Address):
        # RFC 5798 §5.2.8 -> RFC 2460 §8.1 pseudo-header
        return src.packed + dst.packed + struct.pack("!I3xB", length, IPPROTO_VRRP)
    # spec §2.4: keepalived includes an IPv4 pseudo-header with the real destination
    return src.packed + dst.packed + struct.pack("!xBH", IPPROTO_VRRP, length)


def _message_checksum(version: int, message: bytes, src: IPAddress, dst: IPAddress) -> int:
    if version == 2:
        return internet_checksum(message)  # RFC 3768 §5.3.8: no pseudo-header
    return internet_checksum(_pseudo_header(src, dst, len(message)) + message)


def encode(adv: Advertisement, *, src: IPAddress, dst: IPAddress) -> bytes:
    """Build the VRRP message (no IP header) with its checksum.

    Raises ValueError for a message that cannot be put on the wire (a v2 interval that is
    not whole seconds, an address of the wrong family, more than 255 addresses).
    """
    if adv.version not in (2, 3):
        raise ValueError(f"VRRP version {adv.version}")
    if len(adv.addresses) > 255:
        raise ValueError("more than 255 addresses")
    family = type(src)
    if any(type(a) is not family for a in adv.addresses):
        raise ValueError("address family differs from the source address")
    addresses = b"".join(a.packed for a in adv.addresses)
    if adv.version == 2:
        if family is IPv6Address:
            raise ValueError("VRRPv2 is IPv4 only")
        seconds, rest = divmod(adv.adver_int_cs, 100)
        if rest or not 1 <= seconds <= 255:
            raise ValueError(f"VRRPv2 interval {adv.adver_int_cs} cs is not 1..255 s")
        auth = adv.auth_data.ljust(AUTH_LEN, b"\0")[:AUTH_LEN]
        head = struct.pack(
            "!BBBBBB", 0x21, adv.vrid, adv.priority, len(adv.addresses), adv.auth_type, seconds
        )
        body = addresses + auth
    else:
        if not 0 <= adv.adver_int_cs <= 0x0FFF:
            raise ValueError(f"VRRPv3 interval {adv.adver_int_cs} cs exceeds 12 bits")
        head = struct.pack(
            "!BBBBH", 0x31, adv.vrid, adv.priority, len(adv.addresses), adv.adver_int_cs
        )
        body = addresses
    unsummed = head + b"\0\0" + body
    csum = _message_checksum(adv.version, unsummed, src, dst)
    return head + struct.pack("!H", csum) + body


def build_ipv4_header(
    payload_len: int,
    *,
    src: IPv4Address,
    dst: IPv4Address,
    ident: int,
    ttl: int = VRRP_TTL,
    protocol: int = IPPROTO_VRRP,
    tos: int = VRRP_TOS,
) -> bytes:
    """The 20-byte IPv4 header keepalived sends (spec §1.1), header checksum filled in."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        tos,
        20 + payload_len,
        ident & 0xFFFF,
        0,
        ttl,
        protocol,
        0,
        src.packed,
        dst.packed,
    )
    csum = internet_checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:]


def _ah_icv(key: bytes, ip_header: bytes, ah_header: bytes, message: bytes, unicast: bool) -> bytes:
    # spec §5.3: TOS, frag and header checksum zeroed (TTL too, in unicast mode only)
    masked = bytearray(ip_header)
    masked[1] = 0
    masked[6:8] = b"\0\0"
    masked[10:12] = b"\0\0"
    if unicast:
        masked[8] = 0
    zeroed_ah = ah_header[:12] + b"\0" * ICV_LEN
    return hmac.new(key, bytes(masked) + zeroed_ah + message, hashlib.md5).digest()[:ICV_LEN]


def encode_ipv4(
    adv: Advertisement,
    *,
    src: IPv4Address,
    dst: IPv4Address,
    ident: int,
    ttl: int = VRRP_TTL,
    ah: AhParams | None = None,
) -> bytes:
    """Build a whole IPv4 datagram (IP_HDRINCL), with keepalived's AH header if `ah` is set."""
    message = encode(adv, src=src, dst=dst)
    if ah is None:
        return build_ipv4_header(len(message), src=src, dst=dst, ident=ident, ttl=ttl) + message
    if ident == 0:
        raise ValueError("AH needs a non-zero IP ID (the kernel would rewrite 0)")
    ip_header = build_ipv4_header(
        AH_HEADER_LEN + len(message), src=src, dst=dst, ident=ident, ttl=ttl, protocol=IPPROTO_AH
    )
    ah_head = struct.pack("!BBH4sI", IPPROTO_VRRP, 4, 0, src.packed, ah.seq & 0xFFFFFFFF)
    icv = _ah_icv(ah.key, ip_header, ah_head + b"\0" * ICV_LEN, message, ah.unicast)
    return ip_header + ah_head + icv + message


def peek_vrid(message: bytes) -> int | None:
    """The VRID byte of a VRRP message, for demultiplexing before any check; None if absent."""
    return message[1] if len(message) >= 2 else None


def _fail(reason: DropReason, detail: str = "") -> VrrpDecodeError:
    return VrrpDecodeError(reason, detail)


def decode(
    message: bytes,
    *,
    src: IPAddress,
    dst: IPAddress,
    ttl: int,
    policy: ReceivePolicy | None = None,
    ip_total_length: int | None = None,
    _ah_checked: bool = False,
) -> Advertisement:
    """Decode and validate one VRRP message (the bytes after the IPv4/AH header).

    Without a policy only the structure is checked (length, version, type, auth type,
    checksum). With a policy every check of keepalived's `vrrp_check_packet` runs, in its
    order (spec §4.2). `ttl` is the received TTL / hop limit.

    Raises:
        VrrpDecodeError: with `reason` a `DropReason`.
    """
    if len(message) < HEADER_LEN:
        raise _fail(DropReason.TRUNCATED, f"{len(message)} bytes")
    vers_type, vrid, priority, naddr = message[0], message[1], message[2], message[3]
    version = vers_type >> 4
    ipv6 = isinstance(src, IPv6Address)
    addr_len = 16 if ipv6 else 4
    # spec §2.3 / check 2: the length must be exact, computed from the packet's own header
    expected = HEADER_LEN + naddr * addr_len + (AUTH_LEN if version == 2 and not ipv6 else 0)
    if len(message) != expected:
        kind = "long" if len(message) > expected else "short"
        raise _fail(DropReason.LENGTH, f"too {kind}: {len(message)}, expected {expected}")
    if policy is not None and not policy.unicast and ttl != VRRP_TTL:
        # check 3: RFC 5798 §7.1 TTL 255, checked in multicast mode only (deviation §10.9)
        raise _fail(DropReason.TTL, f"received {ttl}, expected {VRRP_TTL}")
    expected_version = policy.version if policy is not None else None
    if version not in (2, 3) or (expected_version is not None and version != expected_version):
        raise _fail(DropReason.VERSION, f"received {version}")
    if version == 2 and ipv6:
        raise _fail(DropReason.VERSION, "VRRPv2 over IPv6")
    auth_type = AuthType.NONE
    auth_data = b""
    if version == 2:
        raw_auth = message[4]
        if raw_auth not in (0, 1, 2):
            raise _fail(DropReason.AUTH_TYPE_INVALID, f"auth type {raw_auth}")
        auth_type = AuthType(raw_auth)
        auth_data = message[-AUTH_LEN:]
        if policy is not None:
            if auth_type is not policy.auth_type:
                raise _fail(
                    DropReason.AUTH_TYPE_MISMATCH,
                    f"received {int(auth_type)}, expected {int(policy.auth_type)}",
                )
            if auth_type is AuthType.PASS and not hmac.compare_digest(
                auth_data, policy.auth_key.ljust(AUTH_LEN, b"\0")
            ):
                raise _fail(DropReason.AUTH_PASSWORD)
            if auth_type is AuthType.AH and not _ah_checked:
                # AH is verified by decode_ipv4 before it calls us
                raise _fail(DropReason.AH_MISMATCH, "AH advert without its AH header")
        adver_int_cs = message[5] * 100
        if policy is not None and adver_int_cs != policy.adver_int_cs:
            # check 8: RFC 3768 §7.1 interval must match
            raise _fail(
                DropReason.INTERVAL,
                f"mine={policy.adver_int_cs // 100} s received={message[5]} s",
            )
    else:
        # RFC 5798 §5.2.5: rsvd ignored on receive
        adver_int_cs = struct.unpack_from("!H", message, 4)[0] & 0x0FFF
    if vers_type & 0x0F != TYPE_ADVERTISEMENT:
        raise _fail(DropReason.TYPE, f"type {vers_type & 0x0F}")
    if policy is not None and policy.addresses is not None and naddr != len(policy.addresses):
        raise _fail(DropReason.ADDRESS_COUNT, f"received {naddr}, expected {len(policy.addresses)}")
    if ip_total_length is not None and ip_total_length != len(message):
        raise _fail(DropReason.IP_LENGTH, f"tot_len says {ip_total_length}")
    unsummed = message[:6] + b"\0\0" + message[8:]
    received_csum = struct.unpack_from("!H", message, 6)[0]
    if _message_checksum(version, unsummed, src, dst) != received_csum:
        # spec §2.4: keepalived built with OLD_CHKSUM_COMPAT also accepts a unicast v3
        # checksum computed with 224.0.0.18 (keepalived <= 1.3.6 peers)
        legacy_ok = (
            version == 3
            and not ipv6
            and policy is not None
            and policy.unicast
            and _message_checksum(version, unsummed, src, MCAST_GROUP4) == received_csum
        )
        if not legacy_ok:
            raise _fail(DropReason.CHECKSUM, f"0x{received_csum:04x}")
    if policy is not None and dst.is_multicast == policy.unicast:
        raise _fail(
            DropReason.CAST,
            "multicast in unicast mode" if policy.unicast else "unicast in multicast mode",
        )
    addresses: tuple[IPAddress, ...]
    if ipv6:
        addresses = tuple(
            IPv6Address(message[HEADER_LEN + 16 * i : HEADER_LEN + 16 * (i + 1)])
            for i in range(naddr)
        )
    else:
        addresses = tuple(
            IPv4Address(message[HEADER_LEN + 4 * i : HEADER_LEN + 4 * (i + 1)])
            for i in range(naddr)
        )
    if policy is not None and policy.addresses is not None:
        present = set(addresses)
        for vip in sorted(policy.addresses, key=lambda a: (a.version, int(a))):
            if vip not in present:
                # spec §4.2 check 14 (deviation §10.7): every configured VIP must be there
                raise _fail(DropReason.ADDRESS_LIST, f"{vip} not in advert")
    if policy is not None and policy.unicast and policy.unicast_peers is not None:
        bounds = {peer: (low, high) for peer, low, high in policy.unicast_peers}.get(src)
        if bounds is None:
            raise _fail(DropReason.UNICAST_SOURCE, f"{src} is not a unicast peer")
        if not bounds[0] <= ttl <= bounds[1]:
            raise _fail(DropReason.UNICAST_SOURCE, f"TTL {ttl} not in {bounds[0]}-{bounds[1]}")
    return Advertisement(
        version=version,
        vrid=vrid,
        priority=priority,
        adver_int_cs=adver_int_cs,
        addresses=addresses,
        auth_type=auth_type,
        auth_data=auth_data,
    )


def decode_ipv4(packet: bytes, *, policy: ReceivePolicy | None = None) -> Received:
    """Decode what a raw IPv4 socket returns: the IPv4 header, maybe AH, then VRRP.

    With a policy, AH presence must match the policy's auth type (spec §4.2 check 1) and the
    ICV and SPI are verified (check 7b); the replay check is the router's, as it owns the
    sequence counter.

    Raises:
        VrrpDecodeError: with `reason` a `DropReason`.
    """
    if len(packet) < 20:
        raise _fail(DropReason.TRUNCATED, f"{len(packet)} bytes of IPv4 header")
    if packet[0] >> 4 != 4:
        raise _fail(DropReason.IP_HEADER, "not IPv4")
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        raise _fail(DropReason.IP_HEADER, f"IHL {ihl}")
    tot_len = struct.unpack_from("!H", packet, 2)[0]
    ttl, protocol = packet[8], packet[9]
    src, dst = IPv4Address(packet[12:16]), IPv4Address(packet[16:20])
    is_ah = protocol == IPPROTO_AH
    if protocol not in (IPPROTO_AH, IPPROTO_VRRP):
        raise _fail(DropReason.IP_HEADER, f"protocol {protocol}")
    if policy is not None and is_ah != (policy.auth_type is AuthType.AH):
        raise _fail(DropReason.AH_MISMATCH, "AH header" if is_ah else "no AH header")
    offset = ihl + (AH_HEADER_LEN if is_ah else 0)
    if len(packet) < offset:
        raise _fail(DropReason.TRUNCATED, "AH header cut short")
    message = packet[offset:]
    seq: int | None = None
    if is_ah:
        next_header, _plen, _rsvd, spi, seq = struct.unpack_from("!BBH4sI", packet, ihl)
        if policy is not None:
            # run the structural checks that precede AH in keepalived's order first
            _precheck_before_auth(message, src=src, ttl=ttl, policy=policy)
            if next_header != IPPROTO_VRRP:
                raise _fail(DropReason.AH_NEXT_HEADER, f"next header {next_header}")
            icv = packet[ihl + 12 : ihl + AH_HEADER_LEN]
            want = _ah_icv(
                policy.auth_key.ljust(AUTH_LEN, b"\0"),
                packet[:ihl],
                packet[ihl : ihl + AH_HEADER_LEN],
                message,
                policy.unicast,
            )
            if not hmac.compare_digest(icv, want):
                raise _fail(DropReason.AH_ICV)
            if spi != src.packed:
                raise _fail(DropReason.AH_SPI, f"SPI {IPv4Address(spi)} from {src}")
    advertisement = decode(
        message,
        src=src,
        dst=dst,
        ttl=ttl,
        policy=policy,
        ip_total_length=tot_len - offset,
        _ah_checked=is_ah,
    )
    return Received(advertisement=advertisement, src=src, dst=dst, ttl=ttl, ah_seq=seq)


def _precheck_before_auth(
    message: bytes, *, src: IPAddress, ttl: int, policy: ReceivePolicy
) -> None:
    """keepalived checks length, TTL, version and auth type before the AH ICV (§4.2)."""
    if len(message) < HEADER_LEN:
        raise _fail(DropReason.TRUNCATED, f"{len(message)} bytes")
    expected = HEADER_LEN + message[3] * 4 + (AUTH_LEN if message[0] >> 4 == 2 else 0)
    if len(message) != expected:
        raise _fail(DropReason.LENGTH, f"{len(message)}, expected {expected}")
    if not policy.unicast and ttl != VRRP_TTL:
        raise _fail(DropReason.TTL, f"received {ttl}")
    if message[0] >> 4 != policy.version:
        raise _fail(DropReason.VERSION, f"received {message[0] >> 4}")
    if message[4] not in (0, 1, 2):
        raise _fail(DropReason.AUTH_TYPE_INVALID, f"auth type {message[4]}")
    if message[4] != policy.auth_type:
        raise _fail(DropReason.AUTH_TYPE_MISMATCH, f"received {message[4]}")
