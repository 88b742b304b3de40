"""Do the tables' † marks mark noise? Calibration, power and seed counts of the tables' test,
simulated from variance components estimated from a profile's own per-example scores.

    python benchmarks/significance.py [--tables results/default/tables] [--tables-n 2000]

1. Components. The main table's students (identical runs counted once, `kdbench.tables.same_runs`),
   their seed × example Rouge-L (`seed_example_blocks`), each method's part centred on the mean
   over methods (what pairing leaves), split by moments into: teacher (student seed k distils
   from teacher seed k mod T, so seeds that share a teacher share it), seed within teacher,
   seed × test set, method × example (a method's own effect on an example, the same for every
   seed) and residual. Example-level components per method (many df); seed-level components
   pooled over methods (each method's rest on 2 df).
2. Null tables: every method equal, each with its own draws of these components; every method
   tested against the baseline. Per-cell size at α and at α/m (m = the primary family: one avg
   test per method), and the whole-table false-mark rate (at least one † after Holm's correction
   over the family). Compared: the tables' test (`crossed_mean_test`: crossed variance, df S − 1),
   the same variance with Satterthwaite's df (the test before), a plain paired t over seed means
   (df S − 1), and a t over teacher means (df T − 1, the test that models the shared teacher).
   Designs: the profile's (shared teachers), every seed its own teacher, and per-method
   seed-level components instead of pooled ones.
3. Power at the observed effects: the same tables with every method's observed difference per
   test set planted; per method, the share of tables where its avg is marked.
4. Seeds for 80% power, as a range: one comparison (`--compare kd sft`), its own components;
   its seed variance rests on S − 1 df, so the seed count is given at the ends of that
   variance's 80% confidence interval as well as at the estimate; each seed its own teacher;
   the cold wall time of the profile at S seeds from its pipeline benchmark.
5. Time to build the main table.
Results: benchmarks/results/significance.{md,csv} and significance_seeds.csv (overwritten).
"""
from __future__ import annotations

import argparse
import os
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

ALPHA = T.ALPHA
POWER = 0.8


# --------------------------------------------------------------------------- 1. components
def student_scores(t: dict, baseline: str = "kd"):
    """The main table's students from the long tables `t` (runs, examples, ablations):
    (labels, arrays, teacher_of, base). arrays: one (M, S, N_b) array per test set of Rouge-L
    (mean over sampling seeds), methods × training seeds × examples (the seeds and example ids
    every method has); rows with identical runs once; teacher_of (S,): each student seed's
    teacher seed (k mod the number of teacher seeds); base: the baseline's index."""
    runs, examples = t["runs"], t["examples"]
    benchmarks = T.benchmarks_of(runs)
    rows = {T.row_label(m, v): (m, v) for m, v in T.main_rows(runs, t["ablations"]) if m != T.TEACHER}
    blocks = T.seed_example_blocks(examples, set(rows.values()))
    rows = {k: v for k, v in rows.items() if all(v + (b,) in blocks for b in benchmarks)}
    same = T.same_runs(T.run_scores(runs, benchmarks), rows, blocks)
    rows = {k: v for k, v in rows.items() if not any(k in o for o in same.values())}
    if baseline not in rows:
        raise SystemExit(f"no {baseline!r} row with per-example scores in these tables.")
    frames = {b: [blocks[key + (b,)] for key in rows.values()] for b in benchmarks}
    seeds = sorted(set.intersection(*(set(f.index) for fs in frames.values() for f in fs)))
    arrays = []
    for fs in frames.values():
        ids = sorted(set.intersection(*(set(f.loc[seeds].dropna(axis=1).columns) for f in fs)))
        arrays.append(np.stack([f.loc[seeds, ids].to_numpy() for f in fs]))
    n_teachers = max(1, runs.loc[runs["method"] == T.TEACHER, "seed"].nunique())
    return list(rows), arrays, np.array(seeds) % n_teachers, list(rows).index(baseline)


