"""`tune_collector`: the young-generation threshold of a data-plane process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hactl.ipvs.dataplane import GC_YOUNG_THRESHOLD, tune_collector


@pytest.fixture(autouse=True)
def _restore_threshold() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_default_threshold_is_raised_older_generations_kept() -> None:
    gc.set_threshold(700, 10, 10)
    tune_collector()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    gc.set_threshold(700, 3, 7)
    tune_collector()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 3, 7)


@pytest.mark.parametrize("young", [0, GC_YOUNG_THRESHOLD, GC_YOUNG_THRESHOLD * 5])
def test_higher_or_disabled_threshold_is_left_alone(young: int) -> None:
    gc.set_threshold(young, 4, 9)
    tune_collector()
    assert gc.get_threshold() == (young, 4, 9)
