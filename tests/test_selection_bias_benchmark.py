"""benchmarks/selection_bias.py: the kept epoch's logged score against the same model re-scored,
and both against the last 20% of epochs, per (pair, method, variant)."""
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("selection_bias", REPO / "benchmarks" / "selection_bias.py")
sb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sb)


def test_summary_separates_the_selections_luck_from_the_end_of_training():
    per_run = pd.DataFrame([
        # a run whose logged best was 3 points of luck: its kept model is no better than the end
        dict(pair="p", method="a", variant="default", seed=0, epochs=20, kept_epoch=15,
             logged_best=30.0, rescored_mean=27.0, rescored_sd=1.0, last20_mean=27.5),
        dict(pair="p", method="a", variant="default", seed=1, epochs=20, kept_epoch=12,
             logged_best=28.0, rescored_mean=27.0, rescored_sd=2.0, last20_mean=26.5),
        # one whose kept model is really better than the end of training
        dict(pair="p", method="b", variant="x", seed=0, epochs=10, kept_epoch=4,
             logged_best=20.0, rescored_mean=20.0, rescored_sd=1.0, last20_mean=17.0),
    ])
    runtime = pd.DataFrame([dict(pair="p", method="a", variant="default", data_fraction_mean=1.0),
                            dict(pair="p", method="b", variant="x", data_fraction_mean=0.625)])
    out = sb.summary(per_run, runtime).set_index("method")
    assert out.loc["a", "seeds"] == 2 and out.loc["a", "bias"] == pytest.approx(2.0)
    assert out.loc["a", "gap_logged"] == pytest.approx(2.0)        # (2.5 + 1.5) / 2
    assert out.loc["a", "gap_rescored"] == pytest.approx(0.0)      # (-0.5 + 0.5) / 2
    assert out.loc["b", "bias"] == pytest.approx(0.0) and out.loc["b", "gap_rescored"] == pytest.approx(3.0)
    assert bool(out.loc["a", "all_data"]) and not bool(out.loc["b", "all_data"])