def _decentre(v: np.ndarray) -> np.ndarray:
    """Per-method variances from a moment estimate `v` (M,) computed on each method's part
    minus the mean over the M methods: E[v_m] = σ²_m (1 − 2/M) + Σσ²/M²."""
    M = len(v)
    total = v.sum() * M / (M - 1)
    return (v - total / M ** 2) / (1 - 2 / M)


def components(arrays, teacher_of) -> dict:
    """Variance components of each method's own part of the scores (`arrays`: (M, S, N_b) per
    test set, M ≥ 3): per method (M,) "teacher", "seed" (within teacher), "seed_test_set",
    and (M, J) "example" (method × example) and "residual"; unbiased moment estimates, not
    clipped. A teacher component needs fewer teacher seeds than training seeds and at least
    two; otherwise the teacher's variance is in "seed" (one teacher per seed) or constant
    (one teacher for all seeds)."""
    centred = [y - y.mean(axis=0) for y in arrays]  # what pairing leaves: (M, S, N_b)
    M, S = centred[0].shape[:2]
    J = len(centred)
    n = np.array([z.shape[-1] for z in centred])
    ms = [T.mean_squares(z) for z in centred]
    ms_ex, ms_res = (np.stack([m[i] for m in ms], axis=1) for i in (0, 1))  # (M, J)
    cell = np.stack([z.mean(axis=-1) for z in centred], axis=-1)  # (M, S, J)
    cell = cell - cell.mean(axis=1, keepdims=True)  # less the method's own effect per test set
    u = cell.mean(axis=-1)  # seed means (M, S)
    noise = (ms_res / n).mean(axis=1)  # residual share of a seed × test set mean
    if J > 1:
        ms_int = ((cell - u[..., None]) ** 2).sum(axis=(1, 2)) / ((S - 1) * (J - 1))
        seed_test_set = ms_int - noise
    else:
        ms_int, seed_test_set = noise, np.zeros(M)
    nu = ms_int / J  # what seed × test set and residual add to a seed mean's variance
    groups = [np.flatnonzero(teacher_of == g) for g in np.unique(teacher_of)]
    if 2 <= len(groups) < S:
        g_means = [u[:, idx].mean(axis=1) for idx in groups]
        within = sum(((u[:, idx] - g[:, None]) ** 2).sum(axis=1) for idx, g in zip(groups, g_means)) / (S - len(groups))
        between = sum(len(idx) * (g - u.mean(axis=1)) ** 2 for idx, g in zip(groups, g_means)) / (len(groups) - 1)
        n0 = (S - sum(len(idx) ** 2 for idx in groups) / S) / (len(groups) - 1)
        seed, teacher = within - nu, (between - within) / n0
    else:
        seed, teacher = u.var(axis=1, ddof=1) - nu, np.zeros(M)
    out = {"teacher": teacher, "seed": seed, "seed_test_set": seed_test_set,
           "example": (ms_ex - ms_res) / S, "residual": ms_res}
    out = {k: np.apply_along_axis(_decentre, 0, v) for k, v in out.items()}
    return {**out, "n": n, "teacher_of": np.asarray(teacher_of)}


def design(comp: dict, pooled_seed: bool = True, teacher_of=None) -> dict:
    """The variances to simulate: the components clipped at 0, the seed-level ones (teacher,
    seed, seed × test set) replaced by their mean over methods if `pooled_seed`;
    teacher_of: another seeds-to-teachers map (e.g. one teacher per seed)."""
    out = {k: np.maximum(v, 0.0) for k, v in comp.items() if k not in ("n", "teacher_of")}
    if pooled_seed:
        for k in ("teacher", "seed", "seed_test_set"):
            out[k] = np.full_like(out[k], max(0.0, float(comp[k].mean())))
    out["n"] = comp["n"]
    out["teacher_of"] = np.asarray(comp["teacher_of"] if teacher_of is None else teacher_of)
    return out


