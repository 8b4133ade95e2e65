"""The sync codec against the spec's worked examples, a real kernel capture, and every
receiver validation rule (spec/ipvs.md §1.2-§1.11), plus round-trip and fuzz properties."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hactl.errors import SyncDecodeError
from hactl.ipvs.model import AF_INET, AF_INET6, IPAddress, SyncConn
from hactl.sync import wire
from hactl.sync.wire import SyncDropReason as R

DATA = Path(__file__).parent / "data"
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def conn(**kw: object) -> SyncConn:
    base: dict[str, object] = dict(
        family=AF_INET, protocol=6, flags=0x83, state=1, cport=40000, vport=80, dport=80,
        fwmark=0, timeout=900, caddr=V4("192.168.0.10"), vaddr=V4("10.0.0.1"),
        daddr=V4("10.0.1.2"),
    )
    base.update(kw)
    return SyncConn(**base)  # type: ignore[arg-type]


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


# spec §1.11 worked examples: (name, bytes, syncid, version, entries) shared by encode and decode
CASES = [
    (
        "v1-one-dr-conn",
        hexbytes(
            "00 05 00 2c 01 01 00 00 | 00 06 00 24 00 00 00 83"
            "00 01 9c 40 00 50 00 50 00 00 00 00 00 00 03 84"
            "c0 a8 00 0a 0a 00 00 01 0a 00 01 02"
        ),
        5,
        1,
        (conn(),),
    ),
    (
        "v1-seq-data-and-template",
        hexbytes(
            "00 05 00 6c 02 01 00 00 00 06 00 3e 00 00 06 00"
            "00 01 9c 41 00 50 1f 90 00 00 00 00 00 00 03 84"
            "c0 a8 00 0b 0a 00 00 01 0a 00 01 03 01 18 00 00"
            "03 e8 00 00 00 05 00 00 00 00 00 00 07 d0 00 00"
            "00 00 00 00 00 00 00 00 00 06 00 24 00 00 11 83"
            "00 00 00 00 00 50 00 50 00 00 00 00 00 00 01 68"
            "c0 a8 00 00 0a 00 00 01 0a 00 01 02"
        ),
        5,
        1,
        (
            conn(
                flags=0x0600, cport=40001, dport=8080, caddr=V4("192.168.0.11"),
                daddr=V4("10.0.1.3"), seq=(1000, 5, 0, 2000, 0, 0),
            ),
            conn(flags=0x1183, state=0, cport=0, timeout=360, caddr=V4("192.168.0.0")),
        ),
    ),
    (
        "v0-one-dr-conn",
        hexbytes(
            "01 05 00 1c 00 06 9c 40 00 50 00 50 c0 a8 00 0a"
            "0a 00 00 01 0a 00 01 02 00 83 00 01"
        ),
        5,
        0,
        (conn(timeout=0),),
    ),
]


@pytest.mark.parametrize(("name", "data", "syncid", "version", "entries"), CASES)
def test_decode_worked_example(
    name: str, data: bytes, syncid: int, version: int, entries: tuple[SyncConn, ...]
) -> None:
    msg = wire.decode_message(data)
    assert (msg.version, msg.syncid, msg.nr_conns) == (version, syncid, len(entries))
    assert msg.entries == entries
    assert msg.skipped == () and msg.fatal is None


@pytest.mark.parametrize(("name", "data", "syncid", "version", "entries"), CASES)
def test_encode_worked_example(
    name: str, data: bytes, syncid: int, version: int, entries: tuple[SyncConn, ...]
) -> None:
    assert wire.encode_message(syncid, entries, version=version) == data


def test_encoder_clears_hashed_and_keeps_high_flags() -> None:
    # §1.7: HASHED never travels; all 32 bits do in v1 (NFCT 0x10000), 16 in v0.
    data = wire.encode_message(1, [conn(flags=0x10000 | 0x40 | 0x83)])
    assert data[12:16] == bytes.fromhex("00 01 00 83")
    data0 = wire.encode_message(1, [conn(flags=0x10000 | 0x40 | 0x83)], version=0)
    assert data0[4 + 20 : 4 + 22] == bytes.fromhex("00 83")


# ---------------------------------------------------------------------------------------------
# the kernel's own datagram


def read_pcap_udp_payloads(path: Path) -> list[bytes]:
    """UDP payloads of an Ethernet/IPv4 pcap (classic format, either byte order)."""
    raw = path.read_bytes()
    magic = raw[:4]
    endian = "<" if magic == bytes.fromhex("d4c3b2a1") else ">"
    (linktype,) = struct.unpack_from(endian + "I", raw, 20)
    assert linktype == 1
    out, p = [], 24
    while p + 16 <= len(raw):
        _, _, incl, _ = struct.unpack_from(endian + "IIII", raw, p)
        frame = raw[p + 16 : p + 16 + incl]
        p += 16 + incl
        assert frame[12:14] == b"\x08\x00"
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        assert ip[9] == 17
        (udp_len,) = struct.unpack_from(">H", ip, ihl + 4)
        out.append(ip[ihl + 8 : ihl + udp_len])
    return out


def test_kernel_capture_decodes_field_for_field() -> None:
    (payload,) = read_pcap_udp_payloads(DATA / "kernel-6.1-master-sync-v1.pcap")
    msg = wire.decode_message(payload)
    assert (msg.version, msg.syncid, msg.nr_conns, len(payload)) == (1, 7, 12, 440)
    # Six client connections, each synced twice: ESTABLISHED (900 s, flags 0) and
    # TIME_WAIT (state 5, 120 s, INACTIVE) - a NAT director with two real servers.
    cports = [55352, 55368, 55372, 55378, 55380, 55390]
    daddrs = ["10.10.1.2", "10.10.0.2"] * 3  # round robin over the two real servers
    expected = []
    for cport, daddr in zip(cports, daddrs, strict=True):
        for flags, state, timeout in ((0x0000, 1, 900), (0x0100, 5, 120)):
            expected.append(
                SyncConn(
                    family=AF_INET, protocol=6, flags=flags, state=state, cport=cport,
                    vport=8080, dport=8000, fwmark=0, timeout=timeout,
                    caddr=V4("192.168.100.2"), vaddr=V4("192.168.100.10"), daddr=V4(daddr),
                )
            )
    assert list(msg.entries) == expected
    # and hactl's encoder produces the kernel's bytes exactly
    assert wire.encode_message(7, msg.entries) == payload


# ---------------------------------------------------------------------------------------------
# hand-built messages for the validation rules (§1.9)


def raw_entry(
    *,
    etype: int | None = None,
    proto: int = 6,
    flags: int = 0x83,
    state: int = 1,
    opts: bytes = b"",
    size: int | None = None,
    ver: int = 0,
    v6: bool = False,
) -> bytes:
    addr = (V6("2001:db8::1").packed if v6 else V4("10.0.0.1").packed) * 3
    if etype is None:
        etype = 1 if v6 else 0
    n = (72 if v6 else 36) + len(opts) if size is None else size
    fixed = struct.pack(">BBHIHHHHII", etype, proto, (ver << 12) | n, flags, state, 1, 80, 80,
                        0, 900)
    return fixed + addr + opts


def raw_v1(entries: list[bytes], *, nr: int | None = None, syncid: int = 5) -> bytes:
    body = b""
    for e in entries:
        body += b"\0" * (-(8 + len(body)) & 3) + e
    size = 8 + len(body)
    hdr = struct.pack(">BBHBBH", 0, syncid, size, len(entries) if nr is None else nr, 1, 0)
    return hdr + body


SEQ = bytes((1, 24)) + bytes(24)
GOOD = raw_entry()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", R.TOO_SHORT),
        (b"\0\x05\0", R.TOO_SHORT),
        (raw_v1([GOOD])[:-1], R.BAD_SIZE),
        (raw_v1([GOOD]) + b"\0", R.BAD_SIZE),
    ],
)
def test_whole_datagram_errors(data: bytes, reason: R) -> None:
    with pytest.raises(SyncDecodeError) as info:
        wire.decode_message(data)
    assert info.value.reason is reason


def test_syncid_filter() -> None:
    msg = raw_v1([GOOD], syncid=6)
    assert wire.decode_message(msg, syncid=0).syncid == 6  # backup syncid 0 accepts all
    assert len(wire.decode_message(msg, syncid=6).entries) == 1
    for backup in (5, 7):
        with pytest.raises(SyncDecodeError) as info:
            wire.decode_message(msg, syncid=backup)
        assert info.value.reason is R.SYNCID_MISMATCH
    with pytest.raises(SyncDecodeError):  # message syncid 0 is not a wildcard
        wire.decode_message(raw_v1([GOOD], syncid=0), syncid=5)


@pytest.mark.parametrize("byte_index", [0, 6, 7])
def test_v1_with_nonzero_reserved_or_spare_is_read_as_v0(byte_index: int) -> None:
    data = bytearray(raw_v1([GOOD]))
    data[byte_index] = 1 if byte_index else 0
    if byte_index == 0:
        data[5] = 2  # version != 1 with reserved 0: v0 with nr_conns 0
    msg = wire.decode_message(bytes(data))
    assert msg.version == 0 and msg.entries == ()


# Entry-level fatal errors: the message stops, the entries before stay.
FATAL_CASES = [
    ("bad type", raw_entry(etype=2), R.BAD_TYPE),
    ("type 2", raw_entry(etype=2, v6=True), R.BAD_TYPE),
    ("type 0x80", raw_entry(etype=0x80), R.BAD_TYPE),
    ("entry version", raw_entry(ver=1), R.ENTRY_VERSION),
    ("v6 size 36", raw_entry(v6=True, size=36)[:36], R.ENTRY_TOO_SMALL),
    ("size 0", raw_entry(size=0), R.ENTRY_TOO_SMALL),
    ("option header cut", raw_entry(size=37, opts=b"\x01"), R.OPTION_TRUNCATED),
    ("option length 0", raw_entry(opts=b"\x41\x00\0\0"), R.OPTION_LENGTH),
    ("option past end", raw_entry(opts=b"\x41\x05\0\0"), R.OPTION_LENGTH),
    ("seq 23 bytes", raw_entry(opts=bytes((1, 23)) + bytes(23)), R.BAD_SEQ_DATA),
    ("seq twice", raw_entry(opts=SEQ + SEQ), R.BAD_SEQ_DATA),
    ("optional-flag seq twice", raw_entry(opts=SEQ + bytes((0x41, 24)) + bytes(24)),
     R.BAD_SEQ_DATA),
    ("pe data twice", raw_entry(opts=b"\x02\x01a\x02\x01b"), R.BAD_PE_DATA),
    ("pe name 17", raw_entry(opts=b"\x03\x11" + b"a" * 17), R.BAD_PE_NAME),
    ("pe name twice", raw_entry(opts=b"\x03\x03sip\x03\x03sip"), R.BAD_PE_NAME),
]


@pytest.mark.parametrize(("name", "bad", "reason"), FATAL_CASES)
def test_fatal_entry_error_keeps_earlier_entries(name: str, bad: bytes, reason: R) -> None:
    msg = wire.decode_message(raw_v1([GOOD, bad, GOOD]))
    assert msg.fatal is reason
    assert len(msg.entries) == 1 and msg.skipped == ()


def test_entry_beyond_datagram_and_truncated_tail() -> None:
    msg = wire.decode_message(raw_v1([GOOD, raw_entry(size=200)]))
    assert msg.fatal is R.ENTRY_BEYOND_END and len(msg.entries) == 1
    msg = wire.decode_message(raw_v1([GOOD], nr=2))  # announces 2, carries 1
    assert msg.fatal is R.ENTRY_TRUNCATED and len(msg.entries) == 1
    # a v6 entry needs only 36 bytes left to be looked at, then fails its own size check
    short_v6 = raw_v1([GOOD, raw_entry(v6=True)[:40]])
    msg = wire.decode_message(short_v6)
    assert msg.fatal is R.ENTRY_BEYOND_END


SKIP_CASES = [
    ("unknown mandatory option", raw_entry(opts=b"\x05\x02ab"), R.UNKNOWN_OPTION),
    ("unknown protocol", raw_entry(proto=99), R.UNKNOWN_PROTOCOL),
    ("tcp state 11", raw_entry(state=11), R.BAD_STATE),
    ("udp state 1", raw_entry(proto=17, state=1), R.BAD_STATE),
    ("sctp state 14", raw_entry(proto=132, state=14), R.BAD_STATE),
    ("pe data without name", raw_entry(opts=b"\x02\x03abc"), R.BAD_PE),
    ("pe engine not loaded", raw_entry(opts=b"\x02\x03abc\x03\x03foo"), R.BAD_PE),
]


@pytest.mark.parametrize(("name", "bad", "reason"), SKIP_CASES)
def test_skipped_entry_does_not_stop_the_message(name: str, bad: bytes, reason: R) -> None:
    msg = wire.decode_message(raw_v1([GOOD, bad, GOOD]))
    assert msg.fatal is None
    assert msg.skipped == (wire.EntrySkip(1, reason),)
    assert len(msg.entries) == 2


def test_unknown_mandatory_option_hides_later_malformed_options() -> None:
    # The kernel stops reading options at the unknown one: a later duplicate is not fatal.
    msg = wire.decode_message(raw_v1([raw_entry(opts=b"\x05\x02ab" + SEQ + SEQ)]))
    assert msg.fatal is None and msg.skipped == (wire.EntrySkip(0, R.UNKNOWN_OPTION),)


@pytest.mark.parametrize(
    "entry",
    [
        raw_entry(opts=b"\x45\x02ab"),  # unknown optional option: ignored
        raw_entry(etype=3, v6=True),  # the kernel reads any odd type as IPv6
        raw_entry(etype=0xFF, v6=True),
        raw_entry(state=10),  # TCP SYNACK, the last valid state
        raw_entry(proto=17, state=0),
        raw_entry(proto=50, state=0),
        raw_entry(proto=51, state=0),
        raw_entry(proto=132, state=13),
        raw_entry(proto=99, flags=0x1183, state=7),  # templates skip protocol/state checks
        raw_entry(proto=0, flags=0x1183, state=0),  # fwmark template
        raw_entry(opts=b"\x03\x03sip"),  # PE_NAME alone is ignored
        raw_entry(opts=b"\x02\x03abc\x03\x04sip\0"),  # the kernel reads the name up to NUL
    ],
)
def test_entries_the_kernel_accepts(entry: bytes) -> None:
    msg = wire.decode_message(raw_v1([entry]))
    assert msg.fatal is None and msg.skipped == () and len(msg.entries) == 1


def test_pe_options_decode() -> None:
    msg = wire.decode_message(raw_v1([raw_entry(flags=0x1183, opts=b"\x02\x03abc\x03\x03sip")]))
    (entry,) = msg.entries
    assert (entry.pe_data, entry.pe_name) == (b"abc", "sip")
    msg = wire.decode_message(raw_v1([raw_entry(opts=b"\x03\x03sip")]))
    assert msg.entries[0].pe_name == "" and msg.entries[0].pe_data == b""
    msg = wire.decode_message(
        raw_v1([raw_entry(opts=b"\x02\x01x\x03\x03foo")]), pe_names=frozenset({"foo"})
    )
    assert msg.entries[0].pe_name == "foo"


def raw_v0(entries: list[bytes], *, nr: int | None = None, syncid: int = 5) -> bytes:
    body = b"".join(entries)
    return struct.pack(">BBH", len(entries) if nr is None else nr, syncid, 4 + len(body)) + body


def raw_v0_entry(*, proto: int = 6, flags: int = 0x83, state: int = 1, seq: bool = False) -> bytes:
    e = struct.pack(">BBHHH4s4s4sHH", 0, proto, 1, 80, 80, bytes(4), bytes(4), bytes(4), flags,
                    state)
    return e + (struct.pack("<6I", 1, 2, 3, 4, 5, 6) if seq else b"")


def test_v0_rules() -> None:
    ok = raw_v0_entry()
    assert wire.decode_message(raw_v0([ok, ok])).entries[1].timeout == 0
    msg = wire.decode_message(raw_v0([ok], nr=2))
    assert msg.fatal is R.V0_ENTRY_TRUNCATED and len(msg.entries) == 1
    msg = wire.decode_message(raw_v0([ok, raw_v0_entry(flags=0x0200)[:30]], nr=2))
    assert msg.fatal is R.V0_SEQ_TRUNCATED
    msg = wire.decode_message(raw_v0([raw_v0_entry(flags=0x0400, seq=True), ok]))
    assert msg.entries[0].seq == (1, 2, 3, 4, 5, 6)  # host (little-endian) order, §1.6
    msg = wire.decode_message(raw_v0([raw_v0_entry(proto=99), raw_v0_entry(state=12), ok]))
    assert msg.skipped == (wire.EntrySkip(0, R.UNKNOWN_PROTOCOL), wire.EntrySkip(1, R.BAD_STATE))
    assert len(msg.entries) == 1
    tpl = raw_v0_entry(proto=99, flags=0x1000, state=9)
    assert len(wire.decode_message(raw_v0([tpl])).entries) == 1


def test_accepted_flags() -> None:
    wire_flags = 0x10000 | 0x2000 | 0x1183 | 0x40 | 0x0800
    assert wire.accepted_flags(wire_flags, 1) == 0x1983 | 0x20
    assert wire.accepted_flags(wire_flags, 0) == (wire_flags | 0x20) & ~0x40
    msg = wire.decode_message(raw_v1([raw_entry(flags=wire_flags)]), accept_flags=True)
    assert msg.entries[0].flags == 0x1983 | 0x20
    msg = wire.decode_message(raw_v0([raw_v0_entry(flags=0x2083)]), accept_flags=True)
    assert msg.entries[0].flags == 0x20A3


# ---------------------------------------------------------------------------------------------
# the authentication extension

KEY = b"k" * 32


def test_sign_verify_and_kernel_view() -> None:
    msg = wire.encode_message(5, [conn()])
    signed = wire.sign(msg, KEY)
    assert len(signed) == len(msg) + wire.AUTH_TRAILER_LEN
    assert wire.verify(signed, KEY) == msg
    decoded = wire.decode_message(signed, auth_key=KEY)
    assert decoded.authenticated and decoded.entries == (conn(),)
    # A kernel backup (no key) checks size against the datagram length: it drops the datagram.
    with pytest.raises(SyncDecodeError) as info:
        wire.decode_message(signed)
    assert info.value.reason is R.BAD_SIZE


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda s: s[: -wire.AUTH_TRAILER_LEN], R.AUTH_MISSING),
        (lambda s: s[:10] + bytes([s[10] ^ 1]) + s[11:], R.AUTH_FAILED),
        (lambda s: s[:-1] + bytes([s[-1] ^ 0x80]), R.AUTH_FAILED),
        (lambda s: wire.sign(s[: -wire.AUTH_TRAILER_LEN], b"x" * 32), R.AUTH_FAILED),
        (lambda s: b"", R.AUTH_MISSING),
    ],
)
def test_authentication_rejects(mangle: object, reason: R) -> None:
    signed = wire.sign(wire.encode_message(5, [conn()]), KEY)
    with pytest.raises(SyncDecodeError) as info:
        wire.decode_message(mangle(signed), auth_key=KEY)  # type: ignore[operator]
    assert info.value.reason is reason


# ---------------------------------------------------------------------------------------------
# encoder limits


def test_encoder_rejects_what_cannot_travel() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        wire.encode_message(1, [conn(family=AF_INET6, caddr=V6("::1"), vaddr=V6("::1"),
                                     daddr=V6("::1"))], version=0)
    with pytest.raises(ValueError, match="255"):
        wire.encode_message(1, [conn()] * 256)
    with pytest.raises(ValueError, match="PE data"):
        wire.encode_message(1, [conn(pe_data=b"x" * 256, pe_name="sip")])
    with pytest.raises(ValueError, match="PE name"):
        wire.encode_message(1, [conn(pe_data=b"x", pe_name="n" * 17)])
    with pytest.raises(ValueError, match="version"):
        wire.encode_message(1, [conn()], version=2)


def test_entry_len_matches_encoding() -> None:
    for entry in (
        conn(),
        conn(flags=0x400, seq=(1, 2, 3, 4, 5, 6)),
        conn(flags=0x1183, pe_data=b"callid", pe_name="sip"),
        conn(family=AF_INET6, caddr=V6("::1"), vaddr=V6("::2"), daddr=V6("::3")),
    ):
        assert len(wire.encode_entry(entry)) == wire.entry_len(entry)
    assert wire.entry_len(conn(), version=0) == 24
    assert wire.entry_len(conn(flags=0x200), version=0) == 48


# ---------------------------------------------------------------------------------------------
# properties

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
v4addr = st.builds(V4, u32)
v6addr = st.builds(V6, st.integers(0, 2**128 - 1))


@st.composite
def sync_conns(draw: st.DrawFn, *, v0: bool = False) -> SyncConn:
    six = draw(st.booleans()) and not v0
    template = draw(st.booleans())
    flags = draw(st.integers(0, 0xFFFF if v0 else 0xFFFFFFFF)) & ~wire.FLAG_HASHED
    flags = flags | wire.FLAG_TEMPLATE if template else flags & ~wire.FLAG_TEMPLATE
    if template:
        protocol = draw(st.sampled_from([0, 6, 17, 132, 99]))
        state = draw(u16)
    else:
        protocol = draw(st.sampled_from(sorted(wire.PROTOCOL_STATES)))
        state = draw(st.integers(0, wire.PROTOCOL_STATES[protocol] - 1))
    addr: st.SearchStrategy[IPAddress] = v6addr if six else v4addr
    seq = draw(st.tuples(u32, u32, u32, u32, u32, u32)) if flags & wire.FLAG_SEQ_MASK else None
    pe_data, pe_name = b"", ""
    if not v0 and draw(st.booleans()):
        pe_data = draw(st.binary(min_size=1, max_size=255))
        pe_name = draw(st.sampled_from(["sip", "pe", "x" * 16]))
    return SyncConn(
        family=AF_INET6 if six else AF_INET, protocol=protocol, flags=flags, state=state,
        cport=draw(u16), vport=draw(u16), dport=draw(u16),
        fwmark=0 if v0 else draw(u32), timeout=0 if v0 else draw(u32),
        caddr=draw(addr), vaddr=draw(addr), daddr=draw(addr),
        seq=seq, pe_name=pe_name, pe_data=pe_data,
    )


PE_NAMES = frozenset({"sip", "pe", "x" * 16})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 255), st.lists(sync_conns(), max_size=30))
def test_roundtrip_v1(syncid: int, entries: list[SyncConn]) -> None:
    data = wire.encode_message(syncid, entries)
    assert len(data) == int.from_bytes(data[2:4], "big")
    msg = wire.decode_message(data, pe_names=PE_NAMES)
    assert msg.fatal is None and msg.skipped == ()
    assert (msg.version, msg.syncid, msg.nr_conns) == (1, syncid, len(entries))
    assert list(msg.entries) == entries
    # §1.5: entries start 4-byte aligned, sizes exclude padding, no trailing pad
    p = 8
    for entry in entries:
        assert p % 4 == 0
        assert int.from_bytes(data[p + 2 : p + 4], "big") == wire.entry_len(entry)
        p += (wire.entry_len(entry) + 3) & ~3
    assert len(data) == (8 if not entries else p - (-wire.entry_len(entries[-1]) & 3))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 255), st.lists(sync_conns(v0=True), max_size=30))
def test_roundtrip_v0(syncid: int, entries: list[SyncConn]) -> None:
    data = wire.encode_message(syncid, entries, version=0)
    msg = wire.decode_message(data)
    assert msg.version == 0 or not entries  # 0 entries in v0 look like nothing at all
    assert list(msg.entries) == entries


@settings(max_examples=100, deadline=None)
@given(st.lists(sync_conns(), min_size=1, max_size=8), st.data())
def test_truncation_never_escapes(entries: list[SyncConn], data: st.DataObject) -> None:
    full = wire.encode_message(3, entries)
    cut = data.draw(st.integers(0, len(full) - 1))
    with pytest.raises(SyncDecodeError):  # size no longer matches
        wire.decode_message(full[:cut])
    if cut >= 4:  # with a size patched to match, the entries are truncated, never mis-read
        patched = full[:2] + cut.to_bytes(2, "big") + full[4:cut]
        msg = wire.decode_message(patched, pe_names=PE_NAMES)
        assert msg.entries == tuple(entries[: len(msg.entries)])
        if msg.version == 1:
            assert msg.fatal is not None or len(msg.entries) == len(entries)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 255), st.booleans())
def test_fuzz_decoder_raises_only_sync_decode_error(
    data: bytes, syncid: int, fix_size: bool
) -> None:
    if fix_size and len(data) >= 4:
        data = data[:2] + len(data).to_bytes(2, "big") + data[4:]
    try:
        msg = wire.decode_message(data, syncid=syncid, accept_flags=fix_size)
    except SyncDecodeError as exc:
        assert isinstance(exc.reason, R)
    else:
        assert len(msg.entries) + len(msg.skipped) <= msg.nr_conns


def _mutate_and_decode(entries: list[SyncConn], data: st.DataObject) -> None:
    buf = bytearray(wire.encode_message(9, entries))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(4, len(buf) - 1))  # keep size intact: reach the entry rules
        buf[i] = data.draw(st.integers(0, 255))
    try:
        msg = wire.decode_message(bytes(buf))
    except SyncDecodeError as exc:
        assert isinstance(exc.reason, R)
    else:
        assert len(msg.entries) + len(msg.skipped) <= msg.nr_conns


@settings(max_examples=200, deadline=None)
@given(st.lists(sync_conns(), min_size=1, max_size=6), st.data())
def test_fuzz_mutated_valid_messages(entries: list[SyncConn], data: st.DataObject) -> None:
    _mutate_and_decode(entries, data)


@pytest.mark.soak
@pytest.mark.timeout(1800)
@settings(max_examples=20_000, deadline=None)
@given(st.lists(sync_conns(), min_size=1, max_size=6), st.data())
def test_fuzz_mutated_valid_messages_long(entries: list[SyncConn], data: st.DataObject) -> None:
    _mutate_and_decode(entries, data)


def test_replace_keeps_equality_semantics() -> None:
    # decoded entries are ordinary SyncConn values (built through slot descriptors)
    decoded = wire.decode_message(CASES[0][1]).entries[0]
    assert decoded == conn() and hash(decoded) == hash(conn())
    assert replace(decoded, cport=1) == conn(cport=1)
