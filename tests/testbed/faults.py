"""Network faults inside one namespace with nftables (table `inet hactl_rb`).

Rules only ever live in namespaces the testbed created; `heal` deletes the table.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.testbed.topology import Host, ns_run

__all__ = ["drop_sync_share", "drop_vrrp", "dropped", "have_nft", "heal"]

TABLE = "hactl_rb"


def have_nft() -> bool:
    return shutil.which("nft") is not None


def _load(host: Host, rule: str) -> None:
    script = (f"table inet {TABLE} {{\n  chain input {{\n"
              "    type filter hook input priority -10; policy accept;\n"
              f"    {rule}\n  }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", host.netns, "nft", "-f", "-"], input=script,
                   text=True, check=True, capture_output=True, timeout=20)


def drop_vrrp(host: Host) -> None:
    """Drop every VRRP packet (IP protocol 112) arriving at `host`."""
    _load(host, "ip protocol 112 counter drop")


def drop_sync_share(host: Host, *, mod: int, port: int = 8848) -> None:
    """Drop one in `mod` sync datagrams (UDP `port`) arriving at `host`, at random."""
    _load(host, f"udp dport {port} numgen random mod {mod} 0 counter drop")


def dropped(host: Host) -> int:
    """Packets the rule dropped so far (0 when no table is loaded)."""
    out = ns_run(host.netns, "nft", "list", "table", "inet", TABLE, check=False).stdout
    found = re.search(r"counter packets (\d+)", out)
    return int(found.group(1)) if found else 0


def heal(host: Host) -> None:
    ns_run(host.netns, "nft", "delete", "table", "inet", TABLE, check=False)