# --------------------------------------------------------------------------- 2. simulation
def simulate(rng, d: dict, n_tables: int, effects=None) -> list[np.ndarray]:
    """Scores of `n_tables` tables under the design `d`: one (n_tables, M, S, N_b) array per
    test set. Each method draws its own teacher (shared by the seeds with the same teacher
    seed), seed, seed × test set, example and residual terms; effects (M, J): fixed
    differences per method and test set (None: the null, all methods equal)."""
    M, J = d["example"].shape
    tof = d["teacher_of"]
    S = len(tof)
    sd = {k: np.sqrt(d[k]) for k in ("teacher", "seed", "seed_test_set", "example", "residual")}
    level = (rng.standard_normal((n_tables, M, tof.max() + 1))[:, :, tof] * sd["teacher"][:, None]
             + rng.standard_normal((n_tables, M, S)) * sd["seed"][:, None])
    out = []
    for j, n in enumerate(d["n"]):
        y = (level + rng.standard_normal((n_tables, M, S)) * sd["seed_test_set"][:, None])[..., None]
        y = y + rng.standard_normal((n_tables, M, 1, n)) * sd["example"][:, j, None, None]
        y = y + rng.standard_normal((n_tables, M, S, n)) * sd["residual"][:, j, None, None]
        if effects is not None:
            y = y + effects[:, j, None, None]
        out.append(y)
    return out


def _seed_means(blocks):
    return np.mean([x.mean(axis=-1) for x in blocks], axis=0)  # (..., S)


def p_tables(blocks):
    """The tables' test (`kdbench.tables.crossed_mean_test`)."""
    return T.crossed_mean_test(blocks)[3]


def p_satterthwaite(blocks):
    """The test before: the same variance, Satterthwaite's degrees of freedom."""
    a = _seed_means(blocks)
    S, J = a.shape[-1], len(blocks)
    terms = [(a.var(axis=-1, ddof=1) / S, S - 1)]
    for x in blocks:
        N = x.shape[-1]
        ms_ex, ms_res = T.mean_squares(x)
        on = ms_ex > ms_res
        scale = S * N * J * J
        terms += [(np.where(on, ms_ex / scale, 0.0), N - 1),
                  (np.where(on, -ms_res / scale, 0.0), (S - 1) * (N - 1))]
    var = sum(v for v, _ in terms)
    df = var ** 2 / sum(v * v / k for v, k in terms)
    return 2 * T.t_sf_array(np.abs(a.mean(axis=-1)) / np.sqrt(var), df)


def p_paired_t(blocks):
    """The paired t over seed means, df S − 1 (no example term)."""
    a = _seed_means(blocks)
    S = a.shape[-1]
    return 2 * T.t_sf_array(np.abs(a.mean(axis=-1)) / np.sqrt(a.var(axis=-1, ddof=1) / S), S - 1)


def p_teacher_t(blocks, teacher_of):
    """A t over teacher means (each the mean of its student seeds), df T − 1: models the
    shared teacher, at the price of T − 1 degrees of freedom."""
    a = _seed_means(blocks)
    g = np.stack([a[..., teacher_of == k].mean(axis=-1) for k in np.unique(teacher_of)], axis=-1)
    T_ = g.shape[-1]
    return 2 * T.t_sf_array(np.abs(g.mean(axis=-1)) / np.sqrt(g.var(axis=-1, ddof=1) / T_), T_ - 1)


TABLES_TEST, BEFORE = "crossed variance, df S−1 (the tables' test)", "crossed variance, Satterthwaite df (before)"
PAIRED_T, TEACHER_T = "paired t over seed means, df S−1", "t over teacher means, df T−1"
TESTS = {TABLES_TEST: p_tables, BEFORE: p_satterthwaite, PAIRED_T: p_paired_t, TEACHER_T: p_teacher_t}


