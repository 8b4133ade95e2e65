"""The kernel IPVS's /proc interfaces: the connection table and the /proc/sys/net/ipv4/vs tunables.

Owns:
* `parse_conn_table()`: `/proc/net/ip_vs_conn` text -> `ConnStatus` rows (generic netlink has
  no command that lists connections; `ipvsadm -Lnc` reads the same file);
* `parse_conn_tab_size()`: the hash table size from the first line of `/proc/net/ip_vs`;
* `parse_sysctl()` / `render_sysctl()`: the text of each tunable file <-> `IpvsSysctl`
  (`sync_threshold` holds two numbers, "3 50", split into `sync_threshold` and `sync_period`);
* `IpvsProcFs`: blocking reads and writes of those files under a given /proc root, used by
  the kernel backend from a worker thread.

Invariants:
* Parsing is total over what the kernel prints: an unparsable row raises ValueError naming
  the line, never a wrong `ConnStatus`.
* Writes touch only the files named by the caller; a tunable the running kernel lacks is
  reported (`NotSupported`), not skipped silently; any other refusal is a `KernelError` with
  the errno of the write (EINVAL for an out-of-range value).

The /proc row format (ip_vs_conn.c, `ip_vs_conn_seq_show`): protocol name, client address and
port, virtual address and port, destination address and port, state name, seconds left, then
optionally the persistence engine's name and data. IPv4 addresses are 8 hex digits in host
order of the network value, IPv6 ones are `%pI6` (eight groups of four hex digits), and a
destination of another family than the service is printed in brackets. The file lists the
entries of the reading process's network namespace only.

Imports the model and `hactl.errors`; no pyroute2, no asyncio.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import fields, replace
from pathlib import Path

from hactl.errors import KernelError, NotSupported
from hactl.ipvs.model import ConnStatus, IPAddress, IpProto, IpvsSysctl

__all__ = [
    "CONN_TABLE_HEADER",
    "IpvsProcFs",
    "parse_conn_line",
    "parse_conn_tab_size",
    "parse_conn_table",
    "parse_sysctl",
    "render_sysctl",
    "sysctl_files",
]

CONN_TABLE_HEADER = (
    "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData"
)

# ip_vs_proto_name() for the protocols IPVS keeps connections of (IP: fwmark templates).
_PROTO_BY_NAME = {"IP": IpProto.IP, "TCP": IpProto.TCP, "UDP": IpProto.UDP, "SCTP": IpProto.SCTP}

# The one tunable whose file carries two values, and the field holding its second one.
_PAIR_FILE = "sync_threshold"
_PAIR_SECOND = "sync_period"


def _proto(name: str) -> IpProto:
    try:
        return _PROTO_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown protocol name {name!r}") from None


def _addr(text: str) -> IPAddress:
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        return ipaddress.IPv6Address(text)
    if len(text) != 8:
        raise ValueError(f"bad IPv4 field {text!r}")
    return ipaddress.IPv4Address(int(text, 16))


def _port(text: str) -> int:
    if len(text) != 4:
        raise ValueError(f"bad port field {text!r}")
    return int(text, 16)


def parse_conn_line(line: str) -> ConnStatus:
    """One row of `/proc/net/ip_vs_conn` as a `ConnStatus`.

    Fwmark templates (protocol IP) carry the mark in the first 32-bit word of the virtual
    address; it is returned in `fwmark` as well. `flags` is 0: the file does not show them.

    Raises:
        ValueError: the line does not have the kernel's layout.
    """
    parts = line.split()
    if len(parts) < 9:
        raise ValueError(f"short ip_vs_conn row: {line!r}")
    try:
        protocol = _proto(parts[0])
        caddr, vaddr, daddr = _addr(parts[1]), _addr(parts[3]), _addr(parts[5])
        cport, vport, dport = _port(parts[2]), _port(parts[4]), _port(parts[6])
        expires = int(parts[8])
    except ValueError as exc:
        raise ValueError(f"bad ip_vs_conn row {line!r}: {exc}") from None
    fwmark = 0
    if protocol == IpProto.IP:
        fwmark = int(vaddr) if vaddr.version == 4 else int(vaddr) >> 96
    pe_name = parts[9] if len(parts) > 9 else ""
    pe_data = " ".join(parts[10:]).encode("latin-1") if len(parts) > 10 else b""
    return ConnStatus(
        protocol=protocol,
        caddr=caddr,
        cport=cport,
        vaddr=vaddr,
        vport=vport,
        daddr=daddr,
        dport=dport,
        state=parts[7],
        expires_in=float(expires),
        fwmark=fwmark,
        pe_name=pe_name,
        pe_data=pe_data,
    )


def parse_conn_table(text: str) -> tuple[ConnStatus, ...]:
    """Every row of `/proc/net/ip_vs_conn` (the header line is skipped), in file order.

    Raises:
        ValueError: a row does not have the kernel's layout.
    """
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("Pro "):
            continue
        rows.append(parse_conn_line(line))
    return tuple(rows)


def parse_conn_tab_size(text: str) -> int:
    """The connection hash table size from `/proc/net/ip_vs` ("... version 1.2.1 (size=4096)").

    Raises:
        ValueError: the first line does not carry the size.
    """
    first = text.split("\n", 1)[0]
    start = first.find("(size=")
    end = first.find(")", start)
    if start < 0 or end < 0:
        raise ValueError(f"no table size in {first!r}")
    return int(first[start + len("(size=") : end])


def sysctl_files() -> tuple[str, ...]:
    """The file names under /proc/sys/net/ipv4/vs that `IpvsSysctl` covers."""
    return IpvsSysctl.names()


def parse_sysctl(values: Mapping[str, str], *, base: IpvsSysctl | None = None) -> IpvsSysctl:
    """`IpvsSysctl` from the text of tunable files (name -> content); absent names keep `base`.

    Raises:
        ValueError: a file's content is not what the kernel prints for it.
    """
    known = {f.name for f in fields(IpvsSysctl)}
    changes: dict[str, int] = {}
    for name, text in values.items():
        words = text.split()
        if name == _PAIR_FILE:
            if len(words) != 2:
                raise ValueError(f"{name}: expected two numbers, got {text!r}")
            changes[_PAIR_FILE], changes[_PAIR_SECOND] = int(words[0]), int(words[1])
        elif name in known and name != _PAIR_SECOND:
            if len(words) != 1:
                raise ValueError(f"{name}: expected one number, got {text!r}")
            changes[name] = int(words[0])
        else:
            raise ValueError(f"unknown IPVS tunable {name!r}")
    return replace(base or IpvsSysctl(), **changes)


def render_sysctl(sysctl: IpvsSysctl, name: str) -> str:
    """The text to write into tunable file `name` ("3 50" for `sync_threshold`).

    Raises:
        ValueError: `name` is not a tunable file.
    """
    if name == _PAIR_FILE:
        return f"{sysctl.sync_threshold} {sysctl.sync_period}"
    if name not in sysctl_files():
        raise ValueError(f"unknown IPVS tunable {name!r}")
    return str(getattr(sysctl, name))


class IpvsProcFs:
    """Blocking access to the IPVS files of the calling process's network namespace.

    Args:
        proc: where procfs is mounted (tests point it at a directory tree of their own).
    """

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._sysctl_dir = proc / "sys/net/ipv4/vs"

    def read_conn_table(self) -> tuple[ConnStatus, ...]:
        """The connection table; () when IPVS is not loaded (the file does not exist)."""
        try:
            text = (self._proc / "net/ip_vs_conn").read_text(encoding="latin-1")
        except FileNotFoundError:
            return ()
        return parse_conn_table(text)

    def read_conn_tab_size(self) -> int:
        """The connection hash table size (`ipvsadm -Ln`'s "size=").

        Raises:
            NotSupported: IPVS is not loaded.
        """
        try:
            text = (self._proc / "net/ip_vs").read_text(encoding="latin-1")
        except FileNotFoundError:
            raise NotSupported("read /proc/net/ip_vs", errno.ENOENT, "IPVS is not loaded") from None
        return parse_conn_tab_size(text)

    def read_sysctl(self) -> tuple[IpvsSysctl, frozenset[str]]:
        """The current tunables, and the names of those this kernel does not have.

        Absent tunables keep `IpvsSysctl`'s defaults in the returned value.

        Raises:
            NotSupported: the directory does not exist (IPVS is not loaded).
        """
        if not self._sysctl_dir.is_dir():
            raise NotSupported(
                "read /proc/sys/net/ipv4/vs", errno.ENOENT, "IPVS is not loaded (no tunables)"
            )
        values: dict[str, str] = {}
        absent: set[str] = set()
        for name in sysctl_files():
            try:
                values[name] = (self._sysctl_dir / name).read_text(encoding="ascii")
            except FileNotFoundError:
                absent.add(name)
        return parse_sysctl(values), frozenset(absent)

    def write_sysctl(self, sysctl: IpvsSysctl, names: Iterable[str]) -> None:
        """Write the tunables `names` (file names) with the values of `sysctl`, in order.

        Raises:
            NotSupported: a named tunable does not exist on this kernel.
            KernelError: the kernel refused a value (errno of the write, e.g. EINVAL).
            ValueError: a name is not an IPVS tunable.
        """
        for name in names:
            text = render_sysctl(sysctl, name)
            path = self._sysctl_dir / name
            op = f"sysctl net.ipv4.vs.{name}"
            try:
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError:
                raise NotSupported(op, errno.ENOENT, f"{op}: not on this kernel") from None
            except OSError as exc:
                raise KernelError(op, exc.errno or errno.EIO, f"{op}: {exc.strerror}") from None
            try:
                os.write(fd, (text + "\n").encode("ascii"))
            except OSError as exc:
                code = exc.errno or errno.EIO
                raise KernelError(op, code, f"{op} = {text!r}: {os.strerror(code)}") from None
            finally:
                os.close(fd)
