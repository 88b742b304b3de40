"""How often do the tables' † marks lie, and how long do the tests take?

    python benchmarks/statistics.py [--tables results/default/tables] [--tables-sims 200]

1. Calibration and power on simulated tables: one method against a baseline, three training
   seeds, three benchmarks (200, 150 and 80 examples) plus avg, Holm over the four tests.
   Each run has its own offset (run-to-run sd) and each (run, example) its own noise
   (per-example sd). Null tables (identical methods) should be marked at most 5% of the time;
   tables with a planted 2-point difference should be marked as often as the noise allows.
   Compared: the tables' test (`kdbench.tables.crossed_mean_test`, seed × example variance
   components) and a two-level bootstrap (resample seeds, then examples; 1,000 resamples).
2. Time to build the main table, tests included, from a profile's long tables.
Results: benchmarks/results/statistics.{md,csv} (overwritten).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdbench import io  # noqa: E402
from kdbench import tables as T  # noqa: E402

REGIMES = {"seeds dominate": (1.0, 2.0), "examples dominate": (0.2, 15.0), "both": (0.5, 5.0),
           "low noise": (0.1, 2.0)}


def simulate(rng, delta, run_sd, example_sd, n_seeds=3, n_examples=(200, 150, 80)):
    """Per benchmark, seeds × examples differences of a method and a baseline (tests/test_tables.py)."""
    offsets = rng.normal(0, run_sd, (2, n_seeds, 1))
    runs = [[offsets[r] + rng.normal(0, example_sd, (n_seeds, n)) for n in n_examples] for r in range(2)]
    return [a + delta - b for a, b in zip(*runs)]


def t_test_ps(blocks):
    return [T.crossed_mean_test([b])[3] for b in blocks] + [T.crossed_mean_test(blocks)[3]]


def bootstrap_ps(blocks, rng, n_boot=1000):
    """Two-level bootstrap: the same resampled seeds for every benchmark, examples per
    benchmark; centred two-sided p."""
    S = blocks[0].shape[0]
    seeds = rng.integers(0, S, (n_boot, S))
    w_seed = np.stack([np.bincount(r, minlength=S) for r in seeds]).astype(float)  # (B, S)
    draws, observed = [], []
    for x in blocks:
        n = x.shape[1]
        idx = rng.integers(0, n, (n_boot, n)) + n * np.arange(n_boot)[:, None]
        w_ex = np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)
        draws.append((w_seed * (w_ex @ x.T)).sum(1) / (S * n))
        observed.append(x.mean())
    draws.append(np.mean(draws, axis=0))
    observed.append(float(np.mean(observed)))
    return [(1 + np.sum(np.abs(d - o) >= abs(o))) / (n_boot + 1) for d, o in zip(draws, observed)]


def rate(test, delta, regime, n_tables, seed):
    rng = np.random.default_rng(seed)
    marked = 0
    for _ in range(n_tables):
        blocks = simulate(rng, delta, *REGIMES[regime])
        ps = test(blocks, rng) if test is bootstrap_ps else test(blocks)
        marked += bool((T.holm(np.array(ps)) < T.ALPHA).any())
    return marked / n_tables


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default=str(REPO / "results" / "default" / "tables"))
    ap.add_argument("--table-sims", type=int, default=200, help="simulated tables per cell")
    args = ap.parse_args(argv)
    rows = []
    for regime in REGIMES:
        for name, test, n in (("seed x example t-test", t_test_ps, args.table_sims),
                              ("two-level bootstrap", bootstrap_ps, max(20, args.table_sims // 5))):
            rows.append({"test": name, "regime": regime, "run_sd": REGIMES[regime][0],
                         "example_sd": REGIMES[regime][1], "tables": n,
                         "null_marked": rate(test, 0.0, regime, n, 0),
                         "planted_2pt_marked": rate(test, 2.0, regime, n, 1)})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    t = T.read_tables(args.tables, ["runs", "examples", "ablations"])
    t0 = time.perf_counter()
    T.main_table(t["runs"], t["ablations"], examples=t["examples"])
    seconds = time.perf_counter() - t0
    io.write_csv(REPO / "benchmarks" / "results" / "statistics.csv", df)
    md = ["# Statistics: calibration, power and time", "",
          f"Machine: {platform.processor() or platform.machine()}; `python benchmarks/statistics.py`.", "",
          "Share of simulated tables with at least one † (Holm over benchmarks + avg, α = 0.05); "
          "three training seeds; null = identical methods, planted = +2 Rouge-L.", "",
          df.to_markdown(index=False, floatfmt=".3f"), "",
          f"Main table of {Path(args.tables).resolve().relative_to(REPO)} with every test: {seconds:.2f} s "
          f"(load average {Path('/proc/loadavg').read_text().split()[0] if Path('/proc/loadavg').exists() else '?'})."]
    io.write_text(REPO / "benchmarks" / "results" / "statistics.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