def cell_pvalues(scores, base: int, test, teacher_of) -> np.ndarray:
    """p of every cell of simulated tables: (n_tables, M − 1, J + 1), each method other than
    `base` against it, per test set then avg."""
    others = [m for m in range(scores[0].shape[1]) if m != base]
    diffs = [y[:, others] - y[:, [base]] for y in scores]
    call = (lambda b: test(b, teacher_of)) if test is p_teacher_t else test
    return np.stack([call([d]) for d in diffs] + [call(diffs)], axis=-1)


def holm_rows(p: np.ndarray) -> np.ndarray:
    """Holm's adjustment within each table (the last axis is the family)."""
    return np.apply_along_axis(T.holm, -1, p)


def run_tables(rng, d, base, n_tables, tests, effects=None, chunk=250) -> dict[str, np.ndarray]:
    """{test name: p (n_tables, M − 1, J + 1)} over the same simulated tables."""
    out = {name: [] for name in tests}
    for start in range(0, n_tables, chunk):
        scores = simulate(rng, d, min(chunk, n_tables - start), effects)
        for name in tests:
            out[name].append(cell_pvalues(scores, base, TESTS[name], d["teacher_of"]))
    return {k: np.concatenate(v) for k, v in out.items()}


def null_summary(p: np.ndarray, labels) -> dict:
    """Per-cell size at α (avg cells, test-set cells: min–max over methods, and the method of
    the largest avg cell among `labels`), at α/m (avg), and the whole-table false-mark rates:
    the primary family (Holm over the m avg tests) and every cell as one family (the tables
    before)."""
    m = p.shape[1]
    avg, sets = p[..., -1], p[..., :-1]
    return {"m": m, "worst_avg_cell": labels[int((avg < ALPHA).mean(axis=0).argmax())],
            "size_avg_min": (avg < ALPHA).mean(axis=0).min(), "size_avg_max": (avg < ALPHA).mean(axis=0).max(),
            "size_sets_min": (sets < ALPHA).mean(axis=0).min(), "size_sets_max": (sets < ALPHA).mean(axis=0).max(),
            "size_avg_alpha_m": (avg < ALPHA / m).mean(),
            "tables_marked": (holm_rows(avg) < ALPHA).any(axis=-1).mean(),
            "tables_marked_all_cells": (holm_rows(p.reshape(len(p), -1)) < ALPHA).any(axis=-1).mean()}


def observed_effects(arrays, base: int) -> np.ndarray:
    """(M, J): each method's mean over seeds and examples per test set, less the baseline's."""
    means = np.stack([y.mean(axis=(1, 2)) for y in arrays], axis=1)
    return means - means[base]


# --------------------------------------------------------------------------- 4. seeds
def comparison_components(examples: pd.DataFrame, method: str, baseline: str) -> dict:
    """Variance components of the paired seed × example differences method − baseline (main
    variants, Rouge-L averaged over sampling seeds, as the table's test pairs them), per
    benchmark, and the avg difference: its seed-level variance `seed_means_var` (of the seed
    means, S − 1 df) and `sd_seed` (less what examples and residual add to it)."""
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
    var = float(a.var(ddof=1))
    out.update(delta=float(a.mean()), n_seeds=len(a), seed_means_var=var, res_share=res_share,
               sd_seed=max(0.0, var - res_share) ** 0.5)
    return out


