"""Prometheus text exposition (format 0.0.4) of the director's state, written by hand: the
format is small and a dependency would buy nothing here.

Owns: the metric names (API: they are documented in docs/api.md and must not change
casually), label escaping, and `LatencyRecorder`, the mutable histogram the daemon keeps per
real server and snapshots into `LatencyHistogram` for the `Director` port.

Pure: a function of snapshots; no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hactl.api.model import (
    DaemonInfo,
    LatencyHistogram,
    VirtualServerStatus,
    VrrpInstanceStatus,
    format_rs,
    format_vs,
)
from hactl.ipvs.model import ServiceStatus, Stats
from hactl.sync.model import SyncStats

__all__ = ["CONTENT_TYPE", "DEFAULT_LATENCY_BOUNDS", "LatencyRecorder", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Probe latencies: a LAN TCP connect is well under a millisecond, an HTTP check of a slow
# backend reaches seconds; the timeout (keepalived default 5 s) caps the top.
DEFAULT_LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0)

_VRRP_STATES = ("INIT", "BACKUP", "MASTER", "FAULT", "STOP")


@dataclass(slots=True)
class LatencyRecorder:
    """A cumulative histogram to feed with each probe's latency."""

    bounds: tuple[float, ...] = DEFAULT_LATENCY_BOUNDS
    _buckets: list[int] = field(init=False)
    count: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("bounds must be strictly increasing")
        self._buckets = [0] * len(self.bounds)

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(self.bounds, seconds)
        if index < len(self._buckets):
            self._buckets[index] += 1
        self.count += 1
        self.sum += seconds

    def snapshot(self) -> LatencyHistogram:
        cumulative: list[int] = []
        total = 0
        for n in self._buckets:
            total += n
            cumulative.append(total)
        return LatencyHistogram(
            bounds=self.bounds, counts=tuple(cumulative), count=self.count, sum=self.sum
        )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class _Writer:
    """Groups samples under one HELP/TYPE header per family, as the format requires."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(
        self, name: str, kind: str, help_text: str, value: float,
        labels: dict[str, str] | None = None, *, sample: str | None = None,
    ) -> None:
        family = self._families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{sample or name}{_labels(labels or {})} {_num(value)}")

    def text(self) -> str:
        out: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"


def _histogram(w: _Writer, name: str, help_text: str, h: LatencyHistogram,
               labels: dict[str, str]) -> None:
    for bound, count in zip(h.bounds, h.counts, strict=True):
        w.add(name, "histogram", help_text, count, {**labels, "le": _num(float(bound))},
              sample=f"{name}_bucket")
    w.add(name, "histogram", help_text, h.count, {**labels, "le": "+Inf"},
          sample=f"{name}_bucket")
    w.add(name, "histogram", help_text, h.sum, labels, sample=f"{name}_sum")
    w.add(name, "histogram", help_text, h.count, labels, sample=f"{name}_count")


def _ipvs_counters(w: _Writer, prefix: str, what: str, stats: Stats,
                   labels: dict[str, str]) -> None:
    w.add(f"{prefix}_connections_total", "counter", f"Connections scheduled to the {what}.",
          stats.conns, labels)
    for direction in ("in", "out"):
        w.add(f"{prefix}_packets_total", "counter", f"Packets through the {what}.",
              getattr(stats, f"{direction}pkts"), {**labels, "direction": direction})
        w.add(f"{prefix}_bytes_total", "counter", f"Bytes through the {what}.",
              getattr(stats, f"{direction}bytes"), {**labels, "direction": direction})


def render(
    *,
    info: DaemonInfo,
    vrrp: Iterable[VrrpInstanceStatus],
    virtual_servers: Iterable[VirtualServerStatus],
    services: Sequence[ServiceStatus],
    sync: SyncStats | None,
) -> str:
    """The /metrics body."""
    w = _Writer()
    w.add("hactl_build_info", "gauge", "hactl version and IPVS backend (always 1).", 1,
          {"version": info.version, "backend": info.backend})
    w.add("hactl_config_load_timestamp_seconds", "gauge",
          "When the running configuration was loaded (Unix time).", info.config_loaded_at)
    w.add("hactl_start_timestamp_seconds", "gauge", "When the daemon started (Unix time).",
          info.started_at)

    for inst in vrrp:
        lab = {"instance": inst.name, "interface": inst.interface, "vrid": str(inst.vrid)}
        for state in _VRRP_STATES:
            w.add("hactl_vrrp_state", "gauge",
                  "VRRP instance state: 1 for the current state, 0 for the others.",
                  int(inst.state == state), {**lab, "state": state})
        w.add("hactl_vrrp_priority", "gauge", "Configured VRRP priority.", inst.priority, lab)
        w.add("hactl_vrrp_effective_priority", "gauge",
              "VRRP priority after tracking adjustments.", inst.effective_priority, lab)
        w.add("hactl_vrrp_transitions_total", "counter", "VRRP state transitions.",
              inst.transitions, lab)
        w.add("hactl_vrrp_split_brain_total", "counter",
              "Adverts heard from another master while master (split brain).",
              inst.split_brain, lab)
        w.add("hactl_vrrp_adverts_sent_total", "counter", "VRRP adverts sent.",
              inst.adverts_sent, lab)
        w.add("hactl_vrrp_adverts_received_total", "counter", "VRRP adverts received.",
              inst.adverts_received, lab)
        for reason, count in sorted(inst.adverts_dropped.items()):
            w.add("hactl_vrrp_adverts_dropped_total", "counter",
                  "VRRP adverts dropped, by reason.", count, {**lab, "reason": reason})

    for vs in virtual_servers:
        vs_id = format_vs(vs.key)
        w.add("hactl_virtual_server_quorum_up", "gauge",
              "1 when the virtual server has quorum.", int(vs.quorum_up), {"vs": vs_id})
        for rs in vs.real_servers:
            lab = {"vs": vs_id, "rs": format_rs(rs.key)}
            w.add("hactl_real_server_up", "gauge", "1 when health checks report the server up.",
                  int(rs.health.value == "up"), lab)
            w.add("hactl_real_server_weight", "gauge", "Weight in IPVS (0: quiesced).",
                  rs.effective_weight if rs.in_ipvs else 0, lab)
            w.add("hactl_real_server_configured_weight", "gauge", "Weight in the configuration.",
                  rs.configured_weight, lab)
            w.add("hactl_real_server_in_ipvs", "gauge",
                  "1 when the server is in the IPVS table.", int(rs.in_ipvs), lab)
            override = "none" if rs.override is None else rs.override.kind.value
            w.add("hactl_real_server_override", "gauge",
                  "Operator override in force (label `override`).", 1,
                  {**lab, "override": override})
            for kind, count in (("active", rs.activeconns), ("inactive", rs.inactconns),
                                ("persistent", rs.persistconns)):
                w.add("hactl_real_server_connections", "gauge",
                      "Connections to the server by kind (ActiveConn, InActConn, PersistConn).",
                      count, {**lab, "kind": kind})
            for check in rs.checks:
                clab = {**lab, "check": check.kind}
                for result, count in sorted(check.results.items()):
                    w.add("hactl_check_results_total", "counter", "Health check results.",
                          count, {**clab, "result": result})
                if check.histogram is not None:
                    _histogram(w, "hactl_check_latency_seconds", "Health check latency.",
                               check.histogram, clab)

    for st in services:
        vs_id = format_vs(st.service.key)
        _ipvs_counters(w, "hactl_ipvs_service", "virtual service", st.stats, {"vs": vs_id})
        for ds in st.dests:
            lab = {"vs": vs_id, "rs": format_rs(ds.dest.key)}
            _ipvs_counters(w, "hactl_ipvs_destination", "real server", ds.stats, lab)
            w.add("hactl_ipvs_destination_connections", "gauge",
                  "IPVS connections to the real server by kind.", ds.activeconns,
                  {**lab, "kind": "active"})
            w.add("hactl_ipvs_destination_connections", "gauge",
                  "IPVS connections to the real server by kind.", ds.inactconns,
                  {**lab, "kind": "inactive"})
            w.add("hactl_ipvs_destination_connections", "gauge",
                  "IPVS connections to the real server by kind.", ds.persistconns,
                  {**lab, "kind": "persistent"})

    if sync is not None:
        role = sync.role.name.lower()
        w.add("hactl_sync_role", "gauge", "Connection sync role (label `role`).", 1,
              {"role": role})
        s = sync.sender
        w.add("hactl_sync_entries_sent_total", "counter", "Sync entries sent.", s.entries_sent)
        w.add("hactl_sync_datagrams_sent_total", "counter", "Sync datagrams sent.",
              s.datagrams_sent)
        w.add("hactl_sync_bytes_sent_total", "counter", "Sync bytes sent.", s.bytes_sent)
        w.add("hactl_sync_send_queue_depth", "gauge", "Full sync datagrams waiting.",
              s.queue_depth)
        w.add("hactl_sync_datagrams_dropped_total", "counter",
              "Sync datagrams dropped (send queue full).", s.datagrams_dropped)
        for reason, count in sorted(s.entries_dropped.items()):
            w.add("hactl_sync_send_entries_dropped_total", "counter",
                  "Sync entries not sent, by reason.", count, {"reason": reason})
        w.add("hactl_sync_send_errors_total", "counter", "Sync socket send errors.",
              sync.send_errors)
        w.add("hactl_sync_receive_errors_total", "counter", "Sync socket receive errors.",
              sync.receive_errors)
        for peer in sync.peers:
            plab = {"peer": peer.peer, "syncid": str(peer.syncid)}
            w.add("hactl_sync_peer_lag_seconds", "gauge", "Age of the newest sync message.",
                  peer.lag, plab)
            w.add("hactl_sync_datagrams_received_total", "counter", "Sync datagrams received.",
                  peer.datagrams, plab)
            w.add("hactl_sync_entries_received_total", "counter", "Sync entries received.",
                  peer.entries_received, plab)
            w.add("hactl_sync_entries_applied_total", "counter", "Sync entries applied.",
                  peer.entries_applied, plab)
            w.add("hactl_sync_entries_failed_total", "counter",
                  "Sync entries the table refused.", peer.entries_failed, plab)
            for reason, count in sorted(peer.entries_dropped.items()):
                w.add("hactl_sync_entries_dropped_total", "counter",
                      "Sync entries dropped, by reason.", count, {**plab, "reason": reason})
    return w.text()
