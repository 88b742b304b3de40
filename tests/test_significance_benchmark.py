"""benchmarks/significance.py, section 3: variance components, power at S seeds, projected time."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("significance_bench", REPO / "benchmarks" / "significance.py")
stats = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stats)


def _examples(rng, delta, sd_seed, sd_example, sd_residual, n_seeds=12, n=400):
    """examples.csv rows of a method and a baseline whose paired differences have the given
    components (the baseline's scores are a shared per-example level, which pairing removes)."""
    rows = []
    for b in ("id", "hard"):
        level = rng.normal(30, 10, n)
        effect = rng.normal(0, sd_example, n)
        for s in range(n_seeds):
            a = rng.normal(0, sd_seed)
            for method, score in (("sft", level),
                                  ("kd", level + delta + a + effect + rng.normal(0, sd_residual, n))):
                rows += [{"method": method, "variant": "default", "benchmark": b, "seed": s,
                          "example_id": f"{b}-{i}", "eval_seed": 10, "rouge_l": v} for i, v in enumerate(score)]
    return pd.DataFrame(rows)


def test_components_recover_planted_variances():
    comp = stats.components(_examples(np.random.default_rng(0), 2.0, 1.0, 5.0, 12.0), "kd", "sft")
    assert comp["n_seeds"] == 12
    assert abs(comp["delta"] - 2.0) < 1.2
    for c in comp["benchmarks"].values():
        assert c["n"] == 400
        assert abs(c["sd_residual"] - 12.0) < 0.5
        assert abs(c["sd_example"] - 5.0) < 1.0
    assert 0.4 < comp["sd_seed"] < 1.8


def test_seed_power_is_the_size_under_the_null_and_grows_with_seeds():
    comp = {"delta": 0.0, "n_seeds": 3, "sd_seed": 1.0,
            "benchmarks": {"id": {"n": 100, "sd_example": 3.0, "sd_residual": 10.0}}}
    raw, strict = stats.seed_power(comp, 4, 20, 400, 0)
    assert 0.01 <= raw <= 0.10 and strict <= raw
    comp["delta"] = 2.0
    powers = [stats.seed_power(comp, s, 20, 300, s)[1] for s in (3, 12)]
    assert powers[0] < 0.5 < powers[1]


def test_projected_minutes_adds_the_distill_cpu_seconds_per_extra_seed(tmp_path):
    md = tmp_path / "pipeline_x.md"
    md.write_text("Measured on x86_64, 2 cores, `snakemake --cores all`\n\n"
                  "| end to end, first run | 10.0 min (600 s) |\n\n"
                  "| rule | count | sum | mean | cpu_sum |\n|:--|--:|--:|--:|--:|\n"
                  "| distill          |      28 | 1356.8 |   48.5 |    1200.0 |\n")
    assert stats.projected_minutes(md, 3, 3) == 10.0
    assert abs(stats.projected_minutes(md, 6, 3) - (600 + 1200 / 2) / 60) < 1e-9


def test_components_name_the_methods_a_comparison_can_use():
    with pytest.raises(SystemExit, match="'gkd' has no main-table runs.*'kd', 'sft'"):
        stats.components(_examples(np.random.default_rng(0), 2.0, 1.0, 5.0, 12.0, n_seeds=2, n=3), "gkd", "sft")
