"""The VRRP shell's kernel timer (`TimerFd`) and the receive timestamps of the raw channel
(`kernel_receive_time`): the two pieces that keep a takeover from paying the event loop's
latency."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time

import pytest

from hactl.vrrp.socket import SO_TIMESTAMPNS, kernel_receive_time
from hactl.vrrp.timerfd import TimerFd

pytestmark = pytest.mark.asyncio

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux")


class Expiries:
    """The loop times the timer fired at; `wait` for the n-th one."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.times: list[float] = []
        self._event = asyncio.Event()

    def __call__(self) -> None:
        self.times.append(self.loop.time())
        self._event.set()

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.times) < count:
                self._event.clear()
                await self._event.wait()


@linux_only
async def test_fires_once_at_the_deadline_on_the_loop_clock() -> None:
    fired = Expiries()
    timer = TimerFd.open(fired)
    assert timer is not None
    try:
        deadline = fired.loop.time() + 0.03
        timer.arm(deadline)
        await fired.wait(1)
        assert fired.times[0] >= deadline  # never early: the loop's clock is the kernel's
        await asyncio.sleep(0.05)
        assert len(fired.times) == 1  # one shot
    finally:
        timer.close()


@linux_only
async def test_rearm_replaces_disarm_cancels_and_past_deadlines_fire_at_once() -> None:
    fired = Expiries()
    loop = fired.loop
    timer = TimerFd.open(fired)
    assert timer is not None
    try:
        timer.arm(loop.time() + 0.02)
        later = loop.time() + 0.06
        timer.arm(later)  # replaces the first arming
        await fired.wait(1)
        assert fired.times[0] >= later
        timer.arm(loop.time() + 0.02)
        timer.disarm()
        await asyncio.sleep(0.06)
        assert len(fired.times) == 1
        timer.arm(loop.time() - 1.0)  # already due
        await fired.wait(2)
    finally:
        timer.close()
    timer.close()  # twice is harmless


async def test_kernel_receive_time_moves_the_stamp_to_the_loop_clock() -> None:
    loop = asyncio.get_running_loop()

    def stamp(at: float) -> list[tuple[int, int, bytes]]:
        sec = int(at)
        return [(socket.SOL_SOCKET, SO_TIMESTAMPNS, struct.pack("@qq", sec, int((at - sec) * 1e9)))]

    before = loop.time()
    got = kernel_receive_time(stamp(time.time() - 0.25), loop)
    assert got is not None
    assert before - 0.25 - 0.05 <= got <= loop.time() - 0.25 + 0.001
    assert kernel_receive_time([], loop) is None
    # a stamp from the future or long ago means the wall clock jumped: not trusted
    assert kernel_receive_time(stamp(time.time() + 5), loop) is None
    assert kernel_receive_time(stamp(time.time() - 60), loop) is None
