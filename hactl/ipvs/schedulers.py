"""IPVS schedulers, decision for decision as the kernel's (spec/ipvs.md §6).

Owns: one scheduler object per virtual service, choosing a destination for a new connection
from the service's destination list. Every scheduler of current kernels is here (rr, wrr, lc,
wlc, sed, nq, sh, dh, mh, lblc, lblcr, fo, ovf, twos) with the kernel's tie-breaks, its
weight-0 / OVERLOAD skipping and its hash functions bit-exact, so that the same table and the
same sequence of clients give the same choices as a kernel director.

Contract with the engine:

* The engine owns the destinations; a destination object satisfies `SchedDest` and its
  `weight`, connection counters and `overloaded` flag are read live at every decision.
* `update_dests(dests)` is called after every add, delete and edit of the service's
  destinations, with the full list in kernel order (newest added first, spec §0). Schedulers
  that keep state (rr cursor, wrr marks, sh/dh/mh tables) derive it there and remember the
  list, because the kernel's "removed entry under the cursor" fix-ups need the previous one.
  Destinations are recognised across calls by (address, port), as the kernel does
  (`ip_vs_find_dest`), so the engine may pass new objects for an edited destination.
* `schedule(dests, pkt, now=...)` must be given the list last passed to `update_dests`.
* `next_deadline()` / `handle_timer(now=...)` drive the lblc/lblcr garbage collection; the
  other schedulers have no timers.

Additions to the agreed interface, all optional and defaulted:
* `make_scheduler(..., now=0.0)`: creation time, from which lblc/lblcr arm their 60 s GC
  timer (the kernel arms it in `init_service`); and the build-time table sizes `sh_tab_bits`
  (CONFIG_IP_VS_SH_TAB_BITS, 8), `mh_table_size` (CONFIG_IP_VS_MH_TAB_INDEX, 4093) and
  `lblc_tab_bits` (CONFIG_IP_VS_LBLC_TAB_BITS / LBLCR_TAB_BITS, 10).
* mh reads an optional integer `last_weight` attribute of a destination (the kernel's
  `dest->last_weight`) when present; see `MaglevHashing`.
* `update_dests` of mh raises ValueError for more destinations than table slots (the kernel
  refuses the add with EINVAL).
* `update_flags(sched_flags)`: a service edit that changes only the flags keeps the
  scheduler and its state (rr cursor, lblc cache...), as in the kernel.
* `set_expiration(lblc_expiration=..., lblcr_expiration=...)`: new values of the sysctls
  of those names, which the kernel reads at every use; lblc and lblcr take theirs, the
  others ignore the call.
* `least_keys(sched, dests)`: lc/wlc/sed/nq restated as per-destination integer keys, for
  the engine's new-connection fast path, which moves them with the counters instead of
  calling `schedule()`; `schedule()` stays the reference the keys are tested against.

Not modelled: the ICMP "inverse" lookups (sh/mh hash the packet's destination address and
port for ICMP errors about outgoing packets); `SchedPacketLike` describes a forward packet.

Pure: no clock, no I/O, no logging; randomness only through the injected `random.Random`.
Imports nothing from hactl but the hashing helpers.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from math import gcd, lcm
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from hactl.ipvs.hashing import MH_HASH1_KEY, MH_HASH2_KEY, fold_addr, hash_32, hsiphash_u32

__all__ = [
    "IP_VS_SVC_F_SCHED1",
    "IP_VS_SVC_F_SCHED2",
    "IP_VS_SVC_F_SCHED3",
    "MH_DEFAULT_TABLE_SIZE",
    "MH_PRIMES",
    "SCHEDULER_NAMES",
    "DestinationHashing",
    "LeastConnection",
    "LeastKeys",
    "LocalityBasedLeastConnection",
    "LocalityBasedLeastConnectionReplication",
    "MaglevHashing",
    "NeverQueue",
    "PowerOfTwoChoices",
    "RoundRobin",
    "SchedDest",
    "SchedPacket",
    "SchedPacketLike",
    "Scheduler",
    "ShortestExpectedDelay",
    "SourceHashing",
    "WeightedFailover",
    "WeightedLeastConnection",
    "WeightedOverflow",
    "WeightedRoundRobin",
    "has_least_keys",
    "least_keys",
    "make_scheduler",
]

# Service flags handed to the schedulers (spec §0.1).
IP_VS_SVC_F_SCHED1 = 0x0008  # sh-fallback / mh-fallback
IP_VS_SVC_F_SCHED2 = 0x0010  # sh-port / mh-port
IP_VS_SVC_F_SCHED3 = 0x0020


class SchedDest(Protocol):
    """What a scheduler reads of a destination (the engine's runtime destination)."""

    addr: IPv4Address | IPv6Address
    port: int
    weight: int  # current weight; 0 = quiesced
    activeconns: int
    inactconns: int
    persistconns: int

    @property
    def overloaded(self) -> bool:
        """IP_VS_DEST_F_OVERLOAD (spec §6.1)."""
        ...


D = TypeVar("D", bound=SchedDest)


class SchedPacketLike(Protocol):
    """What a scheduler reads of the packet being scheduled (host-order ports).

    Read-only attributes, so that the engine's per-packet named tuple satisfies it as it is
    (no copy into another object per new connection); `SchedPacket` is a plain
    implementation for callers that have no packet object of their own.
    """

    @property
    def family(self) -> int: ...
    @property
    def protocol(self) -> int: ...
    @property
    def saddr(self) -> IPv4Address | IPv6Address: ...
    @property
    def sport(self) -> int: ...
    @property
    def daddr(self) -> IPv4Address | IPv6Address: ...
    @property
    def dport(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SchedPacket:
    """The header fields of the packet being scheduled (host-order ports).

    A convenience implementation of `SchedPacketLike` (tests, benchmarks, proxies).
    """

    family: int
    protocol: int
    saddr: IPv4Address | IPv6Address
    sport: int
    daddr: IPv4Address | IPv6Address
    dport: int


def _overhead(dest: SchedDest) -> int:
    """`ip_vs_dest_conn_overhead`: active connections weigh 256 inactive ones (spec §6.0).

    The hot loops of wlc and friends inline the expression.
    """
    return (dest.activeconns << 8) + dest.inactconns


class Scheduler(ABC, Generic[D]):
    """One scheduler instance per virtual service (spec §6.16 lists the state each keeps)."""

    name: ClassVar[str]
    __slots__ = ()

    def update_dests(self, dests: Sequence[D]) -> None:
        """Take note of the service's destination list after an add, delete or edit.

        Args:
            dests: every destination of the service, newest added first (kernel order).
        """

    @abstractmethod
    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        """Choose the destination of a new connection.

        Args:
            dests: the list last given to `update_dests`.
            pkt: the packet that opens the connection.
            now: monotonic seconds (used by lblc/lblcr for their cache).

        Returns:
            The chosen destination, or None when none is available ("no destination
            available", spec §6.0: the engine then applies `ip_vs_leave`).
        """

    def update_flags(self, sched_flags: int) -> None:
        """Take new service flags, keeping all other state.

        For `ipvsadm -E` without a scheduler change: the kernel keeps the scheduler, whose
        decisions read `svc->flags` each time (only sh and mh look at them).
        """

    def set_expiration(self, *, lblc_expiration: float, lblcr_expiration: float) -> None:
        """Take new values of the `lblc_expiration` / `lblcr_expiration` sysctls (seconds).

        The kernel reads them at every use, so they apply from the next decision or GC run
        on; the cache itself is kept. Only lblc and lblcr use them.
        """

    def next_deadline(self) -> float | None:
        """When `handle_timer` must next run; None if the scheduler has no timer."""
        return None

    def handle_timer(self, *, now: float) -> None:
        """Run timer work that is due (lblc/lblcr cache expiry)."""


# --------------------------------------------------------------------------------------------
# rr (spec §6.2, ip_vs_rr.c)


class RoundRobin(Scheduler[D]):
    """Round robin with the kernel's cursor: the list head or the last chosen destination."""

    name = "rr"
    __slots__ = ("_cursor", "_dests")

    def __init__(self) -> None:
        # -1 is the list head; otherwise the index of the last chosen destination.
        self._cursor = -1
        self._dests: list[D] = []

    def update_dests(self, dests: Sequence[D]) -> None:
        old = self._dests
        self._dests = list(dests)  # a copy, not keys: loading N servers stays linear
        if self._cursor < 0 or self._cursor >= len(old):
            self._cursor = -1
            return
        # ip_vs_rr_del_dest: removing the entry under the cursor moves the cursor to the
        # previous entry (or to the head). Several removals at once are treated as the same
        # number of single removals, so walk back to the nearest entry still present.
        position = {(d.addr, d.port): i for i, d in enumerate(dests)}
        i = self._cursor
        while i >= 0 and (old[i].addr, old[i].port) not in position:
            i -= 1
        self._cursor = position[(old[i].addr, old[i].port)] if i >= 0 else -1

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        n = len(dests)
        start = self._cursor + 1 if self._cursor < n else 0
        # Walk forward from the entry after the cursor, wrap past the head, and end with the
        # cursor entry itself.
        for i in range(start, n):
            d = dests[i]
            if d.weight > 0 and not d.overloaded:
                self._cursor = i
                return d
        for i in range(0, min(start, n)):
            d = dests[i]
            if d.weight > 0 and not d.overloaded:
                self._cursor = i
                return d
        return None


# --------------------------------------------------------------------------------------------
# wlc (spec §6.5, ip_vs_wlc.c)


class WeightedLeastConnection(Scheduler[D]):
    """Least `overhead / weight`, compared by strict cross-multiplication; ties keep list order."""

    name = "wlc"
    __slots__ = ()

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        return _least_weighted_overhead(dests)


def _least_weighted_overhead(dests: Sequence[D]) -> D | None:
    """ip_vs_wlc_schedule's walk, which lblc and lblcr also run over the whole service.

    sed keeps its own copy of the walk: its overhead is a different expression, and this loop
    is hot enough that the overhead stays inline rather than becoming a call per destination.
    The two stages are the kernel's: the first available destination, then `nextstage` over
    the rest (no "found one yet?" test per destination).
    """
    it = iter(dests)
    for least in it:
        lw = least.weight
        if lw > 0 and not least.overloaded:
            loh = (least.activeconns << 8) + least.inactconns
            break
    else:
        return None
    for d in it:
        if d.overloaded:
            continue
        # Later weight-0 destinations are not skipped by the kernel but never win:
        # loh * 0 > doh * lw is false.
        doh = (d.activeconns << 8) + d.inactconns
        if loh * d.weight > doh * lw:
            least, loh, lw = d, doh, d.weight
    return least


# --------------------------------------------------------------------------------------------
# wrr (spec §6.3, ip_vs_wrr.c)


class WeightedRoundRobin(Scheduler[D]):
    """Weighted round robin: passes at decreasing weight levels `cw`, stepping by the gcd.

    The kernel shifts the levels down by (gcd - 1) so that the last pass is at 1; the
    sequence is the classic one (weights 4, 3, 2 give A A B A B C A B C).
    """

    name = "wrr"
    __slots__ = ("_cl", "_cw", "_di", "_mw")

    def __init__(self) -> None:
        self._cl = -1  # cursor: -1 = list head, else index of the last chosen destination
        self._di = 1  # gcd of the positive weights
        self._mw = 0  # max weight - (di - 1)
        self._cw = 0  # current weight level
        # ip_vs_wrr_init_svc on an empty service: di 1, mw 0, cw mw.

    def update_dests(self, dests: Sequence[D]) -> None:
        # ip_vs_wrr_dest_changed (add, del and upd_dest alike): cursor back to the head,
        # recompute di and mw, and bring cw into range.
        g = 0
        top = 0
        for d in dests:
            w = d.weight
            if w > 0:
                g = gcd(w, g) if g > 0 else w
            top = max(top, w)
        self._cl = -1
        self._di = g or 1
        self._mw = top - (self._di - 1)
        if self._cw > self._mw or self._cw == 0:
            self._cw = self._mw
        elif self._di > 1:
            self._cw = (self._cw // self._di) * self._di + 1

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        if self._mw == 0:
            return None
        n = len(dests)
        last = self._cl
        pos = last
        stop = -2  # index at which a last pass ends ("stop" in the kernel); -2 = none
        last_pass = restarted = False
        cw, di = self._cw, self._di
        while True:
            for i in range(pos + 1, n):
                d = dests[i]
                if not d.overloaded and d.weight >= cw:
                    self._cl, self._cw = i, cw
                    return d
                if i == stop:
                    # Every destination has now been tried at level 1: all overloaded.
                    self._cl, self._cw = i, cw
                    return None
            pos = -1  # wrapped past the list head
            cw -= di
            if cw <= 0:
                cw = self._mw
                if last_pass or last == -1:
                    self._cl, self._cw = -1, cw
                    return None
                restarted = True
            last_pass = cw <= di
            if last_pass and restarted and last != -1:
                # The first walk at level 1 covered only the entries after `last`; finish
                # with the entries up to and including it.
                stop = last


# --------------------------------------------------------------------------------------------
# lc, sed, nq (spec §6.4, §6.6, §6.7)


class LeastConnection(Scheduler[D]):
    """Least overhead among non-quiesced, non-overloaded destinations; weights ignored."""

    name = "lc"
    __slots__ = ()

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        # ip_vs_lc.c skips weight == 0 only (a negative weight cannot be configured). Two
        # stages as in wlc: the first candidate, then the rest without a "found yet?" test.
        it = iter(dests)
        for least in it:
            if least.weight and not least.overloaded:
                loh = (least.activeconns << 8) + least.inactconns
                break
        else:
            return None
        for d in it:
            if d.overloaded or d.weight == 0:
                continue
            doh = (d.activeconns << 8) + d.inactconns
            if doh < loh:
                least, loh = d, doh
        return least


class ShortestExpectedDelay(Scheduler[D]):
    """wlc's rule with overhead `activeconns + 1` (inactive connections ignored)."""

    name = "sed"
    __slots__ = ()

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        # ip_vs_sed_schedule's two stages, as in _least_weighted_overhead.
        it = iter(dests)
        for least in it:
            lw = least.weight
            if lw > 0 and not least.overloaded:
                loh = least.activeconns + 1
                break
        else:
            return None
        for d in it:
            if d.overloaded:
                continue
            doh = d.activeconns + 1
            if loh * d.weight > doh * lw:
                least, loh, lw = d, doh, d.weight
        return least


class NeverQueue(Scheduler[D]):
    """The first idle destination in list order, else sed's choice."""

    name = "nq"
    __slots__ = ()

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        # ip_vs_nq_schedule in two stages: the first candidate, then the rest (as in wlc).
        it = iter(dests)
        for least in it:
            lw = least.weight
            if lw and not least.overloaded:
                loh = least.activeconns
                if loh == 0:
                    return least  # idle: taken at once
                loh += 1
                break
        else:
            return None
        for d in it:
            w = d.weight
            if w == 0 or d.overloaded:
                continue
            doh = d.activeconns
            if doh == 0:
                return d
            doh += 1
            if loh * w > doh * lw:
                least, loh, lw = d, doh, w
        return least


@dataclass(frozen=True, slots=True)
class LeastKeys(Generic[D]):
    """lc, wlc, sed and nq restated as "the first candidate of least key" (see `least_keys`).

    The key of `dests[i]` is `activeconns * act[i] + inactconns * inact[i] + base[i]`. With
    `idle`, an idle candidate (activeconns == 0, i.e. key == base[i]) wins first (nq).
    """

    dests: tuple[D, ...]
    act: tuple[int, ...]
    inact: tuple[int, ...]
    base: tuple[int, ...]
    idle: bool


def has_least_keys(sched: Scheduler[Any]) -> bool:
    """Whether `least_keys` can restate this scheduler (lc, wlc, sed, nq)."""
    return type(sched) in _LEAST_KINDS


def least_keys(sched: Scheduler[D], dests: Sequence[D]) -> LeastKeys[D] | None:
    """lc/wlc/sed/nq as integer keys, for a caller that keeps them up to date (the engine).

    ip_vs_lc_schedule, ip_vs_wlc_schedule, ip_vs_sed_schedule and ip_vs_nq_schedule take the
    first destination, in list order, of least overhead (lc) or overhead / weight (the
    others, compared by strict cross-multiplication) among those neither overloaded nor of
    weight 0; a later weight-0 destination enters the comparison but never wins it
    (`loh * 0 > doh * lw` is false). With L the lcm of the candidates' weights, overhead *
    (L // weight) orders them exactly as the cross-multiplication does, and ties keep the
    earlier one; so the choice is the first index of the least key. The keys are linear in
    the two counters, so a caller can move them by `act` / `inact` as the counters change
    instead of recomputing them at each decision.

    Valid while the weights are those of `dests` now and no destination is overloaded (the
    caller re-derives the keys at every `update_dests` and does not use them while an upper
    threshold makes OVERLOAD possible).

    Returns:
        None for any other scheduler.
    """
    kind = type(sched)
    if kind not in _LEAST_KINDS:
        return None
    cands = tuple(d for d in dests if d.weight > 0)
    if kind is LeastConnection:
        ones = (1,) * len(cands)
        return LeastKeys(cands, (256,) * len(cands), ones, (0,) * len(cands), False)
    top = lcm(*(d.weight for d in cands)) if cands else 1
    mult = tuple(top // d.weight for d in cands)
    if kind is WeightedLeastConnection:
        # ip_vs_dest_conn_overhead: activeconns * 256 + inactconns.
        return LeastKeys(cands, tuple(m << 8 for m in mult), mult, (0,) * len(cands), False)
    # sed and nq: overhead activeconns + 1.
    return LeastKeys(cands, mult, (0,) * len(cands), mult, kind is NeverQueue)


_LEAST_KINDS: frozenset[type[Scheduler[Any]]] = frozenset(
    (LeastConnection, WeightedLeastConnection, ShortestExpectedDelay, NeverQueue)
)


# --------------------------------------------------------------------------------------------
# fo, ovf, twos (spec §6.13-§6.15)


class WeightedFailover(Scheduler[D]):
    """The non-overloaded destination of highest weight; ties keep list order."""

    name = "fo"
    __slots__ = ()

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        best: D | None = None
        hw = 0
        for d in dests:
            if not d.overloaded and d.weight > hw:
                best, hw = d, d.weight
        return best


class WeightedOverflow(Scheduler[D]):
    """Highest weight among destinations whose active connections do not exceed it."""

    name = "ovf"
    __slots__ = ()

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        best: D | None = None
        hw = 0
        for d in dests:
            w = d.weight
            if d.overloaded or d.activeconns > w or w == 0:
                continue
            if best is None or w > hw:
                best, hw = d, w
        return best


def _s32(value: int) -> int:
    """Wrap to a signed 32-bit int, as the kernel's int arithmetic does (-fno-strict-overflow)."""
    value &= 0xFFFFFFFF
    return value - 0x100000000 if value & 0x80000000 else value


class PowerOfTwoChoices(Scheduler[D]):
    """Two weighted random picks; the less loaded (by wlc's measure) wins, ties to the first."""

    name = "twos"
    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        total = 0
        for d in dests:
            if not d.overloaded and d.weight > 0:
                total += d.weight
        if total == 0:
            return None
        # get_random_u32_below(total + 1), twice, in this order: both draws are in [0, total].
        r1 = self._rng.randrange(total + 1)
        r2 = self._rng.randrange(total + 1)
        choice1: D | None = None
        choice2: D | None = None
        w1 = w2 = -1
        oh1 = oh2 = 0
        for d in dests:
            if d.overloaded:
                continue
            w = d.weight
            if w <= 0:
                continue
            r1 -= w
            r2 -= w
            if r1 <= 0 and w1 == -1:
                choice1, w1, oh1 = d, w, _overhead(d)
            if r2 <= 0 and w2 == -1:
                choice2, w2, oh2 = d, w, _overhead(d)
            if w1 != -1 and w2 != -1:
                break
        # ip_vs_twos.c multiplies plain ints here (no 64-bit cast, unlike wlc).
        if choice2 is not None and _s32(w2 * oh1) > _s32(w1 * oh2):
            return choice2
        return choice1


# --------------------------------------------------------------------------------------------
# sh, dh (spec §6.8, §6.9)

_HASHED_PORT_PROTOCOLS = frozenset({6, 17, 132})  # TCP, UDP, SCTP: ip_vs_sh_get_port()


def _available(dest: SchedDest) -> bool:
    return dest.weight > 0 and not dest.overloaded


class SourceHashing(Scheduler[D]):
    """A 2^bits bucket table filled by weight, indexed by hash_32 of the client address."""

    name = "sh"
    __slots__ = ("_bits", "_fallback", "_mask", "_port", "_table")

    def __init__(self, *, sched_flags: int, tab_bits: int = 8) -> None:
        if not 4 <= tab_bits <= 20:
            raise ValueError(f"sh table bits must be in 4..20, not {tab_bits}")
        self._bits = tab_bits
        self._mask = (1 << tab_bits) - 1
        self._fallback = self._port = False
        self.update_flags(sched_flags)
        self._table: list[D | None] = [None] * (1 << tab_bits)

    def update_flags(self, sched_flags: int) -> None:
        self._fallback = bool(sched_flags & IP_VS_SVC_F_SCHED1)  # sh-fallback
        self._port = bool(sched_flags & IP_VS_SVC_F_SCHED2)  # sh-port

    @property
    def table(self) -> tuple[D | None, ...]:
        """The bucket table, for inspection."""
        return tuple(self._table)

    def update_dests(self, dests: Sequence[D]) -> None:
        # ip_vs_sh_reassign: walk the list cyclically; each destination takes max(1, weight)
        # consecutive buckets (the counter test `++count >= weight` moves on after one bucket
        # for weight 0).
        size = self._mask + 1
        if not dests:
            self._table = [None] * size
            return
        table: list[D | None] = []
        n = len(dests)
        i = count = 0
        while len(table) < size:
            d = dests[i]
            table.append(d)
            count += 1
            if count >= d.weight:
                i = (i + 1) % n
                count = 0
        self._table = table

    def _key(self, pkt: SchedPacketLike) -> int:
        port = pkt.sport if self._port and pkt.protocol in _HASHED_PORT_PROTOCOLS else 0
        return (port + fold_addr(pkt.saddr)) & 0xFFFFFFFF

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        h = hash_32(self._key(pkt), self._bits)
        dest = self._table[h & self._mask]
        if dest is None:
            return None
        if _available(dest):
            return dest
        if not self._fallback:
            return None
        # ip_vs_sh_get_fallback: for offset 0..size-1, roffset = (offset + ihash) mod size and
        # the probe is bucket (roffset + ihash) & mask, i.e. (2 * ihash + offset) & mask.
        size = self._mask + 1
        for offset in range(size):
            roffset = (offset + h) % size
            dest = self._table[(roffset + h) & self._mask]
            if dest is None:
                return None
            if _available(dest):
                return dest
        return None


class DestinationHashing(Scheduler[D]):
    """256 buckets, one per destination cyclically, indexed by hash_32 of the packet's daddr."""

    name = "dh"
    __slots__ = ("_bits", "_table")

    def __init__(self, *, tab_bits: int = 8) -> None:
        self._bits = tab_bits
        self._table: list[D | None] = [None] * (1 << tab_bits)

    @property
    def table(self) -> tuple[D | None, ...]:
        """The bucket table, for inspection."""
        return tuple(self._table)

    def update_dests(self, dests: Sequence[D]) -> None:
        # ip_vs_dh_reassign runs on add and delete only, but the fill ignores weights, so
        # rebuilding after an edit gives the same table.
        size = 1 << self._bits
        n = len(dests)
        self._table = [dests[i % n] for i in range(size)] if n else [None] * size

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        dest = self._table[hash_32(fold_addr(pkt.daddr), self._bits)]
        # The kernel also requires IP_VS_DEST_F_AVAILABLE, which every listed dest has: the
        # table is refilled when one is removed.
        if dest is None or not _available(dest):
            return None
        return dest


# --------------------------------------------------------------------------------------------
# mh (spec §6.10, ip_vs_mh.c)

MH_PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
MH_DEFAULT_TABLE_SIZE = 4093  # CONFIG_IP_VS_MH_TAB_INDEX 12 => primes[12 - 8]

_MH_HASH_CACHE = 65536  # lookup keys whose slot number mh remembers

_Key = tuple[IPv4Address | IPv6Address, int]


class MaglevHashing(Scheduler[D]):
    """Maglev consistent hashing over an M-slot table (M = 4093 by default).

    Weights enter through each destination's `last_weight` (its latest non-zero weight, or
    its weight when added). A destination object with an integer `last_weight` attribute
    supplies it; otherwise this scheduler tracks it from the successive `update_dests` calls
    as `__ip_vs_update_dest` maintains it, which is exact when the scheduler has seen every
    change since the destination was added (not after `ipvsadm -E -s mh` on a service whose
    destinations were quiesced earlier: only the engine knows their history).
    """

    name = "mh"
    __slots__ = (
        "_fallback",
        "_last_weight",
        "_port",
        "_size",
        "_slots",
        "_tab_bits",
        "_table",
    )

    def __init__(self, *, sched_flags: int, table_size: int = MH_DEFAULT_TABLE_SIZE) -> None:
        if table_size < 2:
            raise ValueError(f"mh table size must be a prime >= 2, not {table_size}")
        self._size = table_size
        # IP_VS_MH_TAB_BITS = CONFIG_IP_VS_MH_TAB_INDEX / 2; for a size outside the kernel's
        # list (small tables in tests) the default index 12 is assumed.
        index = MH_PRIMES.index(table_size) + 8 if table_size in MH_PRIMES else 12
        self._tab_bits = index // 2
        self._fallback = self._port = False
        self.update_flags(sched_flags)
        self._table: list[D | None] = [None] * table_size
        self._last_weight: dict[_Key, int] = {}
        self._slots: dict[int, int] = {}  # lookup key -> slot, see _hash

    def update_flags(self, sched_flags: int) -> None:
        self._fallback = bool(sched_flags & IP_VS_SVC_F_SCHED1)  # mh-fallback
        self._port = bool(sched_flags & IP_VS_SVC_F_SCHED2)  # mh-port

    @property
    def table(self) -> tuple[D | None, ...]:
        """The lookup table, for inspection."""
        return tuple(self._table)

    def update_dests(self, dests: Sequence[D]) -> None:
        """Recompute last weights and rebuild the table (ip_vs_mh_dest_changed).

        Raises:
            ValueError: more destinations than table slots (the kernel refuses with EINVAL);
                the previous table is kept.
        """
        if len(dests) > self._size:
            raise ValueError(
                f"mh: {len(dests)} destinations do not fit a table of {self._size} slots"
            )
        last: dict[_Key, int] = {}
        for d in dests:
            key = (d.addr, d.port)
            kept = getattr(d, "last_weight", None)
            if isinstance(kept, int):
                # The engine keeps the kernel's dest->last_weight itself: use it.
                last[key] = kept
                continue
            previous = self._last_weight.get(key)
            # __ip_vs_update_dest: last_weight := weight on add, or on an edit to non-zero.
            last[key] = d.weight if previous is None or d.weight != 0 else previous
        self._last_weight = last
        self._table = self._populate(dests, [last[(d.addr, d.port)] for d in dests])

    def _populate(self, dests: Sequence[D], weights: list[int]) -> list[D | None]:
        size = self._size
        g = 0
        for w in weights:
            if w > 0:
                g = gcd(w, g) if g > 0 else w
        if g < 1:
            return [None] * size
        # ip_vs_mh_shift_weight: keep weight / gcd within IP_VS_MH_TAB_BITS bits.
        rshift = max(0, (max(weights) // g).bit_length() - self._tab_bits)
        # ip_vs_mh_permutate: each destination's (offset, skip) and number of turns.
        perm: list[int] = []
        skip: list[int] = []
        turns: list[int] = []
        for d, w in zip(dests, weights, strict=True):
            key = (d.port + fold_addr(d.addr)) & 0xFFFFFFFF
            perm.append(hsiphash_u32(MH_HASH1_KEY, key) % size)
            skip.append(hsiphash_u32(MH_HASH2_KEY, key) % (size - 1) + 1)
            t = (w // g) >> rshift
            turns.append(t if t else int(w != 0))
        # ip_vs_mh_populate: round after round over the list; a destination with t turns claims
        # t consecutive slots, each the next free one along its permutation.
        table: list[D | None] = [None] * size
        taken = bytearray(size)
        filled = 0
        n = len(dests)
        while True:
            for i in range(n):
                for _ in range(turns[i]):
                    c = perm[i]
                    while taken[c]:
                        c += skip[i]
                        if c >= size:
                            c -= size
                    perm[i] = c
                    taken[c] = 1
                    table[c] = dests[i]
                    filled += 1
                    if filled == size:
                        return table

    def _hash(self, value: int) -> int:
        value &= 0xFFFFFFFF
        slot = self._slots.get(value)
        if slot is None:
            # SipHash in Python costs microseconds; clients repeat, so remember a bounded
            # number of results (the table changes, the hash of a key never does).
            if len(self._slots) >= _MH_HASH_CACHE:
                self._slots.clear()
            slot = self._slots[value] = hsiphash_u32(MH_HASH1_KEY, value) % self._size
        return slot

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        port = pkt.sport if self._port and pkt.protocol in _HASHED_PORT_PROTOCOLS else 0
        base = port + fold_addr(pkt.saddr)
        ihash = self._hash(base)
        dest = self._table[ihash]
        if dest is None:
            return None
        if _available(dest):
            return dest
        if not self._fallback:
            return None
        # ip_vs_mh_get_fallback: re-hash with roffset = (offset + ihash) mod M added to the key.
        size = self._size
        for offset in range(size):
            roffset = (offset + ihash) % size
            dest = self._table[self._hash(roffset + base)]
            if dest is None:
                return None
            if _available(dest):
                return dest
        return None


# --------------------------------------------------------------------------------------------
# lblc, lblcr (spec §6.11, §6.12)

_CHECK_EXPIRE_INTERVAL = 60.0  # CHECK_EXPIRE_INTERVAL: the GC timer period
_ENTRY_TIMEOUT = 360.0  # ENTRY_TIMEOUT: idle time after which the partial GC may drop an entry
_COUNT_FOR_FULL_EXPIRATION = 30  # every 30th GC run is a full expiry scan


class _LblcEntry(Generic[D]):
    """A cache entry: destination address -> one destination (lblc) or a set (lblcr)."""

    __slots__ = ("addr", "dests", "lastmod", "lastuse")

    def __init__(self, addr: IPv4Address | IPv6Address, dest: D, now: float) -> None:
        self.addr = addr
        # lblc keeps exactly one destination; lblcr keeps a set, newest inserted first.
        self.dests: list[D] = [dest]
        self.lastuse = now
        self.lastmod = now


class _LocalityBased(Scheduler[D]):
    """The cache, its hash table and its garbage collection, shared by lblc and lblcr.

    The table has 2^bits buckets indexed by hash_32 of the folded address; each bucket holds
    its entries newest first (hlist_add_head). Cached destinations are the objects the engine
    passed; one that has since been removed from the service is "not AVAILABLE" (it sits in
    the kernel's trash) until a destination with the same address and port is listed again.
    """

    __slots__ = (
        "_buckets",
        "_counter",
        "_current",
        "_entries",
        "_expiration",
        "_mask",
        "_max_size",
        "_next_gc",
        "_rover",
        "_tab_bits",
    )

    def __init__(self, *, expiration: float, tab_bits: int, now: float) -> None:
        self._tab_bits = tab_bits
        self._mask = (1 << tab_bits) - 1
        self._buckets: list[list[_LblcEntry[D]]] = [[] for _ in range(1 << tab_bits)]
        # The kernel's entry counter; see _replace for why it may exceed the real count.
        self._entries = 0
        self._max_size = 16 << tab_bits
        self._rover = 0
        self._counter = 1
        self._expiration = expiration
        self._next_gc = now + _CHECK_EXPIRE_INTERVAL
        self._current: dict[_Key, D] = {}

    # -- cache table ---------------------------------------------------------------------------

    def _bucket(self, addr: IPv4Address | IPv6Address) -> list[_LblcEntry[D]]:
        return self._buckets[hash_32(fold_addr(addr), self._tab_bits)]

    def _get(self, addr: IPv4Address | IPv6Address) -> _LblcEntry[D] | None:
        for entry in self._bucket(addr):
            if entry.addr == addr:
                return entry
        return None

    def _add(self, entry: _LblcEntry[D]) -> None:
        self._bucket(entry.addr).insert(0, entry)
        self._entries += 1

    def cached(self, addr: IPv4Address | IPv6Address) -> tuple[D, ...]:
        """The destinations cached for a destination address (empty if none), for inspection."""
        entry = self._get(addr)
        return tuple(entry.dests) if entry is not None else ()

    @property
    def entry_count(self) -> int:
        """Number of cache entries actually held."""
        return sum(len(b) for b in self._buckets)

    # -- destinations --------------------------------------------------------------------------

    def update_dests(self, dests: Sequence[D]) -> None:
        self._current = {(d.addr, d.port): d for d in dests}

    def _live(self, dest: D) -> tuple[D, bool]:
        """The current object for a cached destination and whether it is AVAILABLE."""
        current = self._current.get((dest.addr, dest.port))
        return (current, True) if current is not None else (dest, False)

    @staticmethod
    def _same(a: SchedDest, b: SchedDest) -> bool:
        return a is b or (a.addr == b.addr and a.port == b.port)

    @staticmethod
    def _is_overloaded(dest: SchedDest, dests: Sequence[D]) -> bool:
        # Not the OVERLOAD flag: more active connections than weight while some destination
        # of the service runs below half of its weight.
        if dest.activeconns > dest.weight:
            return any(d.activeconns * 2 < d.weight for d in dests)
        return False

    # -- garbage collection --------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._next_gc

    def handle_timer(self, *, now: float) -> None:
        """Run every GC pass that is due (ip_vs_lblc_check_expire, every 60 s)."""
        while now >= self._next_gc:
            self._check_expire(self._next_gc)
            self._next_gc += _CHECK_EXPIRE_INTERVAL

    def _check_expire(self, now: float) -> None:
        size = self._mask + 1
        if self._counter % _COUNT_FOR_FULL_EXPIRATION == 0:
            # Full check: drop every entry unused for the expiration sysctl.
            j = self._rover
            for _ in range(size):
                j = (j + 1) & self._mask
                bucket = self._buckets[j]
                keep = [e for e in bucket if now < e.lastuse + self._expiration]
                self._entries -= len(bucket) - len(keep)
                self._buckets[j] = keep
            self._rover = j
            self._counter = 1
            return
        if self._entries <= self._max_size:
            self._counter += 1
            return
        # Partial GC: only while over 16 entries per bucket, drop entries idle for 6 minutes,
        # bucket by bucket from the rover, until `goal` entries are gone.
        goal = (self._entries - self._max_size) * 4 // 3
        goal = min(goal, self._max_size // 2)
        j = self._rover
        for _ in range(size):
            j = (j + 1) & self._mask
            bucket = self._buckets[j]
            keep = [e for e in bucket if now < e.lastuse + _ENTRY_TIMEOUT]
            dropped = len(bucket) - len(keep)
            self._buckets[j] = keep
            self._entries -= dropped
            goal -= dropped
            if goal <= 0:
                break
        self._rover = j


class LocalityBasedLeastConnection(_LocalityBased[D]):
    """lblc: remember the server chosen for each destination address (web-cache clusters)."""

    name = "lblc"
    __slots__ = ()

    def set_expiration(self, *, lblc_expiration: float, lblcr_expiration: float) -> None:
        self._expiration = lblc_expiration

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        entry = self._get(pkt.daddr)
        if entry is not None:
            entry.lastuse = now
            dest, available = self._live(entry.dests[0])
            # The OVERLOAD flag is not consulted for a cached destination (ip_vs_lblc.c).
            if available and dest.weight > 0 and not self._is_overloaded(dest, dests):
                return dest
        chosen = _least_weighted_overhead(dests)
        if chosen is None:
            return None
        if entry is not None:
            if self._same(entry.dests[0], chosen):
                return chosen
            # ip_vs_lblc_new replaces the entry: it unlinks the old one without decrementing
            # the entry counter and then counts the new one, so the kernel's counter drifts
            # upwards (it only matters for when the partial GC starts); kept as is.
            self._bucket(entry.addr).remove(entry)
        self._add(_LblcEntry(pkt.daddr, chosen, now))
        return chosen


class LocalityBasedLeastConnectionReplication(_LocalityBased[D]):
    """lblcr: like lblc with a set of servers per address that grows under load and shrinks."""

    name = "lblcr"
    __slots__ = ()

    def set_expiration(self, *, lblc_expiration: float, lblcr_expiration: float) -> None:
        self._expiration = lblcr_expiration

    def _set_min(self, entry: _LblcEntry[D]) -> D | None:
        # ip_vs_dest_set_min: the first non-overloaded, available, weight > 0 member, then the
        # wlc rule over the later non-overloaded available members.
        least: D | None = None
        loh = lw = 0
        for member in entry.dests:
            d, available = self._live(member)
            if d.overloaded:
                continue
            if least is None:
                if d.weight > 0 and available:
                    least, loh, lw = d, _overhead(d), d.weight
                continue
            doh = _overhead(d)
            if loh * d.weight > doh * lw and available:
                least, loh, lw = d, doh, d.weight
        return least

    def _set_max(self, entry: _LblcEntry[D]) -> D | None:
        # ip_vs_dest_set_max: the weighted most loaded member with weight > 0.
        most: D | None = None
        moh = mw = 0
        for member in entry.dests:
            d, _available = self._live(member)
            if most is None:
                if d.weight > 0:
                    most, moh, mw = member, _overhead(d), d.weight
                continue
            doh = _overhead(d)
            if moh * d.weight < doh * mw and d.weight > 0:
                most, moh, mw = member, doh, d.weight
        return most

    def _insert(self, entry: _LblcEntry[D], dest: D, now: float) -> None:
        # ip_vs_dest_set_insert with check: no change (and no lastmod update) if present.
        if any(self._same(m, dest) for m in entry.dests):
            return
        entry.dests.insert(0, dest)
        entry.lastmod = now

    def schedule(self, dests: Sequence[D], pkt: SchedPacketLike, *, now: float) -> D | None:
        entry = self._get(pkt.daddr)
        if entry is None:
            chosen = _least_weighted_overhead(dests)
            if chosen is not None:
                self._add(_LblcEntry(pkt.daddr, chosen, now))
            return chosen
        entry.lastuse = now
        dest = self._set_min(entry)
        # Replication shrinks: a set not modified for lblcr_expiration loses its weighted
        # most loaded member (which may be the one just chosen; the kernel still returns it).
        if len(entry.dests) > 1 and now > entry.lastmod + self._expiration:
            most = self._set_max(entry)
            if most is not None:
                entry.dests.remove(most)
                entry.lastmod = now
        if dest is not None and not self._is_overloaded(dest, dests):
            return dest
        chosen = _least_weighted_overhead(dests)
        if chosen is None:
            return None
        self._insert(entry, chosen, now)
        return chosen


# --------------------------------------------------------------------------------------------
# Registry


SCHEDULER_NAMES: tuple[str, ...] = (
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
)


def make_scheduler(
    name: str,
    *,
    sched_flags: int,
    rng: random.Random,
    lblc_expiration: float = 86400.0,
    lblcr_expiration: float = 86400.0,
    now: float = 0.0,
    sh_tab_bits: int = 8,
    mh_table_size: int = MH_DEFAULT_TABLE_SIZE,
    lblc_tab_bits: int = 10,
) -> Scheduler[Any]:
    """Create the scheduler `name` for one service (`ip_vs_bind_scheduler` + `init_service`).

    Args:
        name: kernel scheduler name (`ipvsadm -s`), one of SCHEDULER_NAMES.
        sched_flags: the service flags; IP_VS_SVC_F_SCHED1/2 are sh-fallback/sh-port for sh
            and mh-fallback/mh-port for mh, and are ignored by the others.
        rng: randomness for twos (where the kernel calls get_random_u32_below).
        lblc_expiration / lblcr_expiration: the sysctls of the same names, in seconds.
        now: creation time; lblc/lblcr arm their 60 s GC timer from it.
        sh_tab_bits: CONFIG_IP_VS_SH_TAB_BITS (4..20, default 8 = 256 buckets).
        mh_table_size: the mh table prime (default 4093 = CONFIG_IP_VS_MH_TAB_INDEX 12).
        lblc_tab_bits: CONFIG_IP_VS_LBLC_TAB_BITS / LBLCR_TAB_BITS (default 10).

    Returns:
        A scheduler with no destinations; the engine then calls `update_dests`.

    Raises:
        ValueError: for a name that is not a kernel scheduler, or a bad table size.
    """
    if name == "rr":
        return RoundRobin()
    if name == "wrr":
        return WeightedRoundRobin()
    if name == "lc":
        return LeastConnection()
    if name == "wlc":
        return WeightedLeastConnection()
    if name == "sed":
        return ShortestExpectedDelay()
    if name == "nq":
        return NeverQueue()
    if name == "sh":
        return SourceHashing(sched_flags=sched_flags, tab_bits=sh_tab_bits)
    if name == "dh":
        return DestinationHashing()
    if name == "mh":
        return MaglevHashing(sched_flags=sched_flags, table_size=mh_table_size)
    if name == "lblc":
        return LocalityBasedLeastConnection(
            expiration=lblc_expiration, tab_bits=lblc_tab_bits, now=now
        )
    if name == "lblcr":
        return LocalityBasedLeastConnectionReplication(
            expiration=lblcr_expiration, tab_bits=lblc_tab_bits, now=now
        )
    if name == "fo":
        return WeightedFailover()
    if name == "ovf":
        return WeightedOverflow()
    if name == "twos":
        return PowerOfTwoChoices(rng)
    raise ValueError(f"unknown IPVS scheduler {name!r}")
