"""Per-protocol state machines of the embedded IPVS engine (spec/ipvs.md §3).

Owns: the TCP, UDP and SCTP state numbers and names, the kernel's default per-state timeouts,
which states count as active, and the next-state tables (TCP normal and secure_tcp "dos"
tables of §3.3, the SCTP chunk tables of `ip_vs_proto_sctp.c`), restated as data.

Invariants: tables are immutable tuples indexed `[direction][event][state]`; a next state is
always a valid state of the same protocol. Directions are INPUT (client to director),
OUTPUT (real server reply) and INPUT_ONLY (input while the entry has NOOUTPUT, §3.3).

Pure data and pure functions: imports nothing from hactl but the model.
"""

from __future__ import annotations

import enum

from hactl.ipvs.model import IpProto

__all__ = [
    "DIR_INPUT",
    "DIR_INPUT_ONLY",
    "DIR_OUTPUT",
    "SCTP_ACTIVE",
    "SCTP_CHUNK_ABORT",
    "SCTP_CHUNK_DATA",
    "SCTP_CHUNK_INIT",
    "SCTP_DEFAULT_TIMEOUTS",
    "SCTP_STATES",
    "SCTP_STATE_NAMES",
    "TCP_ACTIVE",
    "TCP_ACTIVE_LEGACY",
    "TCP_DEFAULT_TIMEOUTS",
    "TCP_STATES",
    "TCP_STATES_DOS",
    "TCP_STATE_NAMES",
    "TEMPLATE_STATE_NAMES",
    "TH_ACK",
    "TH_FIN",
    "TH_RST",
    "TH_SYN",
    "UDP_DEFAULT_TIMEOUTS",
    "UDP_STATE_NAMES",
    "SctpState",
    "TcpState",
    "default_timeouts",
    "sctp_event",
    "state_count",
    "state_name",
    "tcp_event",
]

# TCP header flag bits as on the wire (a PacketInfo carries them in `tcp_flags`).
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_ACK = 0x10

# Directions as the state tables index them (IP_VS_DIR_INPUT / OUTPUT / INPUT_ONLY).
DIR_INPUT = 0
DIR_OUTPUT = 1
DIR_INPUT_ONLY = 2


class TcpState(enum.IntEnum):
    """IP_VS_TCP_S_* (spec §3.1)."""

    NONE = 0
    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT = 4
    TIME_WAIT = 5
    CLOSE = 6
    CLOSE_WAIT = 7
    LAST_ACK = 8
    LISTEN = 9
    SYNACK = 10


TCP_STATE_NAMES: tuple[str, ...] = (
    "NONE",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "SYNACK",
)

# Default timeouts in seconds, indexed by state; the extra last entry is IP_VS_TCP_S_LAST.
TCP_DEFAULT_TIMEOUTS: tuple[float, ...] = (
    2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120, 2,
)

# tcp_state_active_table: current kernels count the pre-established states as active (§3.1);
# kernels before that change counted only ESTABLISHED (engine option `legacy_active_states`).
TCP_ACTIVE: tuple[bool, ...] = tuple(
    s in (TcpState.ESTABLISHED, TcpState.SYN_SENT, TcpState.SYN_RECV, TcpState.SYNACK)
    for s in range(12)
)
TCP_ACTIVE_LEGACY: tuple[bool, ...] = tuple(s == TcpState.ESTABLISHED for s in range(12))

_TCP_ABBREV = {
    "NO": 0, "ES": 1, "SS": 2, "SR": 3, "FW": 4, "TW": 5,
    "CL": 6, "CW": 7, "LA": 8, "LI": 9, "SA": 10,
}


def _rows(text: str, abbrev: dict[str, int]) -> tuple[tuple[int, ...], ...]:
    return tuple(
        tuple(abbrev[cell] for cell in line.split()) for line in text.strip().splitlines()
    )


def _tcp_table(text: str) -> tuple[tuple[tuple[int, ...], ...], ...]:
    rows = _rows(text, _TCP_ABBREV)
    # Rows come in direction order INPUT, OUTPUT, INPUT_ONLY; four events each.
    return tuple(rows[d * 4 : d * 4 + 4] for d in range(3))


# §3.3 normal table. Columns: current state NO ES SS SR FW TW CL CW LA LI SA.
# Per direction the rows are the events syn, fin, ack, rst (tcp_state_idx order).
TCP_STATES = _tcp_table(
    """
    SR ES ES SR SR SR SR SR SR SR SR
    CL CW SS TW TW TW CL CW LA LI TW
    ES ES SS ES FW TW CL CW CL LI ES
    CL CL CL SR CL CL CL CL LA LI SR
    SS ES SS SR SS SS SS SS SS LI SR
    TW FW SS TW FW TW CL TW LA LI TW
    ES ES SS ES FW TW CL CW LA ES ES
    CL CL SS CL CL TW CL CL CL CL CL
    SR ES ES SR SR SR SR SR SR SR SR
    CL FW SS TW FW TW CL CW LA LI TW
    ES ES SS ES FW TW CL CW CL LI ES
    CL CL CL SR CL CL CL CL LA LI CL
    """
)

