"""Helpers for the engine's scenario tests: building services and scripting packets."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, ip_address

from hactl.ipvs.engine import DIR_IN, DIR_OUT, EngineOptions, IpvsEngine, PacketInfo, Verdict
from hactl.ipvs.model import (
    AF_INET,
    Destination,
    FwdMethod,
    IPAddress,
    IpProto,
    IpvsSysctl,
    ServiceKey,
    VirtualService,
)
from hactl.ipvs.proto import TH_ACK, TH_FIN, TH_RST, TH_SYN

__all__ = [
    "ACK",
    "FIN",
    "RST",
    "SYN",
    "SYNACK",
    "VIP",
    "Client",
    "dest",
    "make_engine",
    "rs",
    "tcp_service",
    "udp_service",
]

SYN = TH_SYN
ACK = TH_ACK
FIN = TH_FIN | TH_ACK
RST = TH_RST
SYNACK = TH_SYN | TH_ACK

VIP = IPv4Address("10.0.0.1")


def rs(n: int) -> IPv4Address:
    """Real server n: 192.168.1.n."""
    return IPv4Address(f"192.168.1.{n}")


def dest(n: int, *, weight: int = 1, port: int = 80, fwd: FwdMethod = FwdMethod.MASQ,
         u: int = 0, l: int = 0) -> Destination:  # noqa: E741
    return Destination(addr=rs(n), port=port, weight=weight, fwd=fwd, u_threshold=u,
                       l_threshold=l)


def tcp_service(*dests: Destination, port: int = 80, sched: str = "rr",
                persistence: float | None = None, netmask: int = 32) -> VirtualService:
    return VirtualService(
        key=ServiceKey.for_address(IpProto.TCP, VIP, port),
        scheduler=sched,
        persistence_timeout=persistence,
        netmask=netmask,
        destinations=dests,
    )


def udp_service(*dests: Destination, port: int = 53, sched: str = "rr",
                persistence: float | None = None, one_packet: bool = False) -> VirtualService:
    return VirtualService(
        key=ServiceKey.for_address(IpProto.UDP, VIP, port),
        scheduler=sched,
        persistence_timeout=persistence,
        one_packet=one_packet,
        destinations=dests,
    )


def make_engine(*services: VirtualService, sysctl: IpvsSysctl | None = None,
                options: EngineOptions | None = None, now: float = 0.0) -> IpvsEngine:
    engine = IpvsEngine(rng=random.Random(7), sysctl=sysctl, options=options)
    for svc in services:
        engine.add_service(svc, now=now)
    return engine


class Client:
    """One client socket (address:port) talking to a virtual service through `engine`."""

    def __init__(self, engine: IpvsEngine, addr: str, port: int, *,
                 vip: IPAddress = VIP, vport: int = 80,
                 protocol: IpProto = IpProto.TCP) -> None:
        self.engine = engine
        self.addr = ip_address(addr)
        self.port = port
        self.vip = vip
        self.vport = vport
        self.protocol = protocol

    def _pkt(self, direction: int, flags: int, length: int) -> PacketInfo:
        return PacketInfo(
            family=AF_INET, protocol=int(self.protocol), saddr=self.addr, sport=self.port,
            daddr=self.vip, dport=self.vport, direction=direction, tcp_flags=flags,
            length=length,
        )

    def send(self, flags: int, *, now: float, length: int = 60) -> Verdict:
        """A packet from the client to the virtual service."""
        return self.engine.receive_packet(self._pkt(DIR_IN, flags, length), now=now)

    def reply(self, flags: int, *, now: float, length: int = 60) -> Verdict:
        """A packet from the real server back to this client."""
        return self.engine.receive_packet(self._pkt(DIR_OUT, flags, length), now=now)

    def state(self) -> str | None:
        cp = self.engine.find_conn(int(self.protocol), self.addr, self.port, self.vip,
                                   self.vport)
        if cp is None:
            return None
        return self.engine.conn_status(cp, now=0.0).state
