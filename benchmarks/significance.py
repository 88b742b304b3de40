"""How often do the tables' † marks lie, and how long do the tests take?

    python benchmarks/significance.py [--tables results/default/tables] [--table-sims 200]

1. Calibration and power on simulated tables: one method against a baseline, three training
   seeds, three benchmarks (200, 150 and 80 examples) plus avg, Holm over the four tests.
   Each run has its own offset (run-to-run sd) and each (run, example) its own noise
   (per-example sd). Null tables (identical methods) should be marked at most 5% of the time;
   tables with a planted 2-point difference should be marked as often as the noise allows.
   Compared: the tables' test (`kdbench.tables.crossed_mean_test`, seed × example variance
   components) and a two-level bootstrap (resample seeds, then examples; 1,000 resamples).
2. Time to build the main table, tests included, from a profile's long tables.
3. Seeds needed: for a comparison of the profile's main table (default: kd against sft), the
   variance components of its seed × example differences (seed, example, residual), and the
   power of the table's test at S training seeds, simulated from those components with the
   observed difference planted: before correction (p < 0.05) and under the Holm threshold the
   table's most significant test must pass (p < 0.05 / m, m = the table's tests). With the
   profile's timing file, the projected cold wall time at S seeds (the distill jobs scale
   with S, the rest does not).
Results: benchmarks/results/significance.{md,csv} and significance_seeds.csv (overwritten).
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
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


def components(examples: pd.DataFrame, method: str, baseline: str) -> dict:
    """Variance components of the paired seed × example differences method − baseline (main
    variants, Rouge-L averaged over sampling seeds, as the table's test pairs them), per
    benchmark, and the avg difference."""
    names = set(examples.loc[examples["variant"] == "default", "method"])
    missing = [m for m in (method, baseline) if m not in names]
    if missing:
        raise SystemExit(f"--compare: {missing[0]!r} has no main-table runs in these tables; pick two of "
                         f"{sorted(names - {'teacher'})}.")
    blocks = T.seed_example_blocks(examples, {(method, "default"), (baseline, "default")})
    out = {"benchmarks": {}}
    seed_means = []
    for b in sorted(examples["benchmark"].unique()):
        x = (blocks[(method, "default", b)] - blocks[(baseline, "default", b)]).dropna(axis=1).to_numpy()
        S, N = x.shape
        ms_ex, ms_res = T.mean_squares(x)
        out["benchmarks"][b] = {"n": N, "sd_example": max(0.0, (ms_ex - ms_res) / S) ** 0.5,
                                "sd_residual": ms_res ** 0.5}
        seed_means.append(x.mean(axis=1))
    a = np.mean(seed_means, axis=0)
    J = len(seed_means)
    res_share = sum(c["sd_residual"] ** 2 / c["n"] for c in out["benchmarks"].values()) / J ** 2
    out.update(delta=float(a.mean()), n_seeds=len(a), sd_seed=max(0.0, float(a.var(ddof=1)) - res_share) ** 0.5)
    return out


def seed_power(comp: dict, n_seeds: int, n_tests: int, sims: int, seed: int) -> tuple[float, float]:
    """Share of simulated tables (`n_seeds` seeds, the components of `comp`, its difference
    planted) whose avg-column test gives p < ALPHA, and p < ALPHA / n_tests."""
    rng = np.random.default_rng(seed)
    raw = strict = 0
    for _ in range(sims):
        a = rng.normal(0.0, comp["sd_seed"], (n_seeds, 1))
        blocks = [comp["delta"] + a + rng.normal(0.0, c["sd_example"], (1, c["n"]))
                  + rng.normal(0.0, c["sd_residual"], (n_seeds, c["n"])) for c in comp["benchmarks"].values()]
        p = T.crossed_mean_test(blocks)[3]
        raw += p < T.ALPHA
        strict += p < T.ALPHA / n_tests
    return raw / sims, strict / sims


def projected_minutes(profile_md: Path, n_seeds: int, base_seeds: int) -> float:
    """Cold wall time of the profile at `n_seeds` training seeds from its pipeline benchmark
    (benchmarks/results/pipeline_<profile>.md): its end-to-end time plus the distill jobs'
    extra CPU seconds spread over the machine's cores."""
    text = profile_md.read_text()
    total = float(re.search(r"end to end, first run \| [\d.]+ min \((\d+) s\)", text).group(1))
    distill = float(re.search(r"\| distill +\| +\d+ \| +[\d.]+ \| +[\d.]+ \| +([\d.]+) \|", text).group(1))
    cores = int(re.search(r"(\d+) cores", text).group(1))
    return (total + distill * (n_seeds - base_seeds) / base_seeds / cores) / 60


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default=str(REPO / "results" / "default" / "tables"))
    ap.add_argument("--table-sims", type=int, default=200, help="simulated tables per cell")
    ap.add_argument("--compare", nargs=2, default=["kd", "sft"], metavar=("METHOD", "BASELINE"),
                    help="the comparison whose seeds are counted (section 3)")
    ap.add_argument("--seed-sims", type=int, default=2000, help="simulated tables per seed count")
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
    table = T.main_table(t["runs"], t["ablations"], examples=t["examples"])
    seconds = time.perf_counter() - t0

    method, baseline = args.compare
    n_tests = int(np.isfinite(table[[c for c in table.columns if c.endswith("_p")]].to_numpy()).sum())
    comp = components(t["examples"], method, baseline)
    timing = RESULTS / f"pipeline_{Path(args.tables).resolve().parent.name}.md"
    seeds = []
    for n in range(comp["n_seeds"], comp["n_seeds"] + 10):
        raw, strict = seed_power(comp, n, n_tests, args.seed_sims, n)
        seeds.append({"training_seeds": n, "power_p<0.05": raw, f"power_p<0.05/{n_tests}": strict,
                      "cold_min": projected_minutes(timing, n, comp["n_seeds"]) if timing.exists() else np.nan})
        print(seeds[-1], flush=True)
    seeds = pd.DataFrame(seeds)
    bench = pd.DataFrame([{"benchmark": b, **c} for b, c in comp["benchmarks"].items()])
    io.write_csv(RESULTS / "significance.csv", df)
    io.write_csv(RESULTS / "significance_seeds.csv", seeds)
    md = ["# Statistics: calibration, power and time", "",
          f"Machine: {platform.processor() or platform.machine()}; `python benchmarks/significance.py`.", "",
          "Share of simulated tables with at least one † (Holm over benchmarks + avg, α = 0.05); "
          "three training seeds; null = identical methods, planted = +2 Rouge-L.", "",
          df.to_markdown(index=False, floatfmt=".3f"), "",
          f"Main table of {Path(args.tables).resolve().relative_to(REPO)} with every test: {seconds:.2f} s "
          f"(load average {Path('/proc/loadavg').read_text().split()[0] if Path('/proc/loadavg').exists() else '?'}).",
          "", f"## How many training seeds: {method} against {baseline}", "",
          f"The committed table: {method} − {baseline} = {comp['delta']:+.2f} avg Rouge-L over "
          f"{comp['n_seeds']} seeds, two-sided p {table.set_index('method').loc[baseline, 'avg_p']:.3g} "
          f"before Holm's correction over the table's {n_tests} tests. Variance components of its "
          f"seed × example differences: seed sd {comp['sd_seed']:.2f} (of the avg difference); per "
          "test set:", "", bench.to_markdown(index=False, floatfmt=".2f"), "",
          f"Power of the table's test at S seeds, {args.seed_sims} simulated tables each with these "
          f"components and the difference {comp['delta']:+.2f} planted: the share with p < 0.05, and "
          f"with p < 0.05/{n_tests}, the Holm threshold of a table's most significant test (below "
          f"it a test is marked whatever the others give). cold_min: the profile's cold wall time "
          f"at S seeds, projected from {timing.relative_to(REPO)} (its distill jobs' CPU seconds "
          "scale with S, spread over its cores; nothing else changes).", "",
          seeds.to_markdown(index=False, floatfmt=("g", ".3f", ".3f", ".1f")), "",
          "The planted difference is the observed one, which a table that passed a selection would "
          "overstate; read the rows as what the committed variance allows, not as a promise."]
    io.write_text(RESULTS / "significance.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
