"""benchmarks/threads.py: a method's conclusion holds when its average moves by less than the
half-width of its 95% t interval over seeds."""
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

spec = importlib.util.spec_from_file_location(
    "threads_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "threads.py")
threads = importlib.util.module_from_spec(spec)
spec.loader.exec_module(threads)


def _runs(scores):
    return pd.DataFrame({"method": "kd", "variant": "default", "seed": range(len(scores)), "rouge_l": scores})


def test_compare_half_width_delta_and_moved_seeds():
    ref = _runs([1.0, 2.0, 3.0])                    # sample std 1, 3 seeds: t(2) = 4.303
    other = _runs([1.0, 2.5, 3.0])                  # one seed moved by 0.5: the mean by 1/6
    row = threads.compare(ref, other).iloc[0]
    assert row.ci95_half_width == pytest.approx(4.303 / 3 ** 0.5, abs=0.01)
    assert row.delta == pytest.approx(0.5 / 3, abs=0.01)
    assert row.seeds_moved == 1 and bool(row.holds)


def test_compare_flags_a_move_beyond_the_interval():
    row = threads.compare(_runs([10.0, 10.1, 10.2]), _runs([11.0, 11.1, 11.2])).iloc[0]
    assert row.seeds_moved == 3 and not bool(row.holds)
