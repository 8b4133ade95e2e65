"""hactl's sync datagrams read by decoders that share no code with `hactl.sync.wire`:

* Wireshark's IPVS dissector (`tshark`), on a pcap this test writes. tshark 4.0 dissects the
  v1 header and fixed entries and v0 messages, but advances from a v1 entry by its fixed size
  only (option bytes are not skipped), so it sees only messages without options;
* a table-driven decoder written here straight from the byte tables of spec/ipvs.md §1.2,
  §1.3, §1.4 and §1.6, which covers options and padding too.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hactl.ipvs.model import AF_INET, AF_INET6, SyncConn
from hactl.sync import wire
from hactl.sync.channel import SyncSender

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

# ---------------------------------------------------------------------------------------------
# the spec's tables, transcribed: (offset v4, offset v6, size, field); size 0 = address

HEADER_V1 = [(0, 1, "reserved"), (1, 1, "syncid"), (2, 2, "size"), (4, 1, "nr_conns"),
             (5, 1, "version"), (6, 2, "spare")]
HEADER_V0 = [(0, 1, "nr_conns"), (1, 1, "syncid"), (2, 2, "size")]
ENTRY_V1 = [
    (0, 0, 1, "type"), (1, 1, 1, "protocol"), (2, 2, 2, "ver_size"), (4, 4, 4, "flags"),
    (8, 8, 2, "state"), (10, 10, 2, "cport"), (12, 12, 2, "vport"), (14, 14, 2, "dport"),
    (16, 16, 4, "fwmark"), (20, 20, 4, "timeout"), (24, 24, 0, "caddr"), (28, 40, 0, "vaddr"),
    (32, 56, 0, "daddr"),
]
ENTRY_V0 = [(0, 1, "reserved"), (1, 1, "protocol"), (2, 2, "cport"), (4, 2, "vport"),
            (6, 2, "dport"), (8, 4, "caddr"), (12, 4, "vaddr"), (16, 4, "daddr"),
            (20, 2, "flags"), (22, 2, "state")]
OPTION_NAMES = {1: "seq", 2: "pe_data", 3: "pe_name"}


def be(data: bytes, off: int, size: int) -> int:
    return int.from_bytes(data[off : off + size], "big")


def spec_decode(data: bytes) -> dict[str, Any]:
    """Decode a well-formed message by walking the spec's tables (no validation)."""
    is_v1 = data[5] == 1 and data[0] == 0 and data[6:8] == b"\0\0"
    hdr = {name: be(data, off, size) for off, size, name in (HEADER_V1 if is_v1 else HEADER_V0)}
    entries: list[dict[str, Any]] = []
    p = 8 if is_v1 else 4
    for _ in range(hdr["nr_conns"]):
        e: dict[str, Any] = {}
        if is_v1:
            six = data[p] & 1
            alen = 16 if six else 4
            for off4, off6, size, name in ENTRY_V1:
                off = p + (off6 if six else off4)
                e[name] = (data[off : off + alen] if size == 0 else be(data, off, size))
            length = e["ver_size"] & 0x0FFF
            q = p + (72 if six else 36)
            while q < p + length:  # §1.4 TLVs
                kind, olen = data[q], data[q + 1]
                e[OPTION_NAMES[kind & ~0x40]] = data[q + 2 : q + 2 + olen]
                q += 2 + olen
            p += (length + 3) & ~3  # §1.5
        else:
            for off, size, name in ENTRY_V0:
                e[name] = be(data, p + off, size)
            p += 24
            if e["flags"] & 0x0600:
                e["seq"] = data[p : p + 24]
                p += 24
        entries.append(e)
    hdr["entries"] = entries
    hdr["end"] = p
    return hdr


