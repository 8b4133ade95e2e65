"""Forged VRRP adverts and connection-sync datagrams, sent from a namespace of the testbed
(normally the client's: a stranger on the service segment).

The packets are built here with hactl's own encoders (so everything except the one thing
being forged is well-formed) and sent by `python -m tests.testbed.hostile` inside the
namespace: VRRP as whole IPv4 datagrams on a raw socket (IP_HDRINCL, so the TTL is ours) to
224.0.0.18, sync datagrams over UDP to 224.0.0.81:8848, both on `eth0`.

`VRRP_FORGERIES` and `sync_forgeries()` name each forgery after the receive check it must
fail (spec/vrrp.md §4.2, spec/ipvs.md §1.9) and the drop reason hactl counts for it.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from hactl.ipvs.model import AF_INET, SyncConn
from hactl.sync.wire import FLAG_TEMPLATE, encode_message, sign
from hactl.vrrp.packet import Advertisement, AuthType, build_ipv4_header, encode_ipv4

__all__ = [
    "VRRP_FORGERIES",
    "Forgery",
    "send",
    "sync_forgeries",
    "vrrp_forgeries",
]

VRRP_GROUP = IPv4Address("224.0.0.18")
SYNC_GROUP = IPv4Address("224.0.0.81")
SYNC_PORT = 8848


@dataclass(frozen=True)
class Forgery:
    name: str
    kind: str  # "vrrp" (a whole IPv4 datagram) or "sync" (a UDP payload)
    data: bytes
    reason: str | None  # the drop reason hactl must count; None: silently ignored


def _advert(vrid: int, priority: int, vip: IPv4Address, *, auth: AuthType = AuthType.NONE,
            password: bytes = b"") -> Advertisement:
    return Advertisement(version=2, vrid=vrid, priority=priority, adver_int_cs=100,
                         addresses=(vip,), auth_type=auth, auth_data=password)


def vrrp_forgeries(src: IPv4Address, vip: IPv4Address, *, vrid: int,
                   password: bytes | None) -> list[Forgery]:
    """Adverts a stranger at `src` sends to take over VRID `vrid` (priority 255, or 0 to
    make the master look like it resigned), each failing exactly one receive check.
    `password`: the instances' `auth_pass` (None: no authentication configured)."""
    auth = AuthType.PASS if password is not None else AuthType.NONE
    good_pw = password or b""

    def dgram(adv: Advertisement, *, ttl: int = 255) -> bytes:
        return encode_ipv4(adv, src=src, dst=VRRP_GROUP, ident=0x1234, ttl=ttl)

    out = [
        # RFC 3768 §7.1 / spec §4.2 check 3: a router more than one hop away.
        Forgery("ttl_64", "vrrp", dgram(_advert(vrid, 255, vip, auth=auth, password=good_pw),
                                        ttl=64), "ttl"),
        Forgery("ttl_254_priority_0", "vrrp",
                dgram(_advert(vrid, 0, vip, auth=auth, password=good_pw), ttl=254), "ttl"),
        # check 12: one flipped bit in the checksum.
        Forgery("bad_checksum", "vrrp",
                _flip_checksum(dgram(_advert(vrid, 255, vip, auth=auth, password=good_pw))),
                "checksum"),
        # check 4: version 3 to a version 2 instance.
        Forgery("wrong_version", "vrrp", encode_ipv4(
            Advertisement(version=3, vrid=vrid, priority=255, adver_int_cs=100,
                          addresses=(vip,)), src=src, dst=VRRP_GROUP, ident=0x1234), "version"),
        # check 8: another advert interval.
        Forgery("wrong_interval", "vrrp", dgram(Advertisement(
            version=2, vrid=vrid, priority=255, adver_int_cs=300, addresses=(vip,),
            auth_type=auth, auth_data=good_pw)), "interval"),
        # check 14: a VIP list that is not the instance's.
        Forgery("wrong_vips", "vrrp", dgram(_advert(vrid, 255, IPv4Address(int(vip) + 1),
                                                    auth=auth, password=good_pw)),
                "address_list"),
        # check 0: a VRID nobody runs here (silently ignored, like keepalived).
        Forgery("unknown_vrid", "vrrp", dgram(_advert((vrid % 255) + 1, 255, vip, auth=auth,
                                                      password=good_pw)), None),
        # check 2: cut short (the IP header's length agrees, the VRRP message is short).
        Forgery("truncated", "vrrp", _truncate(dgram(_advert(vrid, 255, vip, auth=auth,
                                                             password=good_pw)), 6), "length"),
    ]
    if password is not None:
        out += [
            # check 6: no authentication to an instance that has it.
            Forgery("no_auth", "vrrp", dgram(_advert(vrid, 255, vip)), "auth_type_mismatch"),
            # check 7: priority 255 from a stranger with the wrong password.
            Forgery("wrong_password", "vrrp",
                    dgram(_advert(vrid, 255, vip, auth=auth, password=b"guessed!")),
                    "auth_password"),
            Forgery("wrong_password_priority_0", "vrrp",
                    dgram(_advert(vrid, 0, vip, auth=auth, password=b"\0")), "auth_password"),
        ]
    return out


