"""Connection entries and their timer structure, for the embedded IPVS engine.

Owns: `Conn` (one connection entry, spec §9.1), `Template` (a persistence template, §4) and
`TimerWheel`, the expiry structure for both.

Memory and speed are the design constraints (a director holds millions of entries): entries
are `__slots__` objects without per-entry dicts; the lookup key is one tuple of ints
(client address, client port, virtual address, virtual port), with a trailing 6 for IPv6
so the families never collide (addresses as ints: hashing an `ipaddress` object runs Python
code, hashing an int does not; the int is the one inside the packet's address object, not
a copy); ports are shared int objects; the protocol is implied by the per-protocol table
the entry sits in; the real server is the bound `dest` object (its address is not copied);
the entry's fwmark is its service's. An entry costs one object, one key tuple, one float
(its expiry), a dict slot and a wheel slot.

Timer structure: buckets of `granularity` seconds (a dict bucket-number -> list, plus a heap
of bucket numbers). An entry sits in exactly one *current* bucket, recorded in `entry.tb`;
re-arming to a later time only updates `entry.expires` (lazy: the entry is re-filed when its
old bucket comes due), re-arming to an earlier time files it again and the stale copy is
skipped. No operation scans the whole table.

Invariants: `entry.tb is None` exactly when the entry is not armed (dead or one-packet);
`entry.expires >= entry.tb.start` for an armed entry.

Imports only the model; no clock, no I/O.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hactl.ipvs.model import IPAddress

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Bucket", "Conn", "ConnKey", "Template", "TimerWheel", "addr_int", "int_addr"]

# (caddr, cport, vaddr, vport) as ints, plus a trailing 6 for IPv6 entries.
ConnKey = tuple[int, ...]

# The integer inside an address object (no copy, no Python-level call).
addr_int: Callable[[IPAddress], int] = operator.attrgetter("_ip")


@functools.lru_cache(maxsize=65536)
def int_addr(value: int, v6: bool) -> IPAddress:
    """The address object of a key integer (snapshots and verdicts only)."""
    return ipaddress.IPv6Address(value) if v6 else ipaddress.IPv4Address(value)


class Bucket(list["Conn"]):
    """The entries whose expiry falls in [start, start + granularity)."""

    __slots__ = ("start",)

    def __init__(self, start: float) -> None:
        super().__init__()
        self.start = start


class Conn:
    """One connection entry (`struct ip_vs_conn`, spec §9.1), protocol given by its table.

    `key` is a `ConnKey`. `pp` is the engine's per-protocol handler.
    `dest` is the bound destination or None (bypass entries and unbound synced entries).
    `timeout` is the current per-state timeout in seconds, `expires` the absolute expiry.
    `sync_endtime` is in milliseconds with the retry count in its two low bits (§2.3).
    """

    __slots__ = (
        "control",
        "dest",
        "dport",
        "expires",
        "flags",
        "in_pkts",
        "key",
        "old_state",
        "pp",
        "state",
        "sync_endtime",
        "tb",
        "timeout",
    )

    key: ConnKey
    pp: Any
    dest: Any
    dport: int
    flags: int
    state: int
    old_state: int
    timeout: float
    expires: float
    in_pkts: int
    control: Template | None
    sync_endtime: int
    tb: Bucket | None

    def __init__(
        self,
        key: ConnKey,
        pp: Any,
        dest: Any,
        dport: int,
        flags: int,
    ) -> None:
        # ip_vs_conn_new (spec §2.5, §3.4): state NONE, 3 s until the first transition.
        self.key = key
        self.pp = pp
        self.dest = dest
        self.dport = dport
        self.flags = flags
        self.state = 0
        self.old_state = 0
        self.timeout = 3.0
        self.expires = 0.0
        self.in_pkts = 0
        self.control = None
        self.sync_endtime = 0
        self.tb = None

    @property
    def is_v6(self) -> bool:
        return len(self.key) == 5

    @property
    def caddr(self) -> IPAddress:
        return int_addr(self.key[0], len(self.key) == 5)

    @property
    def cport(self) -> int:
        return self.key[1]

    @property
    def vaddr(self) -> IPAddress:
        return int_addr(self.key[2], len(self.key) == 5)

    @property
    def vport(self) -> int:
        return self.key[3]

    @property
    def protocol(self) -> int:
        return int(self.pp.protocol)

    @property
    def alive(self) -> bool:
        """False once the entry has left the table."""
        return self.tb is not None

    def __repr__(self) -> str:
        return (
            f"<Conn {self.caddr}:{self.cport}->{self.vaddr}:{self.vport} "
            f"state={self.state} flags={self.flags:#x}>"
        )


class Template(Conn):
    """A persistence template (spec §4): client port 0, client address masked.

    `key` is (client net, 0, virtual address or fwmark-as-address, virtual port[, 6]);
    `tkey` = (protocol,) + that without the 0: the key it is hashed under in the template
    table (None once invalidated, §4.2 step 2).
    """

    __slots__ = ("fwmark", "n_control", "protocol_", "tkey")

    n_control: int
    fwmark: int
    protocol_: int
    tkey: ConnKey | None

    def __init__(self, tkey: ConnKey, dest: Any, dport: int, flags: int, fwmark: int) -> None:
        super().__init__((tkey[1], 0, *tkey[2:]), None, dest, dport, flags)
        self.protocol_ = tkey[0]
        self.tkey = tkey
        self.n_control = 0
        self.fwmark = fwmark

    @property
    def protocol(self) -> int:
        return self.protocol_

    def __repr__(self) -> str:
        return (
            f"<Template {self.protocol_} {self.caddr}->{self.vaddr}:{self.vport} "
            f"n_control={self.n_control}>"
        )


class TimerWheel:
    """Expiry buckets of `granularity` seconds with lazy re-filing (see module docstring)."""

    __slots__ = ("_buckets", "_heap", "granularity")

    def __init__(self, granularity: float = 1.0) -> None:
        if granularity <= 0:
            raise ValueError("timer granularity must be positive")
        self.granularity = granularity
        self._buckets: dict[int, Bucket] = {}
        self._heap: list[int] = []

    def __len__(self) -> int:
        """Number of filed slots (stale copies included)."""
        return sum(len(b) for b in self._buckets.values())

    def arm(self, cp: Conn, expires: float) -> None:
        """Set `cp` to expire at `expires` (absolute seconds)."""
        cp.expires = expires
        tb = cp.tb
        if tb is not None and tb.start <= expires:
            return  # lazy: re-filed when its current bucket comes due
        self.file(cp)

    def file(self, cp: Conn) -> None:
        """File `cp` into the bucket of its `expires` (it becomes its current bucket)."""
        g = self.granularity
        n = int(cp.expires // g)
        bucket = self._buckets.get(n)
        if bucket is None:
            bucket = self._buckets[n] = Bucket(n * g)
            heapq.heappush(self._heap, n)
        bucket.append(cp)
        cp.tb = bucket

    def disarm(self, cp: Conn) -> None:
        """Forget `cp` (its filed copies become stale and are skipped)."""
        cp.tb = None

    def next_deadline(self) -> float | None:
        """End of the earliest non-empty bucket: every entry in it is due by then."""
        heap = self._heap
        if not heap:
            return None
        return (heap[0] + 1) * self.granularity

    def pop_due(self, now: float) -> list[Bucket]:
        """Remove and return the buckets that start at or before `now`."""
        heap = self._heap
        buckets = self._buckets
        g = self.granularity
        due: list[Bucket] = []
        while heap and heap[0] * g <= now:
            due.append(buckets.pop(heapq.heappop(heap)))
        return due

    def sample(self, rng: Any, count: int) -> list[Conn]:
        """Up to `count` armed entries picked at random (for the drop_entry defense)."""
        if not self._buckets:
            return []
        keys = list(self._buckets)
        picked: list[Conn] = []
        for _ in range(count):
            bucket = self._buckets[keys[rng.randrange(len(keys))]]
            if bucket:
                cp = bucket[rng.randrange(len(bucket))]
                if cp.tb is bucket:
                    picked.append(cp)
        return picked

    def entries(self) -> Iterator[Conn]:
        """Every armed entry once (current bucket copies only)."""
        for bucket in list(self._buckets.values()):
            for cp in bucket:
                if cp.tb is bucket:
                    yield cp
