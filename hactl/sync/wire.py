"""Codec of the IPVS connection-sync protocol (spec/ipvs.md §1), byte for byte as Linux does it.

Owns:
* the version 1 message (8-byte header, 36-byte IPv4 / 72-byte IPv6 entries, the SEQ_DATA,
  PE_DATA and PE_NAME options, 4-byte alignment between entries, no trailing pad): §1.2-§1.5;
* the version 0 message (4-byte header, 24/48-byte IPv4 entries): §1.6;
* every validation rule of the kernel receiver (§1.9), reproduced in the kernel's order;
* the optional hactl authentication trailer (HMAC-SHA256), off unless a key is given.

Invariants:
* `decode_message` never raises anything but `SyncDecodeError`, and raises it only where the
  kernel discards the whole datagram before applying any entry (§1.9 "per datagram"). An error
  inside the entry list is *not* raised: the kernel has already applied the entries before it,
  so the result carries them plus `fatal` (the reason the rest was dropped). Entries the kernel
  skips one by one are listed in `skipped`.
* Decoded entries carry the flags exactly as on the wire; `accepted_flags()` applies the
  receiver's masking (§1.9 "Flags accepted"), which differs between versions.
* `encode_message` raises `ValueError` for entries that cannot be put on the wire (an IPv6
  entry in version 0, PE data over 255 bytes...): those are caller bugs, not remote input.

Pure: imports only the standard library, `hactl.errors` and `hactl.ipvs.model`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

from hactl.errors import SyncDecodeError
from hactl.ipvs.model import AF_INET, AF_INET6, IPAddress, SyncConn

__all__ = [
    "AUTH_TRAILER_LEN",
    "BACKUP_MASK",
    "DEFAULT_PE_NAMES",
    "FLAG_HASHED",
    "FLAG_SEQ_MASK",
    "FLAG_SYNC",
    "FLAG_TEMPLATE",
    "HEADER_V0_LEN",
    "HEADER_V1_LEN",
    "MAX_ENTRIES",
    "MAX_MESSAGE_LEN",
    "OPT_F_PARAM",
    "OPT_PE_DATA",
    "OPT_PE_NAME",
    "OPT_SEQ_DATA",
    "PE_DATA_MAXLEN",
    "PE_NAME_MAXLEN",
    "PROTOCOL_STATES",
    "V0_ENTRY_LEN",
    "V0_ENTRY_SEQ_LEN",
    "V4_ENTRY_LEN",
    "V6_ENTRY_LEN",
    "EntrySkip",
    "SyncDropReason",
    "SyncMessage",
    "accepted_flags",
    "assemble",
    "decode_message",
    "encode_entry",
    "encode_message",
    "entry_len",
    "pack_header",
    "sign",
    "verify",
]

# §1.2 / §1.6 header sizes, §1.3 / §1.6 entry sizes.
HEADER_V1_LEN = 8
HEADER_V0_LEN = 4
V4_ENTRY_LEN = 36
V6_ENTRY_LEN = 72
V0_ENTRY_LEN = 24  # SIMPLE_CONN_SIZE
V0_ENTRY_SEQ_LEN = 48  # FULL_CONN_SIZE
SEQ_DATA_LEN = 24  # two struct ip_vs_seq of three 32-bit words
MAX_ENTRIES = 255  # nr_conns is one byte
MAX_MESSAGE_LEN = 65535  # size is a be16

# §1.4 option types; bit 0x40 marks an option the receiver may ignore when unknown.
OPT_SEQ_DATA = 1
OPT_PE_DATA = 2
OPT_PE_NAME = 3
OPT_F_PARAM = 0x40
PE_DATA_MAXLEN = 255
PE_NAME_MAXLEN = 16

# §0.1 connection flags used by the codec.
FLAG_SYNC = 0x0020
FLAG_HASHED = 0x0040
FLAG_INACTIVE = 0x0100
FLAG_SEQ_MASK = 0x0600
FLAG_TEMPLATE = 0x1000
BACKUP_MASK = 0x1F87

# §1.9: number of states of each protocol a kernel backup knows (state must be below it).
# 50/51 are ESP/AH. Templates are not checked against this table.
PROTOCOL_STATES: dict[int, int] = {6: 11, 17: 1, 132: 14, 50: 1, 51: 1}
# Persistence engines a kernel backup has loaded in the common case (ip_vs_pe_sip).
DEFAULT_PE_NAMES: frozenset[str] = frozenset({"sip"})

_STYPE_F_INET6 = 0x01
_SVER_SHIFT = 12
_SVER_MASK = 0x0FFF

# The hactl authentication extension (docs/sync.md "Authenticated sync"): a 4-byte tag followed
# by HMAC-SHA256(key, message) appended *after* the `size` bytes of the message.
_AUTH_TAG = b"HSA1"
_AUTH_MAC_LEN = 32
AUTH_TRAILER_LEN = len(_AUTH_TAG) + _AUTH_MAC_LEN

_HDR_V1 = struct.Struct(">BBHBBH")  # reserved, syncid, size, nr_conns, version, spare
_HDR_V0 = struct.Struct(">BBH")  # nr_conns, syncid, size
# type, protocol, ver_size, flags, state, cport, vport, dport, fwmark, timeout, c/v/daddr
_ENT_V4 = struct.Struct(">BBHIHHHHIIIII")
_ENT_V6 = struct.Struct(">BBHIHHHHII16s16s16s")
# reserved, protocol, cport, vport, dport, caddr, vaddr, daddr, flags, state
_ENT_V0 = struct.Struct(">BBHHHIIIHH")
_SEQ_BE = struct.Struct(">6I")
# §1.6: version 0 copies the sequence data in the sender's host order; Linux directors are
# little-endian in practice (x86, arm64), so that is the order hactl reads and writes.
_SEQ_V0 = struct.Struct("<6I")
_U16 = struct.Struct(">H")
_ZERO_SEQ = (0, 0, 0, 0, 0, 0)


class SyncDropReason(enum.Enum):
    """Why a datagram, the rest of one, or one entry was not applied (a metric label).

    The comment after each member names the kernel's behaviour it mirrors (§1.9).
    """

    # whole datagram discarded before any entry is looked at
    TOO_SHORT = "too_short"  # shorter than the 4-byte v0 header
    TOO_LONG = "too_long"  # longer than the receive buffer: the kernel truncates, size fails
    BAD_SIZE = "bad_size"  # `size` differs from the datagram length
    SYNCID_MISMATCH = "syncid_mismatch"  # backup syncid != 0 and != message syncid
    AUTH_MISSING = "auth_missing"  # hactl extension: no trailer while a key is configured
    AUTH_FAILED = "auth_failed"  # hactl extension: trailer present, MAC wrong
    # v1: the rest of the message is dropped, earlier entries stay applied
    ENTRY_TRUNCATED = "entry_truncated"  # fewer than 36 bytes left for the next entry
    ENTRY_BEYOND_END = "entry_beyond_end"  # entry size runs past the datagram
    ENTRY_VERSION = "entry_version"  # version nibble of ver_size != 0
    BAD_TYPE = "bad_type"  # -10: type is even and not 0 (odd types are IPv6)
    ENTRY_TOO_SMALL = "entry_too_small"  # -20: fixed part longer than the entry size
    OPTION_TRUNCATED = "option_truncated"  # -30: option header cut by the entry end
    OPTION_LENGTH = "option_length"  # -40: option length 0 or past the entry end
    BAD_SEQ_DATA = "bad_seq_data"  # -50: SEQ_DATA length != 24 or seen twice
    BAD_PE_DATA = "bad_pe_data"  # -60: PE_DATA seen twice
    BAD_PE_NAME = "bad_pe_name"  # -70: PE_NAME longer than 16 or seen twice
    # v0: the rest of the message is dropped
    V0_ENTRY_TRUNCATED = "v0_entry_truncated"  # fewer than 24 bytes left
    V0_SEQ_TRUNCATED = "v0_seq_truncated"  # SEQ flags set but fewer than 48 bytes left
    # one entry skipped, processing goes on
    UNKNOWN_OPTION = "unknown_option"  # 20: unknown option without the 0x40 bit
    UNKNOWN_PROTOCOL = "unknown_protocol"  # 30: non-template of a protocol IPVS lacks
    BAD_STATE = "bad_state"  # 40: non-template state >= the protocol's state count
    BAD_PE = "bad_pe"  # 50: PE data without a PE name, or an engine not loaded


@dataclass(frozen=True, slots=True)
class EntrySkip:
    """One entry a kernel backup would skip: its index in the message and why."""

    index: int
    reason: SyncDropReason


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncMessage:
    """A decoded datagram.

    `entries` are the entries a kernel backup would apply, in order, with wire flags.
    `skipped` lists the entries it would skip. `fatal` is set when processing stopped early
    (the entries after that point were dropped; `entries` still holds those before it).
    `nr_conns` is the header's count, `authenticated` is True when an hactl trailer verified.
    """

    version: int
    syncid: int
    nr_conns: int
    entries: tuple[SyncConn, ...]
    skipped: tuple[EntrySkip, ...] = ()
    fatal: SyncDropReason | None = None
    authenticated: bool = False


def accepted_flags(flags: int, version: int) -> int:
    """The flags a kernel backup gives the entry it creates (§1.9 "Flags accepted").

    v1: `flags & BACKUP_MASK | SYNC`; v0: `(flags | SYNC) & ~HASHED` (no BACKUP_MASK in v0).
    """
    if version == 0:
        return (flags | FLAG_SYNC) & ~FLAG_HASHED
    return (flags & BACKUP_MASK) | FLAG_SYNC


# ---------------------------------------------------------------------------------------------
# encoding


def entry_len(entry: SyncConn, *, version: int = 1) -> int:
    """Length of `entry` on the wire, options included, padding excluded (§1.3-§1.6)."""
    if version == 0:
        return V0_ENTRY_SEQ_LEN if entry.flags & FLAG_SEQ_MASK else V0_ENTRY_LEN
    n = V6_ENTRY_LEN if entry.family == AF_INET6 else V4_ENTRY_LEN
    if entry.flags & FLAG_SEQ_MASK:
        n += 2 + SEQ_DATA_LEN
    if entry.pe_data:
        n += 2 + len(entry.pe_data)
        if entry.pe_name:
            n += 2 + len(entry.pe_name)
    return n


def _encode_v1_entry(e: SyncConn) -> bytes:
    """One v1 entry (§1.3, §1.4; sender order SEQ_DATA, PE_DATA, PE_NAME)."""
    flags = e.flags & ~FLAG_HASHED & 0xFFFFFFFF  # §1.7: HASHED never travels
    if e.family == AF_INET and not flags & FLAG_SEQ_MASK and not e.pe_data:
        return _ENT_V4.pack(  # the common entry: IPv4, no options
            0, e.protocol, V4_ENTRY_LEN, flags, e.state, e.cport, e.vport, e.dport,
            e.fwmark, e.timeout, int(e.caddr), int(e.vaddr), int(e.daddr),
        )
    opts = b""
    if flags & FLAG_SEQ_MASK:
        opts = bytes((OPT_SEQ_DATA, SEQ_DATA_LEN)) + _SEQ_BE.pack(*(e.seq or _ZERO_SEQ))
    if e.pe_data:
        if len(e.pe_data) > PE_DATA_MAXLEN:
            raise ValueError(f"PE data of {len(e.pe_data)} bytes exceeds {PE_DATA_MAXLEN}")
        opts += bytes((OPT_PE_DATA, len(e.pe_data))) + e.pe_data
        if e.pe_name:  # §1.4: PE_NAME only together with PE_DATA
            name = e.pe_name.encode("latin-1")
            if len(name) > PE_NAME_MAXLEN:
                raise ValueError(f"PE name {e.pe_name!r} exceeds {PE_NAME_MAXLEN} bytes")
            opts += bytes((OPT_PE_NAME, len(name))) + name
    if e.family == AF_INET6:
        size = V6_ENTRY_LEN + len(opts)
        fixed = _ENT_V6.pack(
            _STYPE_F_INET6, e.protocol, size, flags, e.state, e.cport, e.vport, e.dport,
            e.fwmark, e.timeout, e.caddr.packed, e.vaddr.packed, e.daddr.packed,
        )
    else:
        size = V4_ENTRY_LEN + len(opts)
        fixed = _ENT_V4.pack(
            0, e.protocol, size, flags, e.state, e.cport, e.vport, e.dport,
            e.fwmark, e.timeout, int(e.caddr), int(e.vaddr), int(e.daddr),
        )
    return fixed + opts if opts else fixed


def _encode_v0_entry(e: SyncConn) -> bytes:
    """One v0 entry (§1.6): IPv4 only, 16 flag bits, no fwmark, timeout or PE data."""
    if e.family != AF_INET:
        raise ValueError("version 0 carries IPv4 entries only (§1.6)")
    flags = e.flags & ~FLAG_HASHED & 0xFFFF
    fixed = _ENT_V0.pack(
        0, e.protocol, e.cport, e.vport, e.dport,
        int(e.caddr), int(e.vaddr), int(e.daddr), flags, e.state,
    )
    if flags & FLAG_SEQ_MASK:
        return fixed + _SEQ_V0.pack(*(e.seq or _ZERO_SEQ))
    return fixed


def encode_entry(entry: SyncConn, *, version: int = 1) -> bytes:
    """The bytes of one entry, without alignment padding."""
    return _encode_v1_entry(entry) if version == 1 else _encode_v0_entry(entry)


def pack_header(syncid: int, size: int, count: int, *, version: int = 1) -> bytes:
    """A message header (§1.2 for v1, §1.6 for v0); `size` includes the header."""
    if version == 0:
        return _HDR_V0.pack(count, syncid & 0xFF, size)
    return _HDR_V1.pack(0, syncid & 0xFF, size, count, 1, 0)


def assemble(syncid: int, encoded: Sequence[bytes], *, version: int = 1) -> bytes:
    """A message from already encoded entries: header plus entries, padded between (§1.5)."""
    if len(encoded) > MAX_ENTRIES:
        raise ValueError(f"{len(encoded)} entries exceed the {MAX_ENTRIES} a message can hold")
    if version == 0:
        body = b"".join(encoded)
        size = HEADER_V0_LEN + len(body)
        if size > MAX_MESSAGE_LEN:
            raise ValueError(f"message of {size} bytes exceeds {MAX_MESSAGE_LEN}")
        return _HDR_V0.pack(len(encoded), syncid & 0xFF, size) + body
    parts: list[bytes] = []
    size = HEADER_V1_LEN
    for chunk in encoded:
        pad = -size & 3  # entries start 4-byte aligned; no pad after the last one
        if pad:
            parts.append(b"\0" * pad)
            size += pad
        parts.append(chunk)
        size += len(chunk)
    if size > MAX_MESSAGE_LEN:
        raise ValueError(f"message of {size} bytes exceeds {MAX_MESSAGE_LEN}")
    return _HDR_V1.pack(0, syncid & 0xFF, size, len(encoded), 1, 0) + b"".join(parts)


def encode_message(syncid: int, entries: Iterable[SyncConn], *, version: int = 1) -> bytes:
    """Encode one sync message as a kernel master would (§1.2-§1.7).

    Args:
        syncid: the master's sync id; only the low 8 bits travel (§1.2).
        entries: at most 255 entries, in order.
        version: 1 (default) or 0 (`sync_version 0`, IPv4 only).

    Returns:
        The datagram payload; its `size` field equals its length.

    Raises:
        ValueError: an entry cannot be encoded in `version`, or the message would exceed
        255 entries or 65535 bytes.
    """
    if version not in (0, 1):
        raise ValueError(f"unknown sync version {version}")
    return assemble(syncid, [encode_entry(e, version=version) for e in entries], version=version)


def sign(message: bytes, key: bytes) -> bytes:
    """`message` followed by the hactl authentication trailer (tag + HMAC-SHA256)."""
    return message + _AUTH_TAG + hmac.digest(key, message, hashlib.sha256)


def verify(datagram: bytes, key: bytes) -> bytes:
    """Check and strip the hactl trailer; return the sync message it protects.

    Raises:
        SyncDecodeError: AUTH_MISSING if the datagram carries no trailer, AUTH_FAILED if the
        MAC does not match (compared in constant time).
    """
    n = len(datagram) - AUTH_TRAILER_LEN
    if n < HEADER_V0_LEN or datagram[n : n + len(_AUTH_TAG)] != _AUTH_TAG:
        raise SyncDecodeError(SyncDropReason.AUTH_MISSING, "no authentication trailer")
    message = datagram[:n]
    expected = hmac.digest(key, message, hashlib.sha256)
    if not hmac.compare_digest(expected, datagram[n + len(_AUTH_TAG) :]):
        raise SyncDecodeError(SyncDropReason.AUTH_FAILED, "HMAC mismatch")
    return message


# ---------------------------------------------------------------------------------------------
# decoding

_K = TypeVar("_K", bound=int | bytes)
_A = TypeVar("_A", bound=IPAddress)
_CACHE_MAX = 65536


class _AddressCache(dict[_K, _A]):
    """Address objects by packed value, made on first use; emptied when it reaches
    `_CACHE_MAX` entries. A hit is a plain dict lookup."""

    def __init__(self, make: Callable[[_K], _A]) -> None:
        super().__init__()
        self._make: Callable[[_K], _A] = make

    def __missing__(self, value: _K) -> _A:
        if len(self) >= _CACHE_MAX:
            self.clear()
        addr: _A = self._make(value)
        self[value] = addr
        return addr


# Decoded addresses repeat a lot (VIPs, real servers, busy clients): cache the objects.
_V4_CACHE: _AddressCache[int, ipaddress.IPv4Address] = _AddressCache(ipaddress.IPv4Address)
_V6_CACHE: _AddressCache[bytes, ipaddress.IPv6Address] = _AddressCache(ipaddress.IPv6Address)
_v4 = _V4_CACHE.__getitem__
_v6 = _V6_CACHE.__getitem__


# Building a SyncConn through its frozen-dataclass __init__ costs one object.__setattr__ per
# field (15 of them), which dominated decoding. Setting the slots through their descriptors,
# one unrolled call per field, gives the same fully initialised, equal, hashable object in
# about a quarter of the time. The field list is checked against the class at import, so a
# field added to the shared contract cannot be left unset silently.
_CONN_FIELDS = (
    "family", "protocol", "flags", "state", "cport", "vport", "dport", "fwmark", "timeout",
    "caddr", "vaddr", "daddr", "seq", "pe_name", "pe_data",
)
if {f.name for f in fields(SyncConn)} != set(_CONN_FIELDS) or set(SyncConn.__slots__) != set(
    _CONN_FIELDS
):  # pragma: no cover - the shared contract changed: _make_conn must follow
    raise ImportError("SyncConn's fields changed; update hactl.sync.wire._make_conn")
(
    _set_family, _set_protocol, _set_flags, _set_state, _set_cport, _set_vport, _set_dport,
    _set_fwmark, _set_timeout, _set_caddr, _set_vaddr, _set_daddr, _set_seq, _set_pe_name,
    _set_pe_data,
) = (getattr(SyncConn, name).__set__ for name in _CONN_FIELDS)
_new_conn = SyncConn.__new__


def _make_conn(
    family: int, protocol: int, flags: int, state: int, cport: int, vport: int, dport: int,
    fwmark: int, timeout: int, caddr: IPAddress, vaddr: IPAddress, daddr: IPAddress,
    seq: tuple[int, int, int, int, int, int] | None, pe_name: str, pe_data: bytes,
) -> SyncConn:
    """A SyncConn, every field set through its slot (one call per field, no loop)."""
    conn = _new_conn(SyncConn)
    _set_family(conn, family)
    _set_protocol(conn, protocol)
    _set_flags(conn, flags)
    _set_state(conn, state)
    _set_cport(conn, cport)
    _set_vport(conn, vport)
    _set_dport(conn, dport)
    _set_fwmark(conn, fwmark)
    _set_timeout(conn, timeout)
    _set_caddr(conn, caddr)
    _set_vaddr(conn, vaddr)
    _set_daddr(conn, daddr)
    _set_seq(conn, seq)
    _set_pe_name(conn, pe_name)
    _set_pe_data(conn, pe_data)
    return conn


class _Fatal(Exception):
    """Internal: an entry error after which the kernel drops the rest of the message."""

    def __init__(self, reason: SyncDropReason) -> None:
        self.reason = reason


def _check_entry(protocol: int, flags: int, state: int) -> SyncDropReason | None:
    """§1.9 protocol and state checks; templates are exempt (the kernel only logs)."""
    if flags & FLAG_TEMPLATE:
        return None
    nstates = PROTOCOL_STATES.get(protocol)
    if nstates is None:
        return SyncDropReason.UNKNOWN_PROTOCOL
    if state >= nstates:
        return SyncDropReason.BAD_STATE
    return None


# A v1 entry's fixed part by family: its size, its layout and the maker of its addresses.
_AddressMaker = Callable[[int], ipaddress.IPv4Address] | Callable[[bytes], ipaddress.IPv6Address]
_ENTRY_FORMS: dict[int, tuple[int, struct.Struct, _AddressMaker]] = {
    AF_INET: (V4_ENTRY_LEN, _ENT_V4, _v4),
    AF_INET6: (V6_ENTRY_LEN, _ENT_V6, _v6),
}


def _decode_v1_entry(
    data: bytes, start: int, end: int, pe_names: frozenset[str], accept: bool
) -> SyncConn | SyncDropReason:
    """One v1 entry occupying data[start:end] (§1.9, `ip_vs_proc_sync_conn` order).

    Returns the entry, or the reason it is skipped; raises _Fatal for message-fatal errors.
    """
    etype = data[start]
    family: int
    if etype == 0:
        family = AF_INET
    elif etype & _STYPE_F_INET6:
        # The kernel tests the IPv6 bit first: an odd type is IPv6 whatever its other bits;
        # only an even non-zero type is fatal.
        family = AF_INET6
    else:
        raise _Fatal(SyncDropReason.BAD_TYPE)
    size, layout, address = _ENTRY_FORMS[family]
    p = start + size
    if p > end:
        raise _Fatal(SyncDropReason.ENTRY_TOO_SMALL)
    (_, proto, _, flags, state, cport, vport, dport, fwmark, timeout, ca, va, da) = (
        layout.unpack_from(data, start)
    )
    caddr: IPAddress = address(ca)
    vaddr: IPAddress = address(va)
    addr: IPAddress = address(da)

    seq: tuple[int, int, int, int, int, int] | None = None
    pe_data: bytes | None = None
    pe_name: bytes | None = None
    while p < end:  # §1.4 options, checked type and length first
        if p + 2 > end:
            raise _Fatal(SyncDropReason.OPTION_TRUNCATED)
        ptype = data[p]
        plen = data[p + 1]
        p += 2
        if not plen or p + plen > end:
            raise _Fatal(SyncDropReason.OPTION_LENGTH)
        kind = ptype & ~OPT_F_PARAM
        if kind == OPT_SEQ_DATA:
            if plen != SEQ_DATA_LEN or seq is not None:
                raise _Fatal(SyncDropReason.BAD_SEQ_DATA)
            seq = _SEQ_BE.unpack_from(data, p)
        elif kind == OPT_PE_DATA:
            if pe_data is not None:  # (length <= 255 always holds for a one-byte length)
                raise _Fatal(SyncDropReason.BAD_PE_DATA)
            pe_data = data[p : p + plen]
        elif kind == OPT_PE_NAME:
            if plen > PE_NAME_MAXLEN or pe_name is not None:
                raise _Fatal(SyncDropReason.BAD_PE_NAME)
            pe_name = data[p : p + plen]
        elif not ptype & OPT_F_PARAM:
            # The kernel stops reading options here: later malformed options go unnoticed.
            return SyncDropReason.UNKNOWN_OPTION
        p += plen

    skip = _check_entry(proto, flags, state)
    if skip is not None:
        return skip
    name = ""
    if pe_data is not None:
        if pe_name is None:
            return SyncDropReason.BAD_PE  # "Invalid PE parameters"
        # The kernel NUL-terminates the copied name, so bytes after a NUL do not count.
        name = pe_name.split(b"\0", 1)[0].decode("latin-1")
        if name not in pe_names:
            return SyncDropReason.BAD_PE  # engine not loaded
    # A PE_NAME without PE_DATA is ignored by the kernel, and so it is here.
    if accept:
        flags = (flags & BACKUP_MASK) | FLAG_SYNC  # §1.9 flags accepted, v1
    return _make_conn(
        family, proto, flags, state, cport, vport, dport, fwmark, timeout, caddr, vaddr, addr,
        seq, name, pe_data or b"",
    )


def _decode_v1(data: bytes, syncid: int, pe_names: frozenset[str], accept: bool) -> SyncMessage:
    nr_conns = data[4]
    buflen = len(data)
    entries: list[SyncConn] = []
    skipped: list[EntrySkip] = []
    fatal: SyncDropReason | None = None
    p = HEADER_V1_LEN
    unpack_vs = _U16.unpack_from
    unpack_v4 = _ENT_V4.unpack_from
    cached = _V4_CACHE.get
    states = PROTOCOL_STATES.get
    for i in range(nr_conns):
        # The kernel checks for a v4-sized fixed part even when the entry is IPv6.
        if p + V4_ENTRY_LEN > buflen:
            fatal = SyncDropReason.ENTRY_TRUNCATED
            break
        (ver_size,) = unpack_vs(data, p + 2)
        size = ver_size & _SVER_MASK
        end = p + size
        if end > buflen:
            fatal = SyncDropReason.ENTRY_BEYOND_END
            break
        if ver_size >> _SVER_SHIFT:
            fatal = SyncDropReason.ENTRY_VERSION
            break
        if size == V4_ENTRY_LEN and data[p] == 0:
            # Fast path for the common entry, an IPv4 one without options: the same checks
            # as _decode_v1_entry (protocol and state, §1.9), without the option loop.
            (_, proto, _, flags, state, cport, vport, dport, fwmark, timeout, ca, va, da) = (
                unpack_v4(data, p)
            )
            if not flags & FLAG_TEMPLATE:
                nstates = states(proto)
                if nstates is None or state >= nstates:
                    reason = (
                        SyncDropReason.UNKNOWN_PROTOCOL if nstates is None
                        else SyncDropReason.BAD_STATE
                    )
                    skipped.append(EntrySkip(i, reason))
                    p += V4_ENTRY_LEN
                    continue
            if accept:
                flags = (flags & BACKUP_MASK) | FLAG_SYNC
            entries.append(_make_conn(
                AF_INET, proto, flags, state, cport, vport, dport, fwmark, timeout,
                cached(ca) or _v4(ca), cached(va) or _v4(va), cached(da) or _v4(da),
                None, "", b"",
            ))
            p += V4_ENTRY_LEN
            continue
        try:
            result = _decode_v1_entry(data, p, end, pe_names, accept)
        except _Fatal as exc:
            fatal = exc.reason
            break
        if isinstance(result, SyncDropReason):
            skipped.append(EntrySkip(i, result))
        else:
            entries.append(result)
        p += (size + 3) & ~3  # §1.5: next entry is 4-byte aligned
    return SyncMessage(
        version=1, syncid=syncid, nr_conns=nr_conns, entries=tuple(entries),
        skipped=tuple(skipped), fatal=fatal,
    )


def _decode_v0(data: bytes, syncid: int, accept: bool) -> SyncMessage:
    nr_conns = data[0]
    buflen = len(data)
    entries: list[SyncConn] = []
    skipped: list[EntrySkip] = []
    fatal: SyncDropReason | None = None
    p = HEADER_V0_LEN
    for i in range(nr_conns):
        if p + V0_ENTRY_LEN > buflen:
            fatal = SyncDropReason.V0_ENTRY_TRUNCATED
            break
        (_, proto, cport, vport, dport, ca, va, da, flags, state) = _ENT_V0.unpack_from(data, p)
        seq: tuple[int, int, int, int, int, int] | None = None
        if flags & FLAG_SEQ_MASK:
            if p + V0_ENTRY_SEQ_LEN > buflen:
                fatal = SyncDropReason.V0_SEQ_TRUNCATED
                break
            seq = _SEQ_V0.unpack_from(data, p + V0_ENTRY_LEN)
            p += V0_ENTRY_SEQ_LEN
        else:
            p += V0_ENTRY_LEN
        skip = _check_entry(proto, flags, state)
        if skip is not None:
            skipped.append(EntrySkip(i, skip))
            continue
        if accept:
            flags = (flags | FLAG_SYNC) & ~FLAG_HASHED  # §1.9 flags accepted, v0
        entries.append(_make_conn(
            AF_INET, proto, flags, state, cport, vport, dport, 0, 0, _v4(ca), _v4(va), _v4(da),
            seq, "", b"",
        ))
    return SyncMessage(
        version=0, syncid=syncid, nr_conns=nr_conns, entries=tuple(entries),
        skipped=tuple(skipped), fatal=fatal,
    )


def decode_message(
    data: bytes,
    *,
    syncid: int = 0,
    auth_key: bytes | None = None,
    pe_names: frozenset[str] = DEFAULT_PE_NAMES,
    accept_flags: bool = False,
) -> SyncMessage:
    """Decode a sync datagram the way a kernel backup processes it (§1.9).

    Args:
        data: the UDP payload.
        syncid: the backup's sync id; 0 accepts every message (§1.9 step 2).
        auth_key: when set, the hactl trailer is required and verified before anything else.
        pe_names: persistence engines this backup knows; PE entries of others are skipped.
        accept_flags: give entries the flags a kernel backup accepts (`accepted_flags`)
            instead of the wire flags.

    Returns:
        The message: entries to apply (wire flags; see `accepted_flags`), skipped entries, and
        `fatal` if the kernel would have stopped part way.

    Raises:
        SyncDecodeError: the whole datagram is discarded; `reason` is a `SyncDropReason`.
    """
    authenticated = False
    if auth_key is not None:
        data = verify(data, auth_key)
        authenticated = True
    buflen = len(data)
    if buflen < HEADER_V0_LEN:
        raise SyncDecodeError(SyncDropReason.TOO_SHORT, f"{buflen} bytes")
    size = (data[2] << 8) | data[3]
    if size != buflen:
        raise SyncDecodeError(SyncDropReason.BAD_SIZE, f"size {size}, datagram {buflen}")
    msg_syncid = data[1]
    if syncid and msg_syncid != syncid & 0xFF:
        raise SyncDecodeError(SyncDropReason.SYNCID_MISMATCH, f"syncid {msg_syncid}")
    # §1.9 step 3: v1 only with version 1, reserved 0 and spare 0; anything else is v0.
    # (A 4..7 byte datagram with reserved 0 has nr_conns 0 in v0 terms: nothing to do.)
    if buflen >= HEADER_V1_LEN and data[5] == 1 and data[0] == 0 and data[6] == 0 == data[7]:
        msg = _decode_v1(data, msg_syncid, pe_names, accept_flags)
    else:
        msg = _decode_v0(data, msg_syncid, accept_flags)
    if authenticated:
        return SyncMessage(
            version=msg.version, syncid=msg.syncid, nr_conns=msg.nr_conns,
            entries=msg.entries, skipped=msg.skipped, fatal=msg.fatal, authenticated=True,
        )
    return msg