def expected_fields(c: SyncConn, *, version: int) -> dict[str, Any]:
    if version == 0:
        exp: dict[str, Any] = {
            "protocol": c.protocol, "cport": c.cport, "vport": c.vport, "dport": c.dport,
            "caddr": int(c.caddr), "vaddr": int(c.vaddr), "daddr": int(c.daddr),
            "flags": c.flags & 0xFFFF & ~0x40, "state": c.state, "reserved": 0,
        }
        if c.flags & 0x0600:
            exp["seq"] = struct.pack("<6I", *(c.seq or (0,) * 6))
        return exp
    exp = {
        "type": 1 if c.family == AF_INET6 else 0, "protocol": c.protocol,
        "flags": c.flags & ~0x40, "state": c.state, "cport": c.cport, "vport": c.vport,
        "dport": c.dport, "fwmark": c.fwmark, "timeout": c.timeout,
        "caddr": c.caddr.packed, "vaddr": c.vaddr.packed, "daddr": c.daddr.packed,
    }
    if c.flags & 0x0600:
        exp["seq"] = struct.pack(">6I", *(c.seq or (0,) * 6))
    if c.pe_data:
        exp["pe_data"] = c.pe_data
        if c.pe_name:
            exp["pe_name"] = c.pe_name.encode()
    return exp


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def conns(draw: st.DrawFn, *, v0: bool = False, options: bool = True) -> SyncConn:
    six = not v0 and draw(st.booleans())
    addr = st.builds(V6, st.integers(0, 2**128 - 1)) if six else st.builds(V4, u32)
    flags = draw(st.integers(0, 0xFFFF if v0 else 0xFFFFFFFF)) & ~0x40
    if not options:
        flags &= ~0x0600
    seq = draw(st.tuples(*[u32] * 6)) if flags & 0x0600 else None
    pe = options and not v0 and draw(st.booleans())
    return SyncConn(
        family=AF_INET6 if six else AF_INET, protocol=draw(st.sampled_from([0, 6, 17, 132])),
        flags=flags, state=draw(u16), cport=draw(u16), vport=draw(u16), dport=draw(u16),
        fwmark=0 if v0 else draw(u32), timeout=0 if v0 else draw(u32),
        caddr=draw(addr), vaddr=draw(addr), daddr=draw(addr), seq=seq,
        pe_data=draw(st.binary(min_size=1, max_size=255)) if pe else b"",
        pe_name=draw(st.sampled_from(["sip", "x" * 16])) if pe else "",
    )


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 255), st.lists(conns(), min_size=1, max_size=40))
def test_table_decoder_agrees_with_sender_v1(syncid: int, entries: list[SyncConn]) -> None:
    sender = SyncSender(syncid=syncid, max_datagram=1472)
    sender.add_many(entries, now=0.0)
    sender.flush(now=0.0)
    got = []
    for d in sender.pop_datagrams():
        msg = spec_decode(d.data)
        assert (msg["reserved"], msg["syncid"], msg["version"], msg["spare"]) == (0, syncid, 1, 0)
        assert msg["size"] == len(d.data) and 0 <= msg["end"] - len(d.data) <= 3  # no tail pad
        assert len(d.data) <= 1472 or d.entries == 1
        assert msg["nr_conns"] == d.entries == len(msg["entries"])
        for e in msg["entries"]:
            e.pop("ver_size")
        got.extend(msg["entries"])
    assert got == [expected_fields(c, version=1) for c in entries]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 255), st.lists(conns(v0=True), min_size=1, max_size=60))
def test_table_decoder_agrees_with_sender_v0(syncid: int, entries: list[SyncConn]) -> None:
    sender = SyncSender(syncid=syncid, max_datagram=1472, version=0)
    sender.add_many(entries, now=0.0)
    sender.flush(now=0.0)
    got = []
    for d in sender.pop_datagrams():
        msg = spec_decode(d.data)
        assert (msg["syncid"], msg["size"], msg["end"]) == (syncid, len(d.data), len(d.data))
        got.extend(msg["entries"])
    assert got == [expected_fields(c, version=0) for c in entries]


# ---------------------------------------------------------------------------------------------
# tshark


def _tshark_dissects_ipvs() -> str | None:
    if shutil.which("tshark") is None:
        return "tshark is not installed (apt-get install tshark)"
    out = subprocess.run(["tshark", "-G", "protocols"], capture_output=True, text=True,
                         check=False).stdout
    if not any(line.split("\t")[-1] == "ipvs" for line in out.splitlines()):
        return "this tshark has no IPVS dissector"
    return None


TSHARK_SKIP = _tshark_dissects_ipvs()