VRRP_FORGERIES = vrrp_forgeries  # the public name the docs use


def _flip_checksum(datagram: bytes) -> bytes:
    out = bytearray(datagram)
    out[20 + 6] ^= 0x01  # VRRP checksum, after the 20-byte IP header
    return bytes(out)


def _truncate(datagram: bytes, cut: int) -> bytes:
    """The datagram `cut` bytes shorter, with a consistent IP header (total length)."""
    message = datagram[20:-cut]
    return build_ipv4_header(len(message), src=IPv4Address(datagram[12:16]),
                             dst=IPv4Address(datagram[16:20]), ident=0x1234) + message


def template(client: IPv4Address, vip: IPv4Address, real_server: IPv4Address,
             port: int = 80) -> SyncConn:
    """A persistence template sending `client` to `real_server` (what a master would sync)."""
    return SyncConn(family=AF_INET, protocol=socket.IPPROTO_TCP, flags=FLAG_TEMPLATE, state=0,
                    cport=0, vport=port, dport=port, fwmark=0, timeout=300, caddr=client,
                    vaddr=vip, daddr=real_server)


def sync_forgeries(entries: Sequence[SyncConn], *, syncid: int,
                   auth_key: bytes | None) -> list[Forgery]:
    """Datagrams that would move the clients of `entries`, each failing one check: a wrong
    syncid (always), and with `auth_key` (the directors' sync_auth_key) no trailer and a
    trailer made with another key. Without `auth_key`, also garbage of every length class."""
    message = encode_message(syncid, entries)
    wrong = encode_message((syncid + 1) & 0xFF or 1, entries)
    if auth_key is None:
        return [
            Forgery("sync_wrong_syncid", "sync", wrong, "syncid_mismatch"),
            Forgery("sync_too_short", "sync", b"\0\x2a", "too_short"),
            Forgery("sync_bad_size", "sync", message[:2] + struct.pack(">H", 9) + message[4:],
                    "bad_size"),
        ]
    return [
        Forgery("sync_wrong_syncid", "sync", sign(wrong, auth_key), "syncid_mismatch"),
        Forgery("sync_unsigned", "sync", message, "auth_missing"),
        Forgery("sync_wrong_key", "sync", sign(message, b"not-the-key-" * 3), "auth_failed"),
    ]


# ---------------------------------------------------------------------------- sending


def _send(kinds_and_data: list[tuple[str, bytes]], *, source: str, dev: str, repeat: int,
          interval: float) -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((source, 0))
    udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
    udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    try:
        for _ in range(repeat):
            for kind, data in kinds_and_data:
                if kind == "vrrp":
                    raw.sendto(data, (str(VRRP_GROUP), 0))
                else:
                    udp.sendto(data, (str(SYNC_GROUP), SYNC_PORT))
            time.sleep(interval)
    finally:
        raw.close()
        udp.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.hostile")
    parser.add_argument("--source", required=True)
    parser.add_argument("--dev", default="eth0")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    packets = [(d["kind"], bytes.fromhex(d["hex"])) for d in json.load(sys.stdin)]
    _send(packets, source=args.source, dev=args.dev, repeat=min(args.repeat, 1000),
          interval=args.interval)
    return 0


def send(bed: object, forgeries: Sequence[Forgery], *, repeat: int = 1,
         interval: float = 0.2) -> None:
    """Send `forgeries` (`repeat` rounds, `interval` apart) from the client namespace."""
    from tests.testbed.directors import REPO, env
    from tests.testbed.topology import Testbed

    assert isinstance(bed, Testbed)
    payload = json.dumps([{"kind": f.kind, "hex": f.data.hex()} for f in forgeries])
    subprocess.run(["ip", "netns", "exec", bed.client.netns, sys.executable, "-m",
                    "tests.testbed.hostile", "--source", str(bed.client.address), "--repeat",
                    str(repeat), "--interval", str(interval)],
                   input=payload.encode(), check=True, capture_output=True, env=env(), cwd=REPO,
                   timeout=30 + repeat * (interval + 1))


if __name__ == "__main__":
    sys.exit(main())
