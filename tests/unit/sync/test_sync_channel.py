"""SyncSender / SyncReceiver scripted over an explicit `now` (spec/ipvs.md §1.1, §1.8, §1.9)."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from hactl.errors import StateError
from hactl.ipvs.model import AF_INET, AF_INET6, SyncConn
from hactl.sync import wire
from hactl.sync.channel import OTHER_PEERS, QUEUE_FULL, V0_IPV6, SyncReceiver, SyncSender
from hactl.sync.events import ApplySyncEntries, SendDatagram, SyncDropped
from hactl.sync.model import SyncDaemonConfig, max_sync_len, parse_lvs_sync_daemon
from hactl.sync.wire import SyncDropReason as R
from tests.unit.sync.sync_support import conn

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
KEY = b"0123456789abcdef0123456789abcdef"


def conn6(i: int = 0) -> SyncConn:
    return conn(i, family=AF_INET6, caddr=V6(i + 1), vaddr=V6("2001:db8::1"),
                daddr=V6("2001:db8::2"))


def decoded(dgrams: list[SendDatagram], **kw: object) -> list[SyncConn]:
    out: list[SyncConn] = []
    for d in dgrams:
        out.extend(wire.decode_message(d.data, **kw).entries)  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------------------------------------
# max_sync_len and the daemon config


@pytest.mark.parametrize(
    ("maxlen", "family", "master", "mtu", "expected"),
    [
        (None, AF_INET, True, 9000, 1472),  # the master ignores the MTU
        (None, AF_INET6, True, 1500, 1452),
        (None, AF_INET, False, 9000, 8972),  # the backup's default follows the MTU
        (None, AF_INET, False, 1280, 1472),  # ... but never below 1500 - hlen
        (None, AF_INET, False, 70000, 65507),
        (0, AF_INET, True, 1500, 1),
        (500, AF_INET, False, 1500, 1024),  # backup minimum
        (100000, AF_INET6, True, 1500, 65487),
        (1000, AF_INET, True, 1500, 1000),
    ],
)
def test_max_sync_len(
    maxlen: int | None, family: int, master: bool, mtu: int, expected: int
) -> None:
    assert max_sync_len(maxlen, family=family, master=master, mtu=mtu) == expected


@pytest.mark.parametrize(
    "kw",
    [
        {"syncid": 256},
        {"sync_ports": 3},
        {"sync_ports": 128},
        {"ttl": 0},
        {"version": 2},
        {"qlen_max": 0},
        {"auth_key": b"short"},
        {"port": 0},
    ],
)
def test_daemon_config_rejects(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SyncDaemonConfig(interface="eth0", **kw)  # type: ignore[arg-type]


def test_daemon_config_defaults_are_the_kernels() -> None:
    cfg = SyncDaemonConfig(interface="eth0", instance="VI_1")
    assert (str(cfg.group), cfg.port, cfg.ttl, cfg.syncid, cfg.maxlen) == (
        "224.0.0.81", 8848, 1, 0, None
    )
    assert cfg.family == AF_INET and cfg.auth_key is None and not cfg.multicast_loop


# ---------------------------------------------------------------------------------------------
# sender


def test_sender_packs_40_ipv4_entries_per_1472_bytes_and_flushes_partial_at_2s() -> None:
    now = 0.0
    s = SyncSender(syncid=7, max_datagram=1472)
    s.add_many((conn(i) for i in range(100)), now=now)
    full = s.pop_datagrams()
    assert [d.entries for d in full] == [40, 40]
    assert [len(d.data) for d in full] == [8 + 40 * 36] * 2  # 1448: a 41st would be 1484
    assert s.next_deadline() == 2.0
    now = 1.5
    s.add(conn(100), now=now)  # the deadline is from the partial datagram's first entry
    s.handle_timer(now=1.999)
    assert s.pop_datagrams() == [] and s.next_deadline() == 2.0
    s.handle_timer(now=2.0)
    (partial,) = s.pop_datagrams()
    assert partial.entries == 21 and s.next_deadline() is None
    assert decoded([*full, partial]) == [conn(i) for i in range(101)]
    st = s.stats()
    assert (st.entries_added, st.entries_sent, st.datagrams_sent) == (101, 101, 3)
    assert st.bytes_sent == 2 * 1448 + 8 + 21 * 36
    assert st.queue_depth == 0 and st.entries_pending == 0


def test_sender_datagrams_equal_the_codec_with_padding() -> None:
    entries = [
        conn(0, flags=0x600, seq=(1, 2, 3, 4, 5, 6)),  # 62 bytes, 2 pad bytes follow
        conn(1),
        conn6(2),
        conn(3, flags=0x1183, pe_data=b"call-id-1", pe_name="sip"),
        conn(4),
    ]
    s = SyncSender(syncid=5, max_datagram=1472)
    s.add_many(entries, now=0.0)
    s.flush(now=0.0)
    (d,) = s.pop_datagrams()
    assert d.data == wire.encode_message(5, entries)


@pytest.mark.parametrize(("max_datagram", "sizes"), [(108, [2]), (107, [1, 1])])
def test_sender_counts_the_pad_against_capacity(max_datagram: int, sizes: list[int]) -> None:
    s = SyncSender(syncid=1, max_datagram=max_datagram)
    s.add(conn(0, flags=0x400, seq=(0,) * 6), now=0.0)  # 8 + 62 = 70, pad 2, + 36 = 108
    s.add(conn(1), now=0.0)
    s.flush(now=0.0)
    assert [d.entries for d in s.pop_datagrams()] == sizes


def test_sender_sends_an_oversized_entry_alone() -> None:
    big = conn(0, flags=0x1183, pe_data=b"x" * 255, pe_name="sip")
    s = SyncSender(syncid=1, max_datagram=100)
    s.add_many([conn(1), big, conn(2)], now=0.0)
    s.flush(now=0.0)
    ds = s.pop_datagrams()
    assert [d.entries for d in ds] == [1, 1, 1]
    assert len(ds[1].data) == 8 + wire.entry_len(big) > 100


def test_sender_caps_a_datagram_at_255_entries() -> None:
    s = SyncSender(syncid=1, max_datagram=65507)
    s.add_many((conn(i) for i in range(300)), now=0.0)
    s.flush(now=0.0)
    assert [d.entries for d in s.pop_datagrams()] == [255, 45]


def test_sender_ipv6_entries_are_72_bytes() -> None:
    s = SyncSender(syncid=1, max_datagram=1452)
    s.add_many((conn6(i) for i in range(21)), now=0.0)
    (d,) = s.pop_datagrams()  # 8 + 20 * 72 = 1448
    assert d.entries == 20 and len(d.data) == 1448


def test_sender_queue_drops_oldest_when_full() -> None:
    s = SyncSender(syncid=1, max_datagram=1472, qlen_max=2)
    s.add_many((conn(i) for i in range(210)), now=0.0)  # 5 full datagrams, 10 pending
    st = s.stats()
    assert (st.queue_depth, st.datagrams_dropped, st.entries_pending) == (2, 3, 10)
    assert st.entries_dropped == {QUEUE_FULL: 120}
    kept = decoded(s.pop_datagrams())
    assert kept == [conn(i) for i in range(120, 200)]


def test_sender_queues_a_datagram_as_soon_as_nothing_fits() -> None:
    s = SyncSender(syncid=1, max_datagram=1472)
    s.add_many((conn(i) for i in range(40)), now=0.0)  # 1448 bytes: 24 left, < 36
    assert [d.entries for d in s.pop_datagrams()] == [40] and s.next_deadline() is None
    s = SyncSender(syncid=1, max_datagram=1484)
    s.add_many((conn(i) for i in range(40)), now=0.0)  # 36 left: one more entry fits
    assert s.pop_datagrams() == [] and s.next_deadline() == 2.0
    s.add(conn(40), now=0.5)
    assert [d.entries for d in s.pop_datagrams()] == [41]


def test_sender_version_switch_flushes_and_v0_skips_ipv6() -> None:
    s = SyncSender(syncid=3, max_datagram=1472)
    s.add(conn(0), now=0.0)
    s.set_version(0, now=0.5)
    s.add_many([conn(1), conn6(2), conn(3)], now=0.5)
    s.handle_timer(now=2.5)
    first, second = s.pop_datagrams()
    assert first.data == wire.encode_message(3, [conn(0)])
    assert second.data == wire.encode_message(3, [conn(1), conn(3)], version=0)
    assert s.stats().entries_dropped == {V0_IPV6: 1}
    with pytest.raises(StateError):
        s.set_version(2, now=3.0)


def test_sender_spreads_over_sync_ports_stably() -> None:
    s = SyncSender(syncid=1, max_datagram=1472, ports=4)
    entries = [conn(i) for i in range(64)]
    s.add_many(entries, now=0.0)
    s.add_many(entries, now=0.1)  # the same connections again
    s.flush(now=0.1)
    ds = s.pop_datagrams()
    ports_used = {d.port_offset for d in ds}
    assert ports_used <= {0, 1, 2, 3} and len(ports_used) > 1
    where: dict[SyncConn, set[int]] = {}
    for d in ds:
        for e in wire.decode_message(d.data).entries:
            where.setdefault(e, set()).add(d.port_offset)
    assert all(len(p) == 1 for p in where.values())
    assert Counter(decoded(ds)) == Counter(entries * 2)


def test_sender_pop_limit_and_deadline_over_ports() -> None:
    s = SyncSender(syncid=1, max_datagram=1472, ports=2)
    s.add_many((conn(i) for i in range(400)), now=0.0)
    depth = s.queue_depth
    assert len(s.pop_datagrams(limit=3)) == 3 and s.queue_depth == depth - 3
    s.pop_datagrams()
    assert s.next_deadline() == 2.0
    s.handle_timer(now=2.0)
    assert s.next_deadline() is None


def test_sender_authenticated_datagrams_fit_maxlen() -> None:
    s = SyncSender(syncid=1, max_datagram=1472, auth_key=KEY)
    s.add_many((conn(i) for i in range(100)), now=0.0)
    s.flush(now=0.0)
    ds = s.pop_datagrams()
    assert all(len(d.data) <= 1472 for d in ds)
    assert [d.entries for d in ds] == [39, 39, 22]  # 36 bytes of trailer cost one entry
    assert decoded(ds, auth_key=KEY) == [conn(i) for i in range(100)]


@pytest.mark.parametrize("kw", [{"ports": 3}, {"version": 2}, {"qlen_max": 0}])
def test_sender_misuse(kw: dict[str, int]) -> None:
    args: dict[str, int] = {"syncid": 1, "max_datagram": 1472, **kw}
    with pytest.raises(StateError):
        SyncSender(**args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# receiver

MASTER = ("10.0.0.2", 40000)


def roundtrip(sender: SyncSender, receiver: SyncReceiver, *, now: float, src=MASTER) -> None:  # type: ignore[no-untyped-def]
    for d in sender.pop_datagrams():
        receiver.receive_datagram(d.data, src=src, now=now)


def test_receiver_applies_with_accepted_flags_and_counts() -> None:
    s = SyncSender(syncid=9, max_datagram=1472)
    r = SyncReceiver(syncid=9)
    s.add_many([conn(0, flags=0x10000 | 0x83), conn(1, flags=0x1183, state=0)], now=0.0)
    s.flush(now=0.0)
    roundtrip(s, r, now=0.25)
    (ev,) = r.pop_events()
    assert isinstance(ev, ApplySyncEntries)
    assert ev.peer == "10.0.0.2" and ev.version == 1
    assert [e.flags for e in ev.entries] == [0x83 | 0x20, 0x1183 | 0x20]
    r.record_applied(ev.peer, applied=2)
    (peer,) = r.stats(now=3.25)
    assert (peer.datagrams, peer.entries_received, peer.entries_applied) == (1, 2, 2)
    assert (peer.syncid, peer.version, peer.last_message_at, peer.lag) == (9, 1, 0.25, 3.0)
    assert peer.entries_dropped == {} and peer.datagrams_dropped == {}


def test_receiver_filters_syncid_and_keys_peers_by_address() -> None:
    r = SyncReceiver(syncid=9)
    r.receive_datagram(wire.encode_message(8, [conn(0), conn(1)]), src=MASTER, now=1.0)
    r.receive_datagram(wire.encode_message(9, [conn(2)]), src=("10.0.0.2", 5), now=2.0)
    dropped, applied = r.pop_events()
    assert dropped == SyncDropped("10.0.0.2", R.SYNCID_MISMATCH, 2, True, "syncid_mismatch: "
                                  "syncid 8")
    assert isinstance(applied, ApplySyncEntries) and len(applied.entries) == 1
    (peer,) = r.stats(now=2.0)
    assert peer.datagrams == 2 and peer.datagrams_dropped == {"syncid_mismatch": 1}
    assert peer.entries_received == 1


def test_receiver_accounts_every_announced_entry() -> None:
    good = wire.encode_entry(conn(0))
    unknown_proto = wire.encode_entry(conn(1, protocol=99))
    bad_type = b"\x02" + wire.encode_entry(conn(2))[1:]
    data = wire.assemble(0, [good, unknown_proto, good, bad_type, good, good])
    r = SyncReceiver()
    r.receive_datagram(data, src=MASTER, now=0.0)
    events = r.pop_events()
    assert SyncDropped("10.0.0.2", R.UNKNOWN_PROTOCOL, 1, False, "entry 1") in events
    assert SyncDropped("10.0.0.2", R.BAD_TYPE, 3, False, "rest of the message") in events
    (apply,) = [e for e in events if isinstance(e, ApplySyncEntries)]
    r.record_applied(apply.peer, applied=1, failed=1)
    (peer,) = r.stats(now=0.0)
    assert peer.entries_received == 6
    dropped = sum(peer.entries_dropped.values())
    assert peer.entries_applied + peer.entries_failed + dropped == peer.entries_received


def test_receiver_drops_datagrams_longer_than_its_buffer() -> None:
    r = SyncReceiver(max_datagram=1472)
    data = wire.encode_message(0, [conn(i) for i in range(41)])  # 1484 bytes
    r.receive_datagram(data, src=MASTER, now=0.0)
    (ev,) = r.pop_events()
    assert isinstance(ev, SyncDropped) and ev.reason is R.TOO_LONG and ev.entries == 41


def test_receiver_with_key_accepts_only_authenticated_traffic() -> None:
    r = SyncReceiver(auth_key=KEY)
    plain = wire.encode_message(0, [conn()])
    r.receive_datagram(plain, src=MASTER, now=0.0)
    r.receive_datagram(wire.sign(plain, b"another key of 32 bytes........."), src=MASTER, now=0.1)
    s = SyncSender(syncid=0, max_datagram=1472, auth_key=KEY)
    s.add(conn(), now=0.2)
    s.flush(now=0.2)
    roundtrip(s, r, now=0.2)
    reasons = [e.reason if isinstance(e, SyncDropped) else "apply" for e in r.pop_events()]
    assert reasons == [R.AUTH_MISSING, R.AUTH_FAILED, "apply"]


def test_receiver_v0_flags_and_record_misuse() -> None:
    r = SyncReceiver()
    r.receive_datagram(wire.encode_message(0, [conn(flags=0x2083)], version=0), src=MASTER,
                       now=0.0)
    (ev,) = r.pop_events()
    assert isinstance(ev, ApplySyncEntries) and ev.version == 0
    assert ev.entries[0].flags == 0x20A3 and ev.entries[0].timeout == 0
    with pytest.raises(StateError):
        r.record_applied("192.0.2.1", applied=1)


def test_receiver_never_raises_on_garbage() -> None:
    r = SyncReceiver(syncid=3)
    for data in (b"", b"\x01", bytes(7), bytes(range(256)), b"\xff" * 1500):
        r.receive_datagram(data, src=MASTER, now=0.0)
    assert all(isinstance(e, SyncDropped) for e in r.pop_events())


# ---------------------------------------------------------------------------------------------
# keepalived's lvs_sync_daemon line


def test_parse_lvs_sync_daemon_full_and_minimal() -> None:
    line = "eth1 VI_1 id 7 maxlen 1400 port 9000 ttl 2 group 239.1.2.3"
    cfg = parse_lvs_sync_daemon(line.split())
    assert (cfg.interface, cfg.instance, cfg.syncid, cfg.maxlen, cfg.port, cfg.ttl) == (
        "eth1", "VI_1", 7, 1400, 9000, 2)
    assert cfg.group == V4("239.1.2.3")
    minimal = parse_lvs_sync_daemon(["eth0", "VI_1"])
    assert minimal == SyncDaemonConfig(interface="eth0", instance="VI_1")
    six = parse_lvs_sync_daemon(["eth0", "VI_6", "group", "ff02::81"])
    assert six.family == AF_INET6


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("eth0", "needs an interface and a VRRP instance"),
        ("eth0 VI_1 id", "'id' needs a value"),
        ("eth0 VI_1 id 256", "id '256' is not in 0..255"),
        ("eth0 VI_1 id -1", "id '-1' is not in 0..255"),
        ("eth0 VI_1 ttl 0", "ttl '0' is not in 1..255"),
        ("eth0 VI_1 port 70000", "port '70000'"),
        ("eth0 VI_1 maxlen x", "maxlen 'x'"),
        ("eth0 VI_1 group 10.0.0.1", "not a multicast address"),
        ("eth0 VI_1 group nowhere", "not an address"),
        ("eth0 VI_1 id 1 id 2", "'id' given twice"),
        ("eth0 VI_1 speed 10", "unknown option 'speed'"),
    ],
)
def test_parse_lvs_sync_daemon_rejects(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_lvs_sync_daemon(line.split())


def test_receiver_bounds_the_number_of_peers() -> None:
    r = SyncReceiver(max_peers=2)
    data = wire.encode_message(0, [conn()])
    for i in range(5):
        r.receive_datagram(data, src=(f"10.0.0.{i}", 1), now=float(i))
    events = r.pop_events()
    assert [e.peer for e in events if isinstance(e, ApplySyncEntries)] == [
        "10.0.0.0", "10.0.0.1", OTHER_PEERS, OTHER_PEERS, OTHER_PEERS]
    r.record_applied(OTHER_PEERS, applied=3)
    stats = {p.peer: p for p in r.stats(now=5.0)}
    assert set(stats) == {"10.0.0.0", "10.0.0.1", OTHER_PEERS}
    assert stats[OTHER_PEERS].datagrams == 3 and stats[OTHER_PEERS].entries_applied == 3
