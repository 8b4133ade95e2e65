"""Scheduler decisions against hand-computed sequences of spec/ipvs.md §6.

Each test names the spec section it pins. Destinations are listed in kernel order (newest
added first, spec §0), which is the order every tie-break and table fill follows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hactl.ipvs.schedulers import (
    IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2,
    SCHEDULER_NAMES,
    DestinationHashing,
    LocalityBasedLeastConnection,
    LocalityBasedLeastConnectionReplication,
    MaglevHashing,
    SchedPacket,
    Scheduler,
    SourceHashing,
    make_scheduler,
)


@dataclass(eq=False)
class Dest:
    """A runtime destination as the engine keeps one (satisfies SchedDest)."""

    name: str
    addr: IPv4Address | IPv6Address
    port: int = 80
    weight: int = 1
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    overloaded: bool = False

    def __repr__(self) -> str:
        return self.name


def dest(name: str, addr: str, weight: int = 1, *, port: int = 80, **kw: Any) -> Dest:
    return Dest(name, ip_address(addr), port, weight, **kw)


def abc(*weights: int) -> list[Dest]:
    """Destinations A, B, C... on 192.168.1.1, .2, ... in this list order."""
    return [dest(chr(ord("A") + i), f"192.168.1.{i + 1}", w) for i, w in enumerate(weights)]


def pkt(
    saddr: str = "10.0.0.1",
    sport: int = 40000,
    daddr: str = "10.0.0.100",
    dport: int = 80,
    protocol: int = 6,
) -> SchedPacket:
    family = 2 if ip_address(saddr).version == 4 else 10
    return SchedPacket(family, protocol, ip_address(saddr), sport, ip_address(daddr), dport)


PKT = pkt()


def make(name: str, dests: Sequence[Dest], **kw: Any) -> Scheduler[Any]:
    kw.setdefault("sched_flags", 0)
    kw.setdefault("rng", random.Random(0))
    s = make_scheduler(name, **kw)
    s.update_dests(dests)
    return s


def run(s: Scheduler[Any], dests: list[Dest], n: int, p: SchedPacket = PKT) -> str:
    out = []
    for _ in range(n):
        d = s.schedule(dests, p, now=0.0)
        out.append(d.name if d is not None else "-")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# registry


def test_scheduler_names_are_the_kernel_schedulers() -> None:
    assert set(SCHEDULER_NAMES) == {
        "rr",
        "wrr",
        "lc",
        "wlc",
        "sed",
        "nq",
        "sh",
        "dh",
        "mh",
        "lblc",
        "lblcr",
        "fo",
        "ovf",
        "twos",
    }
    for name in SCHEDULER_NAMES:
        s = make_scheduler(name, sched_flags=0, rng=random.Random(1))
        assert s.name == name
        s.update_dests([])
        assert s.schedule([], PKT, now=0.0) is None  # §6.0: empty service => no destination


def test_unknown_scheduler_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown IPVS scheduler 'wrrr'"):
        make_scheduler("wrrr", sched_flags=0, rng=random.Random())


def test_timers_only_for_lblc_and_lblcr() -> None:
    for name in SCHEDULER_NAMES:
        s = make_scheduler(name, sched_flags=0, rng=random.Random(), now=100.0)
        expected = 160.0 if name in ("lblc", "lblcr") else None
        assert s.next_deadline() == expected, name


# ---------------------------------------------------------------------------------------------
# rr (§6.2)


def test_rr_cycles_in_list_order_from_the_head() -> None:
    ds = abc(1, 1, 1)
    assert run(make("rr", ds), ds, 7) == "ABCABCA"


def test_rr_skips_quiesced_and_overloaded() -> None:
    ds = abc(1, 0, 1, 1)
    ds[2].overloaded = True
    assert run(make("rr", ds), ds, 4) == "ADAD"
    ds[0].weight = 0
    ds[3].overloaded = True
    assert run(make("rr", ds), ds, 2) == "--"


def test_rr_weights_beyond_zero_do_not_matter() -> None:
    ds = abc(5, 1)
    assert run(make("rr", ds), ds, 4) == "ABAB"


def test_rr_removing_the_dest_under_the_cursor_moves_it_to_the_previous_entry() -> None:
    a, _b, c = ds = abc(1, 1, 1)
    s = make("rr", ds)
    assert run(s, ds, 2) == "AB"  # cursor on B
    ds = [a, c]
    s.update_dests(ds)  # cursor -> A, so C is next (a reset to the head would give A)
    assert run(s, ds, 3) == "CAC"


def test_rr_removing_the_first_entry_under_the_cursor_moves_it_to_the_head() -> None:
    _a, b, c = ds = abc(1, 1, 1)
    s = make("rr", ds)
    assert run(s, ds, 1) == "A"
    ds = [b, c]
    s.update_dests(ds)
    assert run(s, ds, 3) == "BCB"


def test_rr_removing_other_dests_and_adding_keep_the_cursor() -> None:
    a, b, c = ds = abc(1, 1, 1)
    s = make("rr", ds)
    assert run(s, ds, 2) == "AB"
    d = dest("D", "192.168.1.4")
    ds = [d, a, b, c]  # a new destination goes to the head
    s.update_dests(ds)
    assert run(s, ds, 3) == "CDA"
    ds = [d, a, c]  # removing B, not under the cursor (A)
    s.update_dests(ds)
    assert run(s, ds, 2) == "CD"


def test_rr_removing_several_walks_back_to_a_surviving_entry() -> None:
    a, _b, _c, d = ds = abc(1, 1, 1, 1)
    s = make("rr", ds)
    assert run(s, ds, 3) == "ABC"
    ds = [a, d]  # B and C gone at once: same as removing C then B => cursor on A
    s.update_dests(ds)
    assert run(s, ds, 2) == "DA"


def test_rr_edit_with_new_objects_keeps_the_cursor_by_address_and_port() -> None:
    ds = abc(1, 1, 1)
    s = make("rr", ds)
    assert run(s, ds, 1) == "A"
    copy = [dest(d.name, str(d.addr), d.weight) for d in ds]
    s.update_dests(copy)
    assert run(s, copy, 2) == "BC"


# ---------------------------------------------------------------------------------------------
# wrr (§6.3)


def test_wrr_spec_example_4_3_2() -> None:
    ds = abc(4, 3, 2)
    assert run(make("wrr", ds), ds, 18) == "AABABCABC" * 2


def test_wrr_steps_by_the_gcd() -> None:
    ds = abc(6, 4, 2)  # di = 2, mw = 6 - 1 = 5: levels 5, 3, 1
    assert run(make("wrr", ds), ds, 12) == "AABABC" * 2
    ds = abc(4, 2)  # levels 3, 1
    assert run(make("wrr", ds), ds, 6) == "AAB" * 2


def test_wrr_equal_weights_is_round_robin() -> None:
    ds = abc(3, 3, 3)
    assert run(make("wrr", ds), ds, 6) == "ABCABC"


def test_wrr_skips_overloaded_and_zero_weight() -> None:
    ds = abc(4, 3, 2, 0)
    ds[1].overloaded = True
    assert run(make("wrr", ds), ds, 12) == "AAACAC" * 2


def test_wrr_all_overloaded_or_all_zero_fails() -> None:
    ds = abc(2, 1)
    for d in ds:
        d.overloaded = True
    s = make("wrr", ds)
    assert run(s, ds, 3) == "---"
    for d in ds:
        d.overloaded = False
    assert run(s, ds, 3) == "AAB"  # recovers once the flags clear
    ds = abc(0, 0)
    assert run(make("wrr", ds), ds, 2) == "--"


def test_wrr_change_resets_the_cursor_and_realigns_cw() -> None:
    ds = abc(6, 4, 2)
    s = make("wrr", ds)
    assert run(s, ds, 2) == "AA"  # now cw = 3, cursor on A
    s.update_dests(ds)  # cursor := head; di = 2 > 1 => cw := (3 / 2) * 2 + 1 = 3
    # From the head at level 3: A, B; level 1: A, B. Without the reset: B, A, B, C.
    assert run(s, ds, 4) == "ABAB"


def test_wrr_weight_lowered_below_cw_restarts_at_the_new_max() -> None:
    ds = abc(4, 3, 2)
    s = make("wrr", ds)
    assert run(s, ds, 1) == "A"  # cw = 4
    ds[0].weight = 1
    s.update_dests(ds)  # mw = 3 < cw => cw := 3
    assert run(s, ds, 6) == "BBCABC"


def test_wrr_quiesced_dest_below_level_is_still_found_at_level_1() -> None:
    # The kernel's levels end at 1, so a dest whose weight dropped below the gcd between
    # recomputations is still reachable: weights 4, 2 (levels 3, 1) then B edited to 1.
    ds = abc(4, 2)
    s = make("wrr", ds)
    ds[1].weight = 1  # not yet told: levels stay 3, 1
    assert run(s, ds, 3) == "AAB"


# ---------------------------------------------------------------------------------------------
# lc, wlc, sed, nq (§6.4-§6.7)


def test_lc_minimal_overhead_weights_ignored() -> None:
    ds = abc(1, 100, 1)
    ds[0].activeconns = 1  # 256
    ds[1].inactconns = 300  # 300
    ds[2].activeconns, ds[2].inactconns = 0, 257  # 257
    assert run(make("lc", ds), ds, 1) == "A"
    ds[0].inactconns = 1  # 257: tie with C, the earlier entry wins
    assert run(make("lc", ds), ds, 1) == "A"
    ds[0].weight = 0
    assert run(make("lc", ds), ds, 1) == "C"


def test_wlc_overhead_is_active_times_256_plus_inactive() -> None:
    ds = abc(1, 2)
    ds[0].activeconns = 1  # 256 / 1
    ds[1].activeconns, ds[1].inactconns = 1, 100  # 356 / 2 = 178
    assert run(make("wlc", ds), ds, 1) == "B"
    ds[1].inactconns = 257  # 513 / 2 > 256
    assert run(make("wlc", ds), ds, 1) == "A"


def test_wlc_ties_keep_the_earlier_dest() -> None:
    ds = abc(2, 1)
    ds[0].activeconns = 2  # 512 * 1 == 256 * 2
    ds[1].activeconns = 1
    assert run(make("wlc", ds), ds, 1) == "A"
    ds = abc(1, 1, 1)
    assert run(make("wlc", ds), ds, 1) == "A"


def test_wlc_skips_leading_quiesced_and_never_picks_weight_0() -> None:
    ds = abc(0, 1, 0)
    ds[1].activeconns = 50
    assert run(make("wlc", ds), ds, 1) == "B"
    ds[1].overloaded = True
    assert run(make("wlc", ds), ds, 1) == "-"


def test_wlc_cross_multiplication_is_exact_for_large_values() -> None:
    ds = abc(65535, 65534)
    ds[0].activeconns = 65535 * 1000
    ds[1].activeconns = 65534 * 1000 - 1
    # 256000*65535*65534 vs (256000*65534 - 256)*65535: B is marginally lighter.
    assert run(make("wlc", ds), ds, 1) == "B"


def test_sed_uses_active_plus_one() -> None:
    ds = abc(1, 3)
    ds[1].activeconns = 2  # A: 1/1, B: 3/3 => tie => A
    ds[0].inactconns = 1000  # inactive ignored
    assert run(make("sed", ds), ds, 1) == "A"
    ds[1].activeconns = 1  # B: 2/3 < 1
    assert run(make("sed", ds), ds, 1) == "B"


def test_nq_returns_the_first_idle_dest() -> None:
    ds = abc(5, 1, 1)
    ds[0].activeconns = 3  # sed would pick A (4/5 < 1/1)
    assert run(make("sed", ds), ds, 1) == "A"
    assert run(make("nq", ds), ds, 1) == "B"
    ds[1].weight = 0
    assert run(make("nq", ds), ds, 1) == "C"
    ds[2].overloaded = True
    ds[1].weight = 1
    ds[1].activeconns = 1  # nobody idle: sed rule, A 4/5 vs B 2/1
    assert run(make("nq", ds), ds, 1) == "A"


# ---------------------------------------------------------------------------------------------
# sh (§6.8)

# hash_32(x, 8) = ((x * 0x61C88647) mod 2^32) >> 24, by hand:
#   10.0.0.1 = 0x0A000001: 0x61C88647 + 0xC6000000 = 0x27C88647 => bucket 0x27 = 39
#   10.0.0.2 => bucket 137; 10.0.0.1 + port 1000 => 31; + port 1001 => 128


def test_sh_fill_respects_weights_and_gives_weight_0_one_bucket() -> None:
    ds = abc(3, 1, 0)
    s = make("sh", ds)
    assert isinstance(s, SourceHashing)
    table = s.table
    assert len(table) == 256
    assert [d.name if d else "-" for d in table[:10]] == list("AAABCAAABC")
    assert [sum(1 for t in table if t is d) for d in ds] == [154, 51, 51]  # 51 rounds + 1


def test_sh_lookup_by_source_address() -> None:
    ds = abc(3, 1, 0)
    s = make("sh", ds)
    assert s.schedule(ds, pkt("10.0.0.2"), now=0) is ds[0]  # bucket 137: 137 % 5 = 2 => A
    assert s.schedule(ds, pkt("10.0.0.1"), now=0) is None  # bucket 39 => C, weight 0
    ds[0].overloaded = True
    assert s.schedule(ds, pkt("10.0.0.2"), now=0) is None


def test_sh_fallback_probes_from_twice_the_hash() -> None:
    ds = abc(3, 1, 0)
    s = make("sh", ds, sched_flags=IP_VS_SVC_F_SCHED1)
    # 10.0.0.1 => bucket 39 (C, unavailable); probes start at (2 * 39) & 255 = 78 => B.
    assert s.schedule(ds, pkt("10.0.0.1"), now=0) is ds[1]
    ds[1].weight = 0
    s.update_dests(ds)  # the table is rebuilt on edits: A A A B C (B now weight 0)
    # probes 78 (B), 79 (C), 80 (A)
    assert s.schedule(ds, pkt("10.0.0.1"), now=0) is ds[0]
    ds[0].overloaded = True
    assert s.schedule(ds, pkt("10.0.0.1"), now=0) is None  # every bucket probed


def test_sh_port_flag_hashes_the_source_port_for_tcp_udp_sctp_only() -> None:
    ds = abc(3, 1, 0)
    s = make("sh", ds, sched_flags=IP_VS_SVC_F_SCHED2)
    assert s.schedule(ds, pkt("10.0.0.1", 1000), now=0) is ds[0]  # bucket 31 => A
    assert s.schedule(ds, pkt("10.0.0.1", 1001), now=0) is ds[1]  # bucket 128 => B
    assert s.schedule(ds, pkt("10.0.0.1", 1001, protocol=17), now=0) is ds[1]
    assert s.schedule(ds, pkt("10.0.0.1", 1001, protocol=1), now=0) is None  # port ignored
    plain = make("sh", ds)
    assert plain.schedule(ds, pkt("10.0.0.1", 1000), now=0) is None  # port not hashed


def test_sh_ipv6_source_is_folded() -> None:
    ds = abc(1, 1, 1)
    s = make("sh", ds)
    # 2001:db8::1 folds to 0x20010DB8 ^ 0 ^ 0 ^ 1 = 0x20010DB9 => bucket 63 => 63 % 3 = 0
    assert s.schedule(ds, pkt("2001:db8::1", daddr="2001:db8::100"), now=0) is ds[0]


def test_sh_removal_refills_the_table() -> None:
    ds = abc(1, 1, 1)
    s = make("sh", ds)
    ds = ds[1:]
    s.update_dests(ds)
    assert isinstance(s, SourceHashing)
    assert {t.name for t in s.table if t} == {"B", "C"}


def test_sh_table_bits() -> None:
    s = make_scheduler("sh", sched_flags=0, rng=random.Random(), sh_tab_bits=4)
    s.update_dests(abc(1))
    assert isinstance(s, SourceHashing)
    assert len(s.table) == 16
    with pytest.raises(ValueError):
        make_scheduler("sh", sched_flags=0, rng=random.Random(), sh_tab_bits=3)


# ---------------------------------------------------------------------------------------------
# dh (§6.9)


def test_dh_one_bucket_per_dest_weights_ignored() -> None:
    ds = abc(5, 1, 1)
    s = make("dh", ds)
    assert isinstance(s, DestinationHashing)
    assert [t.name for t in s.table[:6] if t] == list("ABCABC")
    assert s.schedule(ds, pkt(daddr="10.0.0.1"), now=0) is ds[0]  # 39 % 3 = 0
    assert s.schedule(ds, pkt(daddr="10.0.0.2"), now=0) is ds[2]  # 137 % 3 = 2
    ds[2].weight = 0
    assert s.schedule(ds, pkt(daddr="10.0.0.2"), now=0) is None  # no fallback
    ds[0].overloaded = True
    assert s.schedule(ds, pkt(daddr="10.0.0.1"), now=0) is None


# ---------------------------------------------------------------------------------------------
# mh (§6.10)


def mh_dests() -> list[Dest]:
    return [dest(f"D{i}", f"10.0.1.{i}") for i in (1, 2, 3)]


def test_mh_permutation_on_a_7_slot_table() -> None:
    # offset = H(key1, 80 + addr) mod 7, skip = H(key2, 80 + addr) mod 6 + 1:
    #   D1 (6, 2): 6 1 3 5 0 2 4    D2 (3, 6): 3 2 1 0 6 5 4    D3 (6, 5): 6 4 2 0 5 3 1
    # round 1: D1 6, D2 3, D3 4 (6 taken); round 2: D1 1, D2 2, D3 0; round 3: D1 5.
    ds = mh_dests()
    s = make("mh", ds, mh_table_size=7)
    assert isinstance(s, MaglevHashing)
    assert [t.name if t else "-" for t in s.table] == ["D3", "D1", "D2", "D2", "D3", "D1", "D1"]
    # Lookup slot = H(key1, client) mod 7: 192.168.0.10 => 3, .11 => 5
    assert s.schedule(ds, pkt("192.168.0.10"), now=0) is ds[1]
    assert s.schedule(ds, pkt("192.168.0.11"), now=0) is ds[0]


def test_mh_fallback_rehashes_with_an_offset() -> None:
    ds = mh_dests()
    s = make("mh", ds, mh_table_size=7, sched_flags=IP_VS_SVC_F_SCHED1)
    ds[1].weight = 0
    s.update_dests(ds)  # last_weight keeps D2's slots
    # 192.168.0.10 => slot 3 (D2, quiesced). Probes H(key1, client + (o + 3) mod 7) mod 7 for
    # o = 0..6: slots 5 1 0 0 3 5 3 => D1.
    assert s.schedule(ds, pkt("192.168.0.10"), now=0) is ds[0]
    ds[0].overloaded = True  # slots 5 (D1), 1 (D1), 0 (D3)
    assert s.schedule(ds, pkt("192.168.0.10"), now=0) is ds[2]
    plain = make("mh", ds, mh_table_size=7)
    assert plain.schedule(ds, pkt("192.168.0.10"), now=0) is None


def test_mh_spec_vectors_on_the_default_table() -> None:
    ds = mh_dests()
    s = make("mh", ds)
    assert isinstance(s, MaglevHashing)
    table = s.table
    assert len(table) == 4093
    # §6.10: offsets 1011, 1584, 9 are each dest's first choice, claimed in round 1.
    assert table[1011] is ds[0] and table[1584] is ds[1] and table[9] is ds[2]
    # and the skips: each dest's second slot is offset + skip (when free).
    assert table[(1011 + 1586) % 4093] is ds[0]
    assert table[(1584 + 2508) % 4093] is ds[1]
    assert table[9 + 209] is ds[2]
    assert s.schedule(ds, pkt("192.168.0.10"), now=0) is table[2524]
    assert [sum(1 for t in table if t is d) for d in ds] == [1365, 1364, 1364]


def test_mh_weights_become_turns() -> None:
    ds = abc(2, 1)
    s = make("mh", ds)
    assert isinstance(s, MaglevHashing)
    # rounds of A A B: 1364 rounds = 4092 slots, then A takes the last one
    assert [sum(1 for t in s.table if t is d) for d in ds] == [2729, 1364]
    ds = abc(1, 100)  # max/gcd = 100 has 7 bits > 6 => rshift 1: turns 0 -> 1, 50
    s = make("mh", ds)
    assert isinstance(s, MaglevHashing)
    assert [sum(1 for t in s.table if t is d) for d in ds] == [81, 4012]  # 80 * 51 + 1 + 12


def test_mh_quiesce_moves_only_the_quiesced_dests_clients() -> None:
    ds = mh_dests()
    s = make("mh", ds)
    clients = [pkt(f"172.16.{i // 250}.{i % 250 + 1}") for i in range(2000)]
    before = [s.schedule(ds, c, now=0) for c in clients]
    ds[1].weight = 0
    s.update_dests(ds)
    after = [s.schedule(ds, c, now=0) for c in clients]
    for b, a in zip(before, after, strict=True):
        assert a is (None if b is ds[1] else b)
    assert any(b is ds[1] for b in before)


def test_mh_dest_added_with_weight_0_gets_no_slots_and_removal_is_consistent() -> None:
    ds = mh_dests()
    ds[0].weight = 0
    s = make("mh", ds)
    assert isinstance(s, MaglevHashing)
    assert all(t is not ds[0] for t in s.table)
    ds[0].weight = 2  # an edit to non-zero sets last_weight
    s.update_dests(ds)
    assert sum(1 for t in s.table if t is ds[0]) > 1500
    full = s.table
    s.update_dests(ds[1:])
    moved = sum(1 for x, y in zip(full, s.table, strict=True) if x is not ds[0] and x is not y)
    assert moved < 4093 // 20  # Maglev: few slots of the survivors move


def test_mh_all_weights_zero_empties_the_table_and_too_many_dests_is_refused() -> None:
    ds = abc(0, 0)
    s = make("mh", ds)
    assert isinstance(s, MaglevHashing)
    assert set(s.table) == {None}
    small = make_scheduler("mh", sched_flags=0, rng=random.Random(), mh_table_size=7)
    many = [dest(str(i), f"10.9.0.{i}") for i in range(1, 9)]
    with pytest.raises(ValueError, match="8 destinations do not fit a table of 7 slots"):
        small.update_dests(many)


def test_mh_port_flag() -> None:
    ds = mh_dests()
    s = make("mh", ds, sched_flags=IP_VS_SVC_F_SCHED2)
    plain = make("mh", ds)
    picks = {s.schedule(ds, pkt("192.168.0.10", sport), now=0) for sport in range(1000, 1050)}
    assert len(picks) == 3  # the port spreads one client over every dest
    assert {plain.schedule(ds, pkt("192.168.0.10", p), now=0) for p in range(1000, 1050)} == {
        plain.schedule(ds, pkt("192.168.0.10"), now=0)
    }


# ---------------------------------------------------------------------------------------------
# lblc (§6.11)


def lblc(ds: list[Dest], **kw: Any) -> LocalityBasedLeastConnection[Any]:
    s = make("lblc", ds, **kw)
    assert isinstance(s, LocalityBasedLeastConnection)
    return s


def test_lblc_sticks_to_the_cached_dest() -> None:
    ds = abc(1, 1)
    s = lblc(ds)
    p = pkt(daddr="203.0.113.7")
    assert s.schedule(ds, p, now=0) is ds[0]  # wlc tie => A, cached
    ds[0].activeconns = 1  # wlc now prefers B, the cache keeps A (1 active <= weight 1)
    assert s.schedule(ds, p, now=1) is ds[0]
    assert s.schedule(ds, pkt(daddr="203.0.113.8"), now=1) is ds[1]  # another address: wlc
    assert s.cached(p.daddr) == (ds[0],)


def test_lblc_reschedules_when_the_cached_dest_is_overloaded_by_its_rule() -> None:
    ds = abc(1, 4)
    s = lblc(ds)
    p = pkt(daddr="203.0.113.7")
    assert s.schedule(ds, p, now=0) is ds[0]
    ds[0].activeconns = 2  # > weight 1 ...
    ds[1].activeconns = 2  # ... but nobody below half its weight (2 * 2 < 4 is false)
    assert s.schedule(ds, p, now=0) is ds[0]
    ds[1].activeconns = 1  # B: 1 * 2 < 4 => A counts as overloaded; wlc => B, re-cached
    assert s.schedule(ds, p, now=0) is ds[1]
    assert s.cached(p.daddr) == (ds[1],)


def test_lblc_quiesced_or_removed_cached_dest_is_replaced() -> None:
    ds = abc(1, 1)
    s = lblc(ds)
    p = pkt(daddr="203.0.113.7")
    assert s.schedule(ds, p, now=0) is ds[0]
    ds[0].weight = 0
    s.update_dests(ds)
    assert s.schedule(ds, p, now=0) is ds[1]
    ds[0].weight = 1
    ds[1].activeconns = 5
    s.update_dests(ds[:1])  # B removed: not AVAILABLE any more
    assert s.schedule(ds[:1], p, now=0) is ds[0]


def test_lblc_ignores_the_overload_flag_of_a_cached_dest() -> None:
    # ip_vs_lblc.c checks AVAILABLE, weight and its own overload rule, not the flag.
    ds = abc(1, 1)
    s = lblc(ds)
    p = pkt(daddr="203.0.113.7")
    assert s.schedule(ds, p, now=0) is ds[0]
    ds[0].overloaded = True
    assert s.schedule(ds, p, now=0) is ds[0]
    assert s.schedule(ds, pkt(daddr="203.0.113.9"), now=0) is ds[1]


def test_lblc_expiry_runs_in_the_full_check_every_30_minutes() -> None:
    ds = abc(1, 1)
    s = lblc(ds, lblc_expiration=600.0, now=0.0)
    old, recent = pkt(daddr="203.0.113.1"), pkt(daddr="203.0.113.2")
    s.schedule(ds, old, now=10.0)
    s.schedule(ds, recent, now=1500.0)
    assert s.next_deadline() == 60.0
    s.handle_timer(now=1799.0)  # 29 GC runs, none of them full
    assert s.next_deadline() == 1800.0
    assert s.cached(old.daddr) and s.cached(recent.daddr)
    s.handle_timer(now=1800.0)  # the 30th run is a full check: 1800 >= 10 + 600
    assert not s.cached(old.daddr)
    assert s.cached(recent.daddr)  # 1800 < 1500 + 600
    s.handle_timer(now=3599.0)
    assert s.cached(recent.daddr)
    s.handle_timer(now=3600.0)  # next full check 30 runs later
    assert not s.cached(recent.daddr)
    assert s.entry_count == 0
    assert s.next_deadline() == 3660.0


def test_lblc_default_expiration_is_a_day() -> None:
    ds = abc(1)
    s = lblc(ds)
    p = pkt(daddr="203.0.113.1")
    s.schedule(ds, p, now=0.0)
    s.handle_timer(now=86400.0)  # full checks at 1800 k: the one at 86400 drops it
    assert not s.cached(p.daddr)


def test_lblc_partial_gc_only_above_16_entries_per_bucket() -> None:
    ds = abc(1)
    s = lblc(ds, lblc_tab_bits=4)  # 16 buckets => max_size 256
    for i in range(300):
        s.schedule(ds, pkt(daddr=f"198.18.{i // 250}.{i % 250}"), now=0.0)
    assert s.entry_count == 300
    s.handle_timer(now=300.0)  # 5 runs, entries idle < 6 min: nothing dropped
    assert s.entry_count == 300
    s.handle_timer(now=360.0)  # idle 360 s: goal = (300 - 256) * 4 / 3 = 58, bucket-wise
    assert 58 <= 300 - s.entry_count < 58 + 60
    left = s.entry_count
    s.handle_timer(now=420.0)
    assert s.entry_count <= max(left - 1, 256)


# ---------------------------------------------------------------------------------------------
# lblcr (§6.12)


def lblcr(ds: list[Dest], **kw: Any) -> LocalityBasedLeastConnectionReplication[Any]:
    s = make("lblcr", ds, **kw)
    assert isinstance(s, LocalityBasedLeastConnectionReplication)
    return s


def test_lblcr_replicates_under_load_and_balances_within_the_set() -> None:
    ds = abc(1, 4, 1)
    s = lblcr(ds)
    p = pkt(daddr="203.0.113.7")
    ds[1].activeconns = 100  # B heavily loaded: wlc => A
    assert s.schedule(ds, p, now=0) is ds[0]
    ds[0].activeconns = 2  # A over its weight while C idles (0 * 2 < 1) => replicate via wlc
    ds[1].activeconns = 0
    assert s.schedule(ds, p, now=5) is ds[1]
    assert s.cached(p.daddr) == (ds[1], ds[0])  # newest member first
    ds[1].activeconns = 9  # set_min: A 512/1 vs B 2304/4 => A (still overloaded by rule)
    # A is overloaded again (2 > 1 and C idle) => wlc over the service: C (0)
    assert s.schedule(ds, p, now=6) is ds[2]
    assert s.cached(p.daddr) == (ds[2], ds[1], ds[0])
    ds[0].activeconns = 0
    ds[2].activeconns = 1
    # set_min over C (256/1), B (2304/4), A (0/1) => A; A is not overloaded any more
    assert s.schedule(ds, p, now=7) is ds[0]


def test_lblcr_shrinks_an_unmodified_set_after_expiration() -> None:
    ds = abc(1, 1)
    s = lblcr(ds, lblcr_expiration=100.0)
    p = pkt(daddr="203.0.113.7")
    assert s.schedule(ds, p, now=0) is ds[0]
    ds[0].activeconns = 2
    assert s.schedule(ds, p, now=10) is ds[1]  # B idle: A overloaded => add B (lastmod 10)
    assert len(s.cached(p.daddr)) == 2
    ds[0].activeconns = 1
    assert s.schedule(ds, p, now=110) is ds[1]  # not yet: 110 is not after 10 + 100
    assert len(s.cached(p.daddr)) == 2
    # After expiry the weighted most loaded member (A, 256 vs 0) leaves the set.
    assert s.schedule(ds, p, now=110.5) is ds[1]
    assert s.cached(p.daddr) == (ds[1],)


def test_lblcr_skips_overloaded_and_removed_members() -> None:
    ds = abc(1, 1)
    s = lblcr(ds)
    p = pkt(daddr="203.0.113.7")
    s.schedule(ds, p, now=0)
    ds[0].activeconns = 2
    s.schedule(ds, p, now=0)
    assert s.cached(p.daddr) == (ds[1], ds[0])
    ds[0].activeconns = 0
    ds[1].activeconns = 1
    ds[0].overloaded = True  # flag set: skipped inside the set
    assert s.schedule(ds, p, now=1) is ds[1]
    ds[0].overloaded = False
    s.update_dests([ds[1]])  # A removed: no longer AVAILABLE
    assert s.schedule([ds[1]], p, now=1) is ds[1]


def test_lblcr_gc() -> None:
    ds = abc(1)
    s = lblcr(ds, lblcr_expiration=60.0)
    p = pkt(daddr="203.0.113.7")
    s.schedule(ds, p, now=0.0)
    s.handle_timer(now=1800.0)
    assert not s.cached(p.daddr)


# ---------------------------------------------------------------------------------------------
# fo, ovf, twos (§6.13-§6.15)


def test_fo_highest_weight_first_on_ties() -> None:
    ds = abc(2, 5, 5, 1)
    assert run(make("fo", ds), ds, 2) == "BB"
    ds[1].overloaded = True
    assert run(make("fo", ds), ds, 1) == "C"
    ds[2].weight = 0
    assert run(make("fo", ds), ds, 1) == "A"


def test_ovf_overflows_when_active_exceeds_weight() -> None:
    ds = abc(2, 3, 3)
    s = make("ovf", ds)
    assert run(s, ds, 1) == "B"
    ds[1].activeconns = 3  # == weight: still eligible
    assert run(s, ds, 1) == "B"
    ds[1].activeconns = 4
    assert run(s, ds, 1) == "C"
    ds[2].activeconns = 4
    ds[0].inactconns = 99  # inactive connections do not count
    assert run(s, ds, 1) == "A"
    ds[0].activeconns = 3
    assert run(s, ds, 1) == "-"


class ScriptedRandom(random.Random):
    """A Random whose randrange returns scripted values and records its bounds."""

    def __init__(self, values: list[int]) -> None:
        super().__init__(0)
        self.values = list(values)
        self.bounds: list[int] = []

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        assert stop is None and step == 1
        self.bounds.append(start)
        return self.values.pop(0)


def test_twos_draws_two_weights_inclusive_of_the_total() -> None:
    ds = abc(1, 3, 0)
    rng = ScriptedRandom([0, 4])  # r1 = 0 => A at once; r2 = 4 => 3 after A, 0 after B
    s = make("twos", ds, rng=rng)
    assert s.schedule(ds, PKT, now=0) is ds[0]  # B only if 3 * oh(A) > 1 * oh(B): 0 > 0 no
    assert rng.bounds == [5, 5]  # get_random_u32_below(total + 1), twice
    ds[0].activeconns = 1
    rng.values = [0, 4]
    assert s.schedule(ds, PKT, now=0) is ds[1]  # 3 * 256 > 1 * 0


def test_twos_skips_overloaded_and_fails_when_none() -> None:
    ds = abc(1, 1)
    ds[0].overloaded = True
    rng = ScriptedRandom([1, 1])
    s = make("twos", ds, rng=rng)
    assert s.schedule(ds, PKT, now=0) is ds[1]
    assert rng.bounds == [2, 2]
    ds[1].weight = 0
    assert s.schedule(ds, PKT, now=0) is None
    assert rng.bounds == [2, 2]  # no draw without a candidate


def test_twos_compares_in_32_bit_like_the_kernel() -> None:
    ds = abc(20000, 1)
    # r1 = 0 => choice1 A at once; r2 = 20001 => 1 after A, 0 after B => choice2 B.
    rng = ScriptedRandom([0, 20001, 0, 20001])
    s = make("twos", ds, rng=rng)
    ds[1].activeconns = 100  # w1 * oh2 = 20000 * 25600 = 512_000_000: no wrap
    assert s.schedule(ds, PKT, now=0) is ds[0]  # 1 * 0 > 512e6 is false => A
    ds[1].activeconns = 500  # w1 * oh2 = 2_560_000_000 wraps to -1_734_967_296
    # 1 * 0 > -1_734_967_296 => B, although idle A is the better choice: the kernel's int
    # multiplication overflows here and the model reproduces it.
    assert s.schedule(ds, PKT, now=0) is ds[1]


def test_twos_uses_the_injected_rng_reproducibly() -> None:
    ds = abc(3, 2, 1)
    a = make("twos", ds, rng=random.Random(7))
    b = make("twos", ds, rng=random.Random(7))
    assert run(a, ds, 50) == run(b, ds, 50)
    assert set(run(a, ds, 200)) == {"A", "B", "C"}


# ---------------------------------------------------------------------------------------------
# properties common to all schedulers (§6.0)

dest_strategy = st.lists(
    st.tuples(
        st.integers(0, 5),  # weight
        st.integers(0, 4),  # active
        st.integers(0, 600),  # inactive
        st.booleans(),  # overloaded
    ),
    min_size=0,
    max_size=6,
)

COMPLETE = ("rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "twos", "lblcr")


@settings(max_examples=60, deadline=None)
@given(specs=dest_strategy, client=st.integers(0, 2**32 - 1), sport=st.integers(1, 65535))
def test_never_a_quiesced_or_overloaded_dest(
    specs: list[tuple[int, int, int, bool]], client: int, sport: int
) -> None:
    ds = [
        Dest(f"d{i}", ip_address(f"192.168.7.{i + 1}"), 80, w, a, ia, 0, o)
        for i, (w, a, ia, o) in enumerate(specs)
    ]
    p = SchedPacket(2, 6, IPv4Address(client), sport, IPv4Address(client ^ 0xFF), 80)
    eligible = [d for d in ds if d.weight > 0 and not d.overloaded]
    for name in SCHEDULER_NAMES:
        flags = IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2
        s = make(name, ds, sched_flags=flags, rng=random.Random(client))
        for _ in range(3):
            d = s.schedule(ds, p, now=0.0)
            if d is not None:
                assert d.weight > 0, name
                if name != "lblc":  # a cached lblc dest is not checked for the flag
                    assert not d.overloaded, name
            if name in COMPLETE:
                assert (d is None) == (not eligible), name
            if name in ("sh", "mh"):  # with fallback every available dest is reachable
                assert (d is None) == (not eligible), name


@dataclass(eq=False)
class DestWithLastWeight(Dest):
    last_weight: int = 0


def test_mh_uses_the_engines_last_weight_when_it_has_one() -> None:
    # A service switched to mh after B was quiesced: only the engine knows B's last weight.
    ds = [
        DestWithLastWeight("A", ip_address("10.0.1.1"), weight=1, last_weight=1),
        DestWithLastWeight("B", ip_address("10.0.1.2"), weight=0, last_weight=2),
    ]
    s = make("mh", ds)
    assert isinstance(s, MaglevHashing)
    assert [sum(1 for t in s.table if t is d) for d in ds] == [1365, 2728]  # rounds A B B


def test_dh_removal_and_addition_refill_the_table() -> None:
    a, b, c = ds = abc(1, 1, 1)
    s = make("dh", ds)
    assert isinstance(s, DestinationHashing)
    s.update_dests([a, c])
    assert [t.name for t in s.table[:4] if t] == list("ACAC")
    d = dest("D", "192.168.1.4")
    s.update_dests([d, a, c])  # newest first
    assert [t.name for t in s.table[:4] if t] == list("DACD")
    assert b not in s.table


def test_update_flags_switches_fallback_without_a_rebuild() -> None:
    ds = abc(3, 1, 0)
    s = make("sh", ds)
    assert s.schedule(ds, pkt("10.0.0.1"), now=0) is None  # bucket 39 => C (weight 0)
    s.update_flags(IP_VS_SVC_F_SCHED1)
    assert s.schedule(ds, pkt("10.0.0.1"), now=0) is ds[1]
    m = make("mh", mh_dests(), mh_table_size=7)
    ms = mh_dests()
    m.update_dests(ms)
    ms[1].weight = 0
    m.update_dests(ms)
    assert m.schedule(ms, pkt("192.168.0.10"), now=0) is None
    m.update_flags(IP_VS_SVC_F_SCHED1)
    assert m.schedule(ms, pkt("192.168.0.10"), now=0) is ms[0]
    r = make("rr", ds)
    assert run(r, ds, 1) == "A"
    r.update_flags(IP_VS_SVC_F_SCHED1)  # no effect on rr, and the cursor stays
    assert run(r, ds, 1) == "B"
