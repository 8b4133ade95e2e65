"""pytest fixtures over the testbed (import them into a test module to use them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.testbed.topology import Testbed, Topology, leftovers, testbed

__all__ = ["bed", "topology"]


@pytest.fixture
def topology() -> Topology:
    """Override in a module (or parametrize) for another shape."""
    return Topology()


@pytest.fixture
def bed(topology: Topology) -> Iterator[Testbed]:
    with testbed(topology) as built:
        yield built
    left = leftovers(built.prefix)
    assert not left, f"testbed left behind: {left}"