def write_pcap(path: Path, payloads: list[bytes]) -> None:
    """Classic pcap, Ethernet, IPv4/UDP to 224.0.0.81:8848 (the dissector's port)."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for payload in payloads:
        udp = struct.pack(">HHHH", 40000, 8848, 8 + len(payload), 0) + payload
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 1, 17, 0,
                         V4("10.0.0.2").packed, V4("224.0.0.81").packed) + udp
        frame = bytes.fromhex("01005e000051 020000000001 0800") + ip
        out += struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    path.write_bytes(out)


def tshark_messages(path: Path) -> list[dict[str, Any]]:
    res = subprocess.run(["tshark", "-r", str(path), "-T", "json", "-J", "ipvs"],
                         capture_output=True, text=True, check=True)
    return [pkt["_source"]["layers"]["ipvs"] for pkt in json.loads(res.stdout)]


def _num(text: str) -> int:
    return int(text, 0)


def sample_entries() -> list[SyncConn]:
    out = []
    for i in range(30):
        six = i % 3 == 2
        addr = (lambda n: V6(0x20010DB8 << 96 | n)) if six else (lambda n: V4(0x0A000000 | n))
        out.append(SyncConn(
            family=AF_INET6 if six else AF_INET, protocol=(6, 17, 132)[i % 3],
            flags=(0x83, 0x183, 0x1183, 0x10000)[i % 4], state=i % 2, cport=1000 + i,
            vport=80, dport=8080 + i % 2, fwmark=i * 7, timeout=(900, 120, 300)[i % 3],
            caddr=addr(i + 1), vaddr=addr(0xFFFF), daddr=addr(0x100 + i),
        ))
    return out


@pytest.mark.skipif(TSHARK_SKIP is not None, reason=TSHARK_SKIP or "")
def test_tshark_reads_our_v1_datagrams(tmp_path: Path) -> None:
    entries = sample_entries()
    sender = SyncSender(syncid=42, max_datagram=600)
    sender.add_many(entries, now=0.0)
    sender.flush(now=0.0)
    dgrams = sender.pop_datagrams()
    assert len(dgrams) > 1
    write_pcap(tmp_path / "sync.pcap", [d.data for d in dgrams])
    seen = []
    for d, msg in zip(dgrams, tshark_messages(tmp_path / "sync.pcap"), strict=True):
        assert (msg["ipvs.syncid"], msg["ipvs.version"]) == ("42", "1")
        assert (_num(msg["ipvs.size"]), _num(msg["ipvs.conncount"])) == (len(d.data), d.entries)
        for n in range(1, d.entries + 1):
            c = msg[f"Connection #{n}"]
            six = c["ipvs.type"] == "1"
            suffix = "6" if six else ""
            seen.append({
                "family": AF_INET6 if six else AF_INET, "protocol": _num(c["ipvs.proto"]),
                "size": _num(c["ipvs.size.v1"]), "flags": _num(c["ipvs.flags.v1"]),
                "state": _num(c["ipvs.state"]), "cport": _num(c["ipvs.cport"]),
                "vport": _num(c["ipvs.vport"]), "dport": _num(c["ipvs.dport"]),
                "fwmark": _num(c["ipvs.fwmark"]), "timeout": _num(c["ipvs.timeout"]),
                "caddr": ipaddress.ip_address(c[f"ipvs.caddr{suffix}"]),
                "vaddr": ipaddress.ip_address(c[f"ipvs.vaddr{suffix}"]),
                "daddr": ipaddress.ip_address(c[f"ipvs.daddr{suffix}"]),
            })
    assert seen == [{
        "family": e.family, "protocol": e.protocol, "size": 72 if e.family == AF_INET6 else 36,
        "flags": e.flags, "state": e.state, "cport": e.cport, "vport": e.vport,
        "dport": e.dport, "fwmark": e.fwmark, "timeout": e.timeout, "caddr": e.caddr,
        "vaddr": e.vaddr, "daddr": e.daddr,
    } for e in entries]


@pytest.mark.skipif(TSHARK_SKIP is not None, reason=TSHARK_SKIP or "")
def test_tshark_reads_our_v0_datagrams(tmp_path: Path) -> None:
    entries = [e for e in sample_entries() if e.family == AF_INET]
    entries[3] = SyncConn(**{**{f: getattr(entries[3], f) for f in entries[3].__slots__},
                             "flags": 0x0483, "seq": (1, 2, 3, 4, 5, 0xDEADBEEF)})
    data = wire.encode_message(3, entries, version=0)
    write_pcap(tmp_path / "sync0.pcap", [data])
    (msg,) = tshark_messages(tmp_path / "sync0.pcap")
    assert (_num(msg["ipvs.syncid"]), _num(msg["ipvs.size"])) == (3, len(data))
    assert _num(msg["ipvs.conncount"]) == len(entries)
    for n, e in enumerate(entries, start=1):
        c = msg[f"Connection #{n}"]
        assert _num(c["ipvs.flags"]) == e.flags & 0xFFFF
        assert (_num(c["ipvs.proto"]), _num(c["ipvs.state"])) == (e.protocol, e.state)
        assert (_num(c["ipvs.cport"]), _num(c["ipvs.vport"]), _num(c["ipvs.dport"])) == (
            e.cport, e.vport, e.dport)
        assert [V4(c[k]) for k in ("ipvs.caddr", "ipvs.vaddr", "ipvs.daddr")] == [
            e.caddr, e.vaddr, e.daddr]
        if e.seq is not None:
            # §1.6: v0 sequence data is in the sender's host order (little-endian);
            # Wireshark shows it as big-endian words.
            shown = [_num(c[f"ipvs.{d}_seq.{k}"]) for d in ("in", "out")
                     for k in ("initial", "delta", "pdelta")]
            assert shown == [int.from_bytes(v.to_bytes(4, "little"), "big") for v in e.seq]