def seed_power(comp: dict, n_seeds: int, n_tests: int, sims: int, seed: int,
               seed_means_var: float | None = None) -> tuple[float, float]:
    """Share of simulated comparisons (`n_seeds` independent seeds, the components of `comp`,
    its difference planted) whose avg test (the tables' test) gives p < ALPHA, and
    p < ALPHA / n_tests (Holm's first step: marked whatever the other rows give).
    seed_means_var: the seed means' variance to assume instead of the estimate."""
    rng = np.random.default_rng(seed)
    var = comp["seed_means_var"] if seed_means_var is None else seed_means_var
    sd_seed = max(0.0, var - comp["res_share"]) ** 0.5
    p = []
    for k in range(0, sims, 250):  # chunks bound the memory: 250 × seeds × examples per test set
        n = min(250, sims - k)
        a = rng.normal(0.0, sd_seed, (n, n_seeds, 1))
        blocks = [comp["delta"] + a + rng.normal(0.0, c["sd_example"], (n, 1, c["n"]))
                  + rng.normal(0.0, c["sd_residual"], (n, n_seeds, c["n"])) for c in comp["benchmarks"].values()]
        p.append(T.crossed_mean_test(blocks)[3])
    p = np.concatenate(p)
    return float((p < ALPHA).mean()), float((p < ALPHA / n_tests).mean())


def seeds_for_power(comp, n_tests, sims, seed_means_var=None, most=60) -> int | None:
    """The smallest seed count whose power at ALPHA / n_tests reaches POWER (bisection on
    3..most; None beyond `most`)."""
    def ok(s):
        return seed_power(comp, s, n_tests, sims, s, seed_means_var)[1] >= POWER
    lo, hi = max(2, comp["n_seeds"]) - 1, most
    if not ok(hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def chi2_quantiles(df: int, qs, draws=400_000, seed=0) -> np.ndarray:
    """Quantiles of the chi-square distribution with `df` degrees of freedom, from draws (no
    scipy; ±0.5% at these sizes)."""
    return np.quantile(np.random.default_rng(seed).chisquare(df, draws), qs)


def projected_minutes(profile_md: Path, n_seeds: int, base_seeds: int, teachers: int | None = None,
                      base_teachers: int = 1) -> float:
    """Cold wall time of the profile at `n_seeds` training seeds from its pipeline benchmark
    (benchmarks/results/pipeline_<profile>.md): its end-to-end time plus the distill jobs'
    extra CPU seconds spread over the machine's cores; with `teachers`, the teacher jobs'
    (train_teacher, cache_teacher, teacher_samples) extra CPU seconds too."""
    text = profile_md.read_text()
    total = float(re.search(r"end to end, first run \| [\d.]+ min \((\d+) s\)", text).group(1))
    cores = int(re.search(r"(\d+) cores", text).group(1))

    def cpu(rule):
        m = re.search(rf"\| {rule} +\| +\d+ \| +[\d.]+ \| +[\d.]+ \| +([\d.]+) \|", text)
        return float(m.group(1)) if m else 0.0
    extra = cpu("distill") * (n_seeds - base_seeds) / base_seeds
    if teachers is not None:
        extra += sum(cpu(r) for r in ("train_teacher", "cache_teacher", "teacher_samples")) \
            * (teachers - base_teachers) / base_teachers
    return (total + extra / cores) / 60


# --------------------------------------------------------------------------- report
def _machine() -> str:
    """The CPU's model name and core count (the simulation's numbers do not depend on it; the
    time of section 5 does)."""
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines()
             if ln.startswith("model name")] if info.exists() else []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _rate(x, n):
    return f"{100 * x:.1f}% ± {100 * 2 * (max(x, 1 / n) * (1 - x) / n) ** 0.5:.1f}"