# §3.3 secure_tcp ("dos") table, used while the secure_tcp defense is engaged (§7.1).
TCP_STATES_DOS = _tcp_table(
    """
    SR ES ES SR SR SR SR SR SR SR SA
    CL CW SS TW TW TW CL CW LA LI SA
    ES ES SS SR FW TW CL CW CL LI SA
    CL CL CL SR CL CL CL CL LA LI CL
    SS ES SS SA SS SS SS SS SS LI SA
    TW FW SS TW FW TW CL TW LA LI TW
    ES ES SS ES FW TW CL CW LA ES ES
    CL CL SS CL CL TW CL CL CL CL CL
    SA ES ES SR SA SA SA SA SA SA SA
    CL FW SS TW FW TW CL CW LA LI TW
    ES ES SS ES FW TW CL CW CL LI ES
    CL CL CL SR CL CL CL CL LA LI CL
    """
)


def tcp_event(flags: int) -> int:
    """`tcp_state_idx`: the table row for TCP flags (RST > SYN > FIN > ACK); -1 for none.

    A segment with none of the four flags moves the entry to CLOSE unconditionally (§3.3).
    """
    if flags & TH_RST:
        return 3
    if flags & TH_SYN:
        return 0
    if flags & TH_FIN:
        return 1
    if flags & TH_ACK:
        return 2
    return -1


# UDP has one state (IP_VS_UDP_S_NORMAL, printed "UDP"), 300 s (§3.4).
UDP_STATE_NAMES: tuple[str, ...] = ("UDP",)
UDP_DEFAULT_TIMEOUTS: tuple[float, ...] = (300, 2)


class SctpState(enum.IntEnum):
    """IP_VS_SCTP_S_* (spec §3.4)."""

    NONE = 0
    INIT1 = 1
    INIT = 2
    COOKIE_SENT = 3
    COOKIE_REPLIED = 4
    COOKIE_WAIT = 5
    COOKIE = 6
    COOKIE_ECHOED = 7
    ESTABLISHED = 8
    SHUTDOWN_SENT = 9
    SHUTDOWN_RECEIVED = 10
    SHUTDOWN_ACK_SENT = 11
    REJECTED = 12
    CLOSED = 13


SCTP_STATE_NAMES: tuple[str, ...] = (
    "NONE",
    "INIT1",
    "INIT",
    "C-SENT",
    "C-REPLIED",
    "C-WAIT",
    "COOKIE",
    "C-ECHOED",
    "ESTABLISHED",
    "S-SENT",
    "S-RECEIVED",
    "S-ACK-SENT",
    "REJECTED",
    "CLOSED",
)

# NONE 2, INIT1 4, ESTABLISHED 900, REJECTED 4, every other state 61 (max RTO + 1); LAST 2.
SCTP_DEFAULT_TIMEOUTS: tuple[float, ...] = (
    2, 4, 61, 61, 61, 61, 61, 61, 900, 61, 61, 61, 4, 61, 2,
)
SCTP_ACTIVE: tuple[bool, ...] = tuple(s == SctpState.ESTABLISHED for s in range(15))

# First-chunk types the engine reads (RFC 4960 chunk type numbers).
SCTP_CHUNK_DATA = 0
SCTP_CHUNK_INIT = 1
SCTP_CHUNK_ABORT = 6

# sctp_events: chunk type -> table row. Rows: DATA, INIT, INIT_ACK, COOKIE_ECHO, COOKIE_ACK,
# SHUTDOWN, SHUTDOWN_ACK, SHUTDOWN_COMPLETE, ERROR, ABORT. Unknown chunk types count as DATA.
_SCTP_EVENT_OF_CHUNK: dict[int, int] = {
    0: 0,  # DATA
    1: 1,  # INIT
    2: 2,  # INIT ACK
    3: 0,  # SACK
    4: 0,  # HEARTBEAT
    5: 0,  # HEARTBEAT ACK
    6: 9,  # ABORT
    7: 5,  # SHUTDOWN
    8: 6,  # SHUTDOWN ACK
    9: 8,  # ERROR
    10: 3,  # COOKIE ECHO
    11: 4,  # COOKIE ACK
    12: 0,  # ECNE
    13: 0,  # CWR
    14: 7,  # SHUTDOWN COMPLETE
}


def sctp_event(chunk_type: int) -> int:
    """The SCTP table row for the packet's first chunk type."""
    return _SCTP_EVENT_OF_CHUNK.get(chunk_type, 0)


