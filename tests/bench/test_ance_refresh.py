"""bench/ance_refresh.py's arm selection (the encode arms themselves need a pool and minutes:
the bench runs them; tests/mining covers each precision and the token cache)."""

import numpy as np
import pytest

from tests.bench.conftest import bench_script


@pytest.fixture(scope="module")
def bench():
    with bench_script("ance_refresh") as module:
        yield module


def test_every_arm_without_a_selection_and_today_always_first(bench):
    names = [name for name, _ in bench.arms(0.3)]
    assert len(names) == len(bench.ARM_KEYS) == 8 and names[0].startswith("today")
    assert [name for name, _ in bench.arms(None)] == names[:5]  # no sample arms without --sample
    picked = bench.arms(0.2, ["sample-bf16", "bf16"])
    assert [name for name, _ in picked] == ["today (text, unsorted, fp32)", "+ bf16",
                                            "+ length sort + sample 0.2 + bf16"]
    assert picked[2][1] == {"tokens": True, "sort": True, "precision": "bf16", "sample": 0.2}


def test_overlap_ignores_missing_candidates(bench):
    ref = np.array([[1, 2, 3, -1], [4, 5, -1, -1]])
    assert bench.overlap(np.array([[3, 2, 9, -1], [5, 4, 7, -1]]), ref) == pytest.approx((2 / 3 + 1) / 2)