def _range(lo, hi):
    return f"{100 * lo:.1f}–{100 * hi:.1f}%"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default=str(REPO / "results" / "default" / "tables"))
    ap.add_argument("--tables-n", type=int, default=2000, help="simulated tables per design (≥ 1,000)")
    ap.add_argument("--compare", nargs=2, default=["kd", "sft"], metavar=("METHOD", "BASELINE"),
                    help="the comparison whose seeds are counted (section 4)")
    ap.add_argument("--seed-sims", type=int, default=2000, help="simulated comparisons per seed count")
    args = ap.parse_args(argv)
    t = T.read_tables(args.tables, ["runs", "examples", "ablations", "epochs"])
    labels, arrays, teacher_of, base = student_scores(t)
    comp = components(arrays, teacher_of)
    M, S, J = len(labels), len(teacher_of), len(arrays)
    benchmarks = T.benchmarks_of(t["runs"])
    n = args.tables_n
    print(f"{M} methods, {S} seeds, teachers {teacher_of.tolist()}", flush=True)

    # 2. null tables
    n_teach = int(teacher_of.max()) + 1
    shared = f"seeds share {n_teach} teacher{'s' * (n_teach > 1)}"
    designs = {  # name: (design, tests)
        f"the profile's: {S} seeds, {shared}": (design(comp), list(TESTS)),
        **{f"{s} seeds, {shared}": (design(comp, teacher_of=np.arange(s) % n_teach), [TABLES_TEST, PAIRED_T])
           for s in (4, 5) if s != S},
        f"{S} seeds, each its own teacher": (design(comp, teacher_of=np.arange(S)), [TABLES_TEST, PAIRED_T]),
        f"{S} seeds, {shared}, per-method seed components": (design(comp, pooled_seed=False), [TABLES_TEST]),
    }
    null_rows = []
    for k, (name, (d, tests)) in enumerate(designs.items()):
        ps = run_tables(np.random.default_rng(100 + k), d, base, n, tests)
        for test, p in ps.items():
            null_rows.append({"design": name, "test": test, "tables": n,
                              **null_summary(p, [x for i, x in enumerate(labels) if i != base])})
            print(null_rows[-1], flush=True)
    null = pd.DataFrame(null_rows)

    # 3. power at the observed effects (the profile's design)
    effects = observed_effects(arrays, base)
    d0 = design(comp)
    tests = {"tables' test": TABLES_TEST, "teacher-means t": TEACHER_T}
    ps = run_tables(np.random.default_rng(7), d0, base, n, list(tests.values()), effects=effects)
    others = [i for i in range(M) if i != base]
    power = pd.DataFrame({"row": [labels[i] for i in others],
                          "observed Δ avg": effects[others].mean(axis=1)})
    for short, test in tests.items():
        avg = ps[test][..., -1]
        power[f"marked (Holm), {short}"] = (holm_rows(avg) < ALPHA).mean(axis=0)
        power[f"p < α alone, {short}"] = (avg < ALPHA).mean(axis=0)
    main_ = T.main_table(t["runs"], t["ablations"], examples=t["examples"], epochs=t["epochs"])
    committed = dict(zip(map(T.row_label, main_["method"], main_["variant"]), main_["avg_p_holm"]))
    power["committed p (Holm)"] = power["row"].map(committed)

    # 4. seeds for 80% power, as a range
    method, baseline = args.compare
    cc = comparison_components(t["examples"], method, baseline)
    m = M - 1
    df_seed = cc["n_seeds"] - 1
    q_lo, q_hi = chi2_quantiles(df_seed, [0.9, 0.1])  # large chi² -> small variance
    scenarios = {"low end (80% CI)": cc["seed_means_var"] * df_seed / q_lo,
                 "estimate": cc["seed_means_var"],
                 "high end (80% CI)": cc["seed_means_var"] * df_seed / q_hi}
    timing = RESULTS / f"pipeline_{Path(args.tables).resolve().parent.name}.md"
    seed_rows = []
    for s in (3, 4, 5, 6, 8, 10, 12, 16, 20, 30):
        row = {"training_seeds": s}
        for name, var in scenarios.items():
            row[f"power p<α/{m}, seed var {name}"] = seed_power(cc, s, m, args.seed_sims, s, var)[1]
        row["power p<α, estimate"] = seed_power(cc, s, m, args.seed_sims, s)[0]
        if timing.exists():
            row[f"cold_min, {n_teach} teachers"] = projected_minutes(timing, s, S)
            row["cold_min, one teacher per seed"] = projected_minutes(timing, s, S, s, n_teach)
        seed_rows.append(row)
        print(row, flush=True)
    seeds = pd.DataFrame(seed_rows)
    needed = {name: seeds_for_power(cc, m, args.seed_sims, var) for name, var in scenarios.items()}
    # what sharing the teachers costs as seeds grow: the tables' test's size, teachers fixed
    growth = []
    if method not in labels or baseline not in labels:
        raise SystemExit(f"--compare: {method} and {baseline} must be rows of the main table ({labels}).")
    pair = [labels.index(baseline), labels.index(method)]
    for s in (3, 6, 12, 30):
        d = design(comp, teacher_of=np.arange(s) % n_teach)
        d = {k: (v if k in ("n", "teacher_of") else v[pair]) for k, v in d.items()}
        p = run_tables(np.random.default_rng(s), d, 0, n, [TABLES_TEST])[TABLES_TEST][..., -1]
        growth.append({"training_seeds": s, "teachers": n_teach, "size at α": float((p < ALPHA).mean()),
                       f"size at α/{m}": float((p < ALPHA / m).mean())})
    growth = pd.DataFrame(growth)

    # 5. time
    t0 = time.perf_counter()
    T.main_table(t["runs"], t["ablations"], examples=t["examples"], epochs=t["epochs"])
    seconds = time.perf_counter() - t0

    io.write_csv(RESULTS / "significance.csv", null)
    io.write_csv(RESULTS / "significance_seeds.csv", seeds)
    pooled = {k: float(np.maximum(comp[k].mean(), 0)) for k in ("teacher", "seed", "seed_test_set")}
    comp_table = pd.DataFrame({
        "component": ["teacher (shared by seeds with the same teacher seed)", "seed within teacher",
                      "seed × test set"] + [f"method × example, {b}" for b in benchmarks]
                     + [f"residual, {b}" for b in benchmarks],
        "variance (pooled)": [pooled["teacher"], pooled["seed"], pooled["seed_test_set"]]
                             + list(np.maximum(comp["example"], 0).mean(axis=0))
                             + list(comp["residual"].mean(axis=0)),
        "per method (min–max, unclipped)": [f"{comp[k].min():.2f} to {comp[k].max():.2f}"
                                            for k in ("teacher", "seed", "seed_test_set")]
                                           + [f"{comp['example'][:, j].min():.1f} to {comp['example'][:, j].max():.1f}" for j in range(J)]
                                           + [f"{comp['residual'][:, j].min():.1f} to {comp['residual'][:, j].max():.1f}" for j in range(J)],
    })
    shown = null.assign(
        **{"size at α, avg cells": [_range(a, b) for a, b in zip(null["size_avg_min"], null["size_avg_max"])],
           "size at α, test-set cells": [_range(a, b) for a, b in zip(null["size_sets_min"], null["size_sets_max"])],
           f"size at α/{m}, avg cells": [f"{100 * x:.2f}%" for x in null["size_avg_alpha_m"]],
           f"tables with a † (Holm over the {m} avg tests)": [_rate(x, n) for x in null["tables_marked"]],
           f"tables with a † (Holm over all {m * (J + 1)} cells)": [_rate(x, n) for x in null["tables_marked_all_cells"]]}
    ).rename(columns={"worst_avg_cell": "largest avg cell at α"}).drop(columns=["tables", "m", "size_avg_min", "size_avg_max", "size_sets_min", "size_sets_max",
                    "size_avg_alpha_m", "tables_marked", "tables_marked_all_cells"])
    rel = Path(args.tables).resolve()
    rel = rel.relative_to(REPO) if rel.is_relative_to(REPO) else rel
    needed_text = {k: (f"{v}" if v is not None else "more than 60") for k, v in needed.items()}
    md = [
        "# Statistics: calibration, power and seed counts of the tables' test", "",
        f"Machine: {_machine()}; `python benchmarks/significance.py "
        f"--tables {rel} --tables-n {n} --seed-sims {args.seed_sims}`. Monte-Carlo error: ± two "
        "standard errors.", "",
        "## 1. Variance components", "",
        f"From {rel}/examples.csv.gz: {M} distinct student rows of the main table (identical runs "
        f"counted once), {S} training seeds (student seed k distils from teacher seed "
        f"k mod {n_teach}: teachers {teacher_of.tolist()}), {J} test sets of "
        f"{', '.join(str(x) for x in comp['n'])} examples. Each method's scores less the mean over "
        "methods (what pairing by seed and example leaves), split by moments (Rouge-L², per "
        "method; a difference of two methods has twice these):", "",
        comp_table.to_markdown(index=False, floatfmt=".2f"), "",
        "The seed-level components of one method rest on 2 degrees of freedom (1 for the teacher), "
        "so the simulation pools them over methods; the last design below uses each method's own "
        "(clipped at 0) instead.", "",
        "## 2. Null tables", "",
        f"{n} simulated tables per design: every method equal, each with its own draws of the "
        f"components, {M - 1} methods tested against the baseline ({labels[base]}). Size: the "
        "share of tables where one cell has p below the level (min–max over methods); a table "
        "is marked when a test survives Holm's correction over its family.", "",
        shown.to_markdown(index=False), "",
        "## 3. Power at the observed effects", "",
        f"{n} tables of the profile's design with every method's observed difference to "
        f"{labels[base]} per test set planted; the share of tables where the row's avg is marked "
        f"(Holm over the {m} rows), and where its p < α alone:", "",
        power.to_markdown(index=False, floatfmt=("", ".2f", ".3f", ".3f", ".3f", ".3f", ".3f")), "",
        "The planted differences are the observed ones, which a table that passed a selection "
        "would overstate.", "",
        f"## 4. How many training seeds: {method} against {baseline}", "",
        f"The committed table: {method} − {baseline} = {cc['delta']:+.2f} avg Rouge-L over "
        f"{cc['n_seeds']} seeds; the variance of its seed means {cc['seed_means_var']:.3f} "
        f"({df_seed} df), of which examples and residual explain {cc['res_share']:.3f}. Its 80% "
        f"confidence interval: {scenarios['low end (80% CI)']:.3f} to "
        f"{scenarios['high end (80% CI)']:.3f} (× {df_seed}/χ² quantiles). Power of the tables' "
        f"test at S independent seeds (each its own teacher), {args.seed_sims} simulated "
        f"comparisons each, the difference planted: p < α/{m} (Holm's first step: marked "
        f"whatever the other rows give) at the three seed variances, and p < α at the estimate. "
        f"cold_min: the profile's cold wall time at S seeds, projected from "
        f"{timing.relative_to(REPO)} (the distill jobs' CPU seconds scale with S; in the last "
        "column the teacher jobs' scale with the number of teachers), spread over its cores.", "",
        seeds.to_markdown(index=False, floatfmt=("g",) + (".3f",) * 4 + (".1f",) * 2), "",
        f"**Seeds for 80% power at α/{m}: {needed_text['estimate']} at the estimated seed variance; "
        f"{needed_text['low end (80% CI)']} to {needed_text['high end (80% CI)']} over its 80% "
        "confidence interval.**", "",
        f"What the shared teachers cost as seeds grow: the tables' test's size on the avg of "
        f"{method} − {baseline} under the null, with {n_teach} teachers shared by the seeds "
        f"(k mod {n_teach}) and these pooled components, {n} tables each:", "",
        growth.to_markdown(index=False, floatfmt=("g", "g", ".3f", ".3f")), "",
        "## 5. Time", "",
        f"Main table of {rel} with every test: {seconds:.2f} s (load average "
        f"{Path('/proc/loadavg').read_text().split()[0] if Path('/proc/loadavg').exists() else '?'}).",
    ]
    io.write_text(RESULTS / "significance.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