_SCTP_ABBREV = {
    "NO": 0, "I1": 1, "IN": 2, "CS": 3, "CR": 4, "CW": 5, "CO": 6,
    "CE": 7, "ES": 8, "SS": 9, "SR": 10, "SA": 11, "RJ": 12, "CL": 13,
}


def _sctp_table(text: str) -> tuple[tuple[tuple[int, ...], ...], ...]:
    rows = _rows(text, _SCTP_ABBREV)
    return tuple(rows[d * 10 : d * 10 + 10] for d in range(3))


# ip_vs_proto_sctp.c `sctp_states`, restated. Columns: NO I1 IN CS CR CW CO CE ES SS SR SA RJ CL.
# Per direction (INPUT, OUTPUT, INPUT_ONLY) the rows are the ten events in _SCTP_EVENT order.
SCTP_STATES = _sctp_table(
    """
    ES I1 IN CS CR CW CO CE ES SS SR SA RJ CL
    I1 IN IN CS CR CW CO CE ES SS SR SA IN IN
    CW CW CW CS CR CO CO CE ES SS SR SA RJ CL
    CR IN IN CR CR CW CO CE ES SS SR SA RJ CL
    ES I1 IN CS CR CW CO ES ES SS SR SA RJ CL
    SR I1 IN CS CR CW CO CE SR SS SR SA RJ CL
    CL IN IN CS CR CW CO CE ES CL SR CL RJ CL
    CL CL CL CS CR CW CO CE ES SS SR CL RJ CL
    CL I1 IN CS CR CW CO CL ES SS SR SA RJ CL
    CL CL CL CL CL RJ CL CL CL CL CL CL CL CL
    ES I1 IN CS CR CW CO CE ES SS SR SA RJ CL
    CW CW CW CW CW CW CW CW ES CW CW CW CW CW
    CS CS CS CS CR CW CO CE ES SS SR SA RJ CL
    CE CE CE CE CE CE CE CE ES SS SR SA RJ CL
    ES ES ES ES ES ES ES ES ES SS SR SA RJ CL
    SS SS SS SS SS SS SS SS SS SS SR SA RJ CL
    SA SA SA SA SA CW CO CE ES SA SA SA RJ CL
    CL I1 IN CS CR CW CO CE ES SS SR SA RJ CL
    CL CL CL CL CL CW CO CE ES SS SR SA RJ CL
    CL RJ CL CL CL CL CL CL CL CL CL CL CL CL
    ES I1 IN CS CR ES CO CE ES SS SR SA RJ CL
    I1 IN IN IN IN IN CO CE ES SS SR SA IN IN
    CE CE CE CE CE CE CO CE ES SS SR SA RJ CL
    ES ES ES ES ES ES CO CE ES SS SR SA RJ CL
    ES I1 IN ES ES CW ES ES ES SS SR SA RJ CL
    SR I1 IN CS CR CW CO CE SR SS SR SA RJ CL
    CL IN IN CS CR CW CO CE CL CL SR CL RJ CL
    CL CL CL CL CL CW CO CE ES SS CL CL RJ CL
    CL I1 IN CS CR CW CO CE ES SS SR SA RJ CL
    CL CL CL CL CL RJ CL CL CL CL CL CL CL CL
    """
)

TEMPLATE_STATE_NAMES: tuple[str, ...] = ("NONE", "ASSURED")


def default_timeouts(protocol: int) -> tuple[float, ...]:
    """The kernel's default per-state timeout table of `protocol` (last entry = S_LAST)."""
    if protocol == IpProto.TCP:
        return TCP_DEFAULT_TIMEOUTS
    if protocol == IpProto.UDP:
        return UDP_DEFAULT_TIMEOUTS
    if protocol == IpProto.SCTP:
        return SCTP_DEFAULT_TIMEOUTS
    raise ValueError(f"IPVS does not handle IP protocol {protocol}")


def state_count(protocol: int) -> int:
    """Number of states of `protocol` (the bound a synced state must stay below, §1.9)."""
    return len(default_timeouts(protocol)) - 1


def state_name(protocol: int, state: int, *, template: bool = False) -> str:
    """The name `ipvsadm -Lnc` prints (`ip_vs_state_name`): "ERR!" from S_LAST on."""
    if template:
        return TEMPLATE_STATE_NAMES[state] if 0 <= state < 2 else "ERR!"
    if protocol == IpProto.TCP:
        names = TCP_STATE_NAMES
    elif protocol == IpProto.UDP:
        names = UDP_STATE_NAMES
    elif protocol == IpProto.SCTP:
        names = SCTP_STATE_NAMES
    else:
        return "ERR!"
    return names[state] if 0 <= state < len(names) else "ERR!"
