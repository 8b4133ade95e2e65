"""`KernelIpvs` sends one request at a time on its netlink socket: the kernel runs one dump per
socket and answers a second one started meanwhile with EBUSY (seen on a 6.1 kernel when the
daemon's status read met an API read), so concurrent callers are serialized."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from hactl.ipvs.kernel import KernelIpvs
from hactl.ipvs.model import IpvsTimeouts


class OneDumpAtATime:
    """A socket that, like the kernel, refuses a request while another is in flight."""

    def __init__(self) -> None:
        self.busy = False
        self.requests = 0

    async def _do_request(self, msg: Any, msg_flags: int) -> list[Any]:
        if self.busy:
            raise NetlinkError(errno.EBUSY)
        self.busy = True
        try:
            await asyncio.sleep(0.01)  # the reply arrives later
            self.requests += 1
            return []
        finally:
            self.busy = False

    def close(self) -> None:
        pass


@pytest.mark.asyncio
async def test_concurrent_callers_never_overlap_on_the_socket() -> None:
    sock = OneDumpAtATime()
    ipvs = KernelIpvs(sock)  # type: ignore[arg-type]
    await asyncio.gather(
        ipvs.services(),
        ipvs.dump(),
        ipvs.sync_daemons(),
        ipvs.set_timeouts(IpvsTimeouts()),
        ipvs.services(),
    )
    assert sock.requests == 5
