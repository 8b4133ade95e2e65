"""Two embedded IPVS engines joined by the sync cores, no sockets: the master engine's sync
decisions (spec §2) go through SyncSender, the wire and SyncReceiver into the backup engine's
`apply_sync` (§1.10). After the "failover", the backup schedules every returning persistent
client to the real server the master had chosen, and its table held the templates before.

This checks the contract between `hactl.sync` and `hactl.ipvs.engine` (`SyncConn`, the
`SyncSink` port with its `version` argument, accepted flags).
"""

from __future__ import annotations

import ipaddress
import random

from hactl.ipvs.engine import IpvsEngine, PacketInfo
from hactl.ipvs.events import SyncConnNeeded
from hactl.ipvs.model import AF_INET, Destination, FwdMethod, IpProto, ServiceKey, VirtualService
from hactl.ipvs.proto import DIR_INPUT, TH_ACK, TH_SYN
from hactl.sync.channel import SyncReceiver, SyncSender
from hactl.sync.events import ApplySyncEntries
from hactl.sync.service import SyncSink

V4 = ipaddress.IPv4Address
VIP = V4("10.0.0.1")
RSS = [V4(f"10.0.1.{i}") for i in (1, 2, 3)]
KEY = ServiceKey.for_address(IpProto.TCP, VIP, 80)


def director(seed: int) -> IpvsEngine:
    engine = IpvsEngine(rng=random.Random(seed))
    engine.add_service(
        VirtualService(
            key=KEY, scheduler="rr", persistence_timeout=360.0,
            destinations=tuple(Destination(addr=a, port=80, fwd=FwdMethod.DROUTE) for a in RSS),
        ),
        now=0.0,
    )
    return engine


def packet(client: ipaddress.IPv4Address, sport: int, flags: int) -> PacketInfo:
    return PacketInfo(family=AF_INET, protocol=6, saddr=client, sport=sport, daddr=VIP,
                      dport=80, direction=DIR_INPUT, tcp_flags=flags, length=60)


def test_backup_engine_keeps_persistent_clients_on_their_real_servers() -> None:
    master, backup = director(1), director(2)
    master.set_sync_state(master=True, backup=False)
    backup.set_sync_state(master=False, backup=True)
    sink: SyncSink = backup  # the engine is the backup's sink
    sender = SyncSender(syncid=1, max_datagram=1472)
    receiver = SyncReceiver(syncid=1)
    clients = [V4(f"192.0.2.{i}") for i in range(1, 31)]
    chosen: dict[ipaddress.IPv4Address, ipaddress.IPv4Address] = {}
    now = 1.0
    # One earlier client moves the master's round robin one step ahead of a fresh director's.
    master.receive_packet(packet(V4("198.51.100.7"), 1234, TH_SYN), now=now)
    for client in clients:  # SYN, ACK, data: the 3rd packet hits the sync threshold
        for flags in (TH_SYN, TH_ACK, TH_ACK):
            verdict = master.receive_packet(packet(client, 40000, flags), now=now)
            assert verdict.daddr is not None
            chosen[client] = verdict.daddr
            now += 0.001
    synced = [e.conn for e in master.pop_events() if isinstance(e, SyncConnNeeded)]
    # How often each is synced is the engine's decision (§2); each client's template is.
    assert {c.caddr for c in synced if c.flags & 0x1000} >= set(clients)
    sender.add_many(synced, now=now)
    sender.flush(now=now)
    for dgram in sender.pop_datagrams():
        receiver.receive_datagram(dgram.data, src=("10.0.0.2", 40000), now=now)
    for event in receiver.pop_events():
        assert isinstance(event, ApplySyncEntries)
        for entry in event.entries:
            sink.apply_sync(entry, now=now, version=event.version)
    held = {c.caddr: c.daddr for c in backup.connections(now=now) if c.cport == 0}  # templates
    assert {client: held[client] for client in clients} == chosen
    # failover: the backup becomes master; every client comes back on a new connection
    backup.set_sync_state(master=True, backup=False)
    now += 30.0
    for client in clients:
        verdict = backup.receive_packet(packet(client, 50000, TH_SYN), now=now)
        assert verdict.daddr == chosen[client], client
    # without the synced templates, rr on a director would have spread them differently
    fresh = director(2)
    spread = [fresh.receive_packet(packet(c, 50000, TH_SYN), now=now).daddr for c in clients]
    assert spread != [chosen[c] for c in clients]
