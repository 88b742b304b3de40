"""Publication tables from the long tables that the DAG's `collect` step writes.

Inputs follow the contract of `results/<profile>/tables/` (runs.csv, examples.csv.gz,
epochs.csv, ablations.csv; see `read_tables`). Outputs:

* `main_table`     teacher first, then every student (method, variant) of the main grid;
                    one column per benchmark plus "avg"; Rouge-L mean ± std over training
                    seeds, and each student's difference to kd with its 95% interval.
* `with_baselines` a main table with the trivial baselines' rows appended (baselines.csv).
* `ablation_table` one row per ablation name (config order), compared with "full" likewise.
* `runtime_table`  training wall time, throughput, examples seen, time relative to kd, and
                   the shape of the answers (length against the reference, share capped
                   without EOS, repetition), which exposes degenerate answers.
* `write_table`    writes `{stem}.md`, `{stem}.csv` (numeric) and `{stem}.tex` (booktabs).
* `build_all`      everything above from a tables directory (what the DAG rule calls).

The table functions return *numeric* frames: one row per table row (index = row label),
columns `pair, method, variant, n_seeds` and, for every value column `c`, `c_mean`, `c_std`
and (main and ablation tables) `c_lo`, `c_hi`, `c_diff`, `c_diff_lo`, `c_diff_hi`, `c_p`,
plus `same_as` and `avg_p_holm`. Formatting (± std, Δ [interval], † for a Holm-adjusted
p < 0.05, bold where a column spec asks) happens only in `format_table` / `write_table`;
what to format is described in `df.attrs` ("columns", "caption", "footnote",
"index_header"). A row with no per-example scores (or no seeds) shows dashes in the
difference columns and is left out of the test.

Significance (`significance`, `crossed_mean_test`, `holm`): every row against a baseline row,
runs paired by training seed and test examples by id, with a variance that counts both the
training seeds and the test examples, on S − 1 degrees of freedom. One primary comparison per
row, its avg against the baseline, Holm's correction over those; the per-test-set
differences are shown with their intervals, unmarked. Rows whose runs are identical are one
row (`same_runs`). Size and power of this choice, against the alternatives, in simulated
tables: benchmarks/significance.py, docs/protocol.md ("Statistics").
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench import io
from kdbench.errors import UserError
from kdbench.paths import (ABLATION_TABLE, BASELINES_TABLE, LONG_TABLES, MAIN_TABLE, RUNTIME_TABLE, TEACHER,
                           per_pair)

#: Methods shown first (after the teacher), in this order; every other method follows by name.
LEAD_METHODS = ("sft", "seqkd", "kd")
#: Significance level for the † mark.
ALPHA = 0.05
DAGGER = "†"
#: The `method` of the trivial-baseline rows (`with_baselines`): never bold, never tested.
TRIVIAL = "trivial"
#: Nicer column headers for the instruction-KD benchmarks; other names are shown as they are.
BENCHMARK_NAMES = {
    "dolly": "Dolly", "dollyeval": "Dolly", "selfinst": "SelfInst", "self_inst": "SelfInst",
    "self-inst": "SelfInst", "vicuna": "Vicuna", "sinst": "S-NI", "s-ni": "S-NI",
    "uinst": "UnNI", "unni": "UnNI", "avg": "avg",
    # the embedded synthetic suite
    "id": "ID", "paraphrase": "Paraphrase", "hard": "Hard",
}

_STR_COLUMNS = {c: str for c in ("pair", "method", "variant", "benchmark", "ablation",
                                 "example_id", "task")}
_KEY = ["method", "variant"]


# --------------------------------------------------------------------------- reading
def read_tables(tables_dir: str | Path, names: Sequence[str] | None = None
                ) -> dict[str, pd.DataFrame | None]:
    """Read the DAG's long tables from `tables_dir`.

    names: a subset of `kdbench.paths.LONG_TABLES` keys (default: all). A missing or empty file gives None.
    Key columns (pair, method, variant, benchmark, ablation, example_id, task) are read as str, and
    only empty fields as missing (`kdbench.io.read_csv`).
    """
    tables_dir = Path(tables_dir)
    out: dict[str, pd.DataFrame | None] = {}
    for name in names or LONG_TABLES:
        path = tables_dir / LONG_TABLES[name]
        if not path.exists() or path.stat().st_size == 0:
            out[name] = None
            continue
        try:
            out[name] = io.read_csv(path, dtype=_STR_COLUMNS)
        except pd.errors.EmptyDataError:
            out[name] = None
    return out


def require_columns(df: pd.DataFrame | None, columns: Sequence[str], what: str
                    ) -> pd.DataFrame:
    """`df` itself if it has `columns`; UserError naming `what` (e.g. LONG_TABLES["runs"]) if it is
    None or lacks some."""
    if df is None:
        raise UserError(f"{what} is missing; run the DAG's collect step to write it.")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{what} lacks the columns {missing}; regenerate it with the collect "
                        "step of this kdbench version.")
    return df


def select_pair(df: pd.DataFrame, pair: str | None = None) -> pd.DataFrame:
    """Rows of one teacher–student pair: `pair`, or the only pair present.

    Raises UserError if `pair` is absent or if several pairs are present and none is named.
    A frame without a `pair` column is returned unchanged.
    """
    if df is None or "pair" not in df.columns or df.empty:
        return df
    pairs = list(pd.unique(df["pair"]))
    if pair is None:
        if len(pairs) > 1:
            raise UserError(f"the table holds several pairs {pairs}; pass pair=... to choose one.")
        return df
    if pair not in pairs:
        raise UserError(f"pair {pair!r} is not in the table (it has {pairs}); pick one of those.")
    return df[df["pair"] == pair]


# --------------------------------------------------------------------------- rows
def row_label(method: str, variant: str, ablation_names: Sequence[str] = ()) -> str:
    """'method' for the default variant, else 'method (variant)'; ablation names replace the
    slug where given (e.g. 'cpd (no_curriculum)')."""
    if variant == "default":
        return method
    return f"{method} ({'/'.join(ablation_names) if ablation_names else variant})"


def order_key(method: str, variant: str) -> tuple:
    """Sort key of rows: teacher, sft, seqkd, kd, then other methods by name; within a
    method the default variant first, then variants by slug."""
    if method == TEACHER:
        rank = 0
    elif method in LEAD_METHODS:
        rank = 1 + LEAD_METHODS.index(method)
    else:
        rank = 1 + len(LEAD_METHODS)
    return (rank, method, variant != "default", variant)


def _ablation_pairs(ablations: pd.DataFrame | None) -> set[tuple[str, str]]:
    if ablations is None or ablations.empty:
        return set()
    require_columns(ablations, ["ablation", "method", "variant"], LONG_TABLES["ablations"])
    return set(zip(ablations["method"], ablations["variant"]))


def main_rows(runs: pd.DataFrame, ablations: pd.DataFrame | None = None
              ) -> list[tuple[str, str]]:
    """The (method, variant) rows of the main table, in display order.

    Every (method, variant) of `runs` except those that appear only as ablation rows: a pair
    listed in ablations.csv is dropped unless its variant is "default".
    """
    abl = _ablation_pairs(ablations)
    present = runs[_KEY].drop_duplicates().itertuples(index=False, name=None)
    keep = [(m, v) for m, v in present if v == "default" or (m, v) not in abl]
    return sorted(keep, key=lambda mv: order_key(*mv))


def benchmarks_of(runs: pd.DataFrame) -> list[str]:
    """Benchmarks in order of first appearance in runs.csv (the config order)."""
    return [str(b) for b in pd.unique(runs["benchmark"])]


# --------------------------------------------------------------------------- statistics
def run_scores(runs: pd.DataFrame, benchmarks: Sequence[str]) -> pd.DataFrame:
    """Per-run Rouge-L: index (method, variant, seed), columns `benchmarks` + "avg".

    avg = the run's unweighted mean over `benchmarks` (NaN if the run lacks one of them).
    """
    dup = runs.duplicated(_KEY + ["seed", "benchmark"])
    if dup.any():
        first = runs[dup].iloc[0]
        raise UserError(
            f"runs.csv has several rows for {first['method']}/{first['variant']}/seed "
            f"{first['seed']}/{first['benchmark']}; rerun the collect step to rewrite it.")
    wide = (runs.set_index(_KEY + ["seed", "benchmark"])["rouge_l"].astype(float)
            .unstack("benchmark").reindex(columns=list(benchmarks)))
    wide["avg"] = wide[list(benchmarks)].mean(axis=1, skipna=False)
    wide.columns.name = None
    return wide


def _seed_summary(per_run: pd.DataFrame, rows: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """mean, sample std (ddof=1; NaN for one seed) and n over seeds of every column of
    `per_run` (index (method, variant, seed)), one output row per label of `rows` (the
    index, named "label")."""
    g = per_run.groupby(level=_KEY)
    mean, std, n = g.mean(), g.std(ddof=1), g.size()
    keys = pd.MultiIndex.from_tuples(list(rows.values()), names=_KEY)
    out = pd.DataFrame(index=pd.Index(list(rows), name="label"))
    out["method"] = [m for m, _ in rows.values()]
    out["variant"] = [v for _, v in rows.values()]
    out["n_seeds"] = n.reindex(keys).fillna(0).astype(int).to_numpy()
    for c in per_run.columns:
        out[f"{c}_mean"] = mean[c].reindex(keys).to_numpy()
        out[f"{c}_std"] = std[c].reindex(keys).to_numpy()
    return out


def crossed_mean_test(blocks: Sequence[np.ndarray], level: float = 0.95):
    """Test and interval for the mean of seed × example scores, counting both levels of
    sampling (the training seeds and the test examples), with S − 1 degrees of freedom.

    blocks: one array (..., S, N_b) per test set: rows = training seeds (the same S seeds, in
    the same order, in every block), columns = test examples (each the mean over sampling
    seeds); leading axes, if any, are independent problems (the simulations of
    benchmarks/significance.py test thousands of tables at once). The estimate is the mean over
    test sets of each block's mean (a run's "avg" for several blocks, one test set's score for
    one). Its variance, from the components of the crossed seed × example design (two-way
    ANOVA without replication):

        V = s²(a_k) / S + Σ_b max(0, MS_ex,b − MS_res,b) / (S · N_b · J²)

    with a_k the seed's mean over the J test sets, MS_ex,b = S · var(example means) and
    MS_res,b the residual mean square of block b (`mean_squares`). The first term is the
    paired t-test's over seed means; the second adds the sampling variance of the test
    examples that every seed shares (a method × example effect does not average out over
    seeds), which the first misses. The statistic is referred to Student's t with S − 1
    degrees of freedom whatever the example term: conservative where that term is large
    (its own df are many), exact where the seeds dominate. Satterthwaite's df, which rise
    when the few seed differences happen to agree, made the test mark 27% of simulated null
    tables at three seeds (39% with Holm over every cell; docs/protocol.md, "Statistics";
    benchmarks/significance.py).
    Applied to paired differences (method − baseline, seeds paired by index, examples by id)
    this is a paired t-test over training seeds that also counts the test examples. It treats
    the S seeds as independent: with fewer teacher seeds than training seeds they are not
    (docs/protocol.md says what that costs).

    Returns (estimate, standard error, degrees of freedom S − 1, two-sided p of estimate = 0,
    half-width of the `level` interval), arrays of the leading shape (floats for 2-D
    blocks); NaN standard error, p and interval with fewer than two seeds. A zero variance
    gives p = 1 for a zero estimate and p = 0 otherwise.
    """
    blocks = [np.asarray(x, dtype=float) for x in blocks]
    J, S = len(blocks), blocks[0].shape[-2]
    seed_means = np.mean([x.mean(axis=-1) for x in blocks], axis=0)  # a_k, (..., S)
    estimate = seed_means.mean(axis=-1)
    if S < 2:
        nan = np.full_like(estimate, math.nan)
        return estimate[()], nan[()], math.nan, nan[()], nan[()]
    var = seed_means.var(axis=-1, ddof=1) / S
    for x in blocks:
        N = x.shape[-1]
        if N >= 2:
            ms_ex, ms_res = mean_squares(x)
            var = var + np.maximum(ms_ex - ms_res, 0.0) / (S * N * J * J)
    df = S - 1
    zero = var <= 1e-24 * np.maximum(1.0, estimate * estimate)
    se = np.sqrt(var)
    t = np.abs(estimate) / np.where(zero, 1.0, se)
    p = np.where(zero, (estimate == 0.0).astype(float), 2 * t_sf_array(t, df))
    se = np.where(zero, 0.0, se)
    return estimate[()], se[()], df, p[()], (t_quantile(0.5 + level / 2, df) * se)[()]


def mean_squares(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MS_ex, MS_res) of seeds × examples arrays (..., S, N), S, N >= 2: the example mean
    square S · var(example means) and the residual mean square of the two-way layout without
    replication (`crossed_mean_test`); arrays of the leading shape."""
    S, N = x.shape[-2:]
    ex = x.mean(axis=-2)  # (..., N)
    resid = x - x.mean(axis=-1, keepdims=True) - ex[..., None, :] + x.mean(axis=(-2, -1), keepdims=True)
    return S * ex.var(axis=-1, ddof=1), (resid ** 2).sum(axis=(-2, -1)) / ((S - 1) * (N - 1))


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` (> 0, real) degrees of freedom; the normal tail
    for df = inf. Through the regularised incomplete beta function:
    P(T > t) = ½ I_{df/(df+t²)}(df/2, ½) for t ≥ 0."""
    if math.isinf(df) or df > 1e7:
        return 0.5 * math.erfc(t / math.sqrt(2))
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1 - tail


#: `t_sf` element-wise over arrays of t (and df).
t_sf_array = np.vectorize(t_sf, otypes=[float])


def t_quantile(q: float, df: float) -> float:
    """The q-quantile (0.5 ≤ q < 1) of Student's t with `df` degrees of freedom: Newton's method
    on `t_sf` from 0 (the tail is convex for t > 0, so the steps rise monotonically to the
    root), to 1e-12 relative."""
    if math.isinf(df) or df > 1e7:
        log_norm = -0.5 * math.log(2 * math.pi)
        density = lambda x: math.exp(log_norm - x * x / 2)  # noqa: E731
    else:
        log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        density = lambda x: math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))  # noqa: E731
    t = 0.0
    for _ in range(200):
        step = (t_sf(t, df) - (1 - q)) / density(t)
        t += step
        if abs(step) <= 1e-12 * max(t, 1.0):
            break
    return t


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), by its continued fraction (modified Lentz), on
    the side of x where the fraction converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300

    def clamp(v):
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / clamp(1.0 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / clamp(1.0 + num * d)
            c = clamp(1.0 + num / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of the p-values `p` (any shape; NaN entries are left out
    of the family and stay NaN): the family-wise error rate of `adjusted < α` is at most α."""
    p = np.asarray(p, dtype=float)
    flat = p.ravel()
    idx = np.flatnonzero(np.isfinite(flat))
    out = np.full(flat.shape, np.nan)
    order = idx[np.argsort(flat[idx], kind="stable")]
    m = len(order)
    adjusted = np.minimum(1.0, (m - np.arange(m)) * flat[order])
    out[order] = np.maximum.accumulate(adjusted)
    return out.reshape(p.shape)


def _seed_example_scores(examples: pd.DataFrame, keys: set[tuple[str, str]]) -> pd.Series:
    """Rouge-L per (method, variant, benchmark, seed, example_id), averaged over sampling
    (eval) seeds."""
    require_columns(examples, _KEY + ["benchmark", "seed", "example_id", "rouge_l"],
                    LONG_TABLES["examples"])
    mv = pd.MultiIndex.from_frame(examples[_KEY])
    ex = examples[mv.isin(list(keys))]
    return ex.groupby(_KEY + ["benchmark", "seed", "example_id"], sort=True)["rouge_l"].mean()


def seed_example_blocks(examples: pd.DataFrame, keys: set[tuple[str, str]]
                        ) -> dict[tuple[str, str, str], pd.DataFrame]:
    """Seeds × examples frame of Rouge-L (mean over sampling seeds) of every (method, variant,
    benchmark) whose (method, variant) is in `keys`: the blocks the tables' tests read."""
    per = _seed_example_scores(examples, keys)
    return {key: g.droplevel([0, 1, 2]).unstack("example_id")
            for key, g in per.groupby(level=[0, 1, 2], sort=False)}


def significance(blocks: dict[tuple[str, str, str], pd.DataFrame], rows: dict[str, tuple[str, str]],
                 baseline: str, benchmarks: Sequence[str], level: float = 0.95) -> pd.DataFrame:
    """Intervals of every row, and of its difference to row `baseline` (a label of `rows`),
    with the tests of the primary family.

    blocks: `seed_example_blocks` of the rows. Returns a frame indexed by label with, for each
    c in `benchmarks` + "avg": `c_lo`, `c_hi` (the `level` interval of the row's mean),
    `c_diff`, `c_diff_lo`, `c_diff_hi` (its difference to the baseline and that difference's
    interval) and `c_p` (two-sided p of no difference); and `avg_p_holm`, Holm's adjustment
    over the avg p of every row tested. The family is one comparison per row, its avg against
    the baseline; the per-test-set p stay unadjusted (they are in the CSV, the tables show
    their intervals only). All by `crossed_mean_test`: a row's runs are paired with the
    baseline's by training-seed index (runs of seed k share the student initialisation and
    the teacher) and examples by example_id (inner joins). NaN for the baseline itself, the
    teacher, where a side lacks per-example scores, and with fewer than two common seeds.
    """
    cols = list(benchmarks) + ["avg"]
    stats_ = ("lo", "hi", "diff", "diff_lo", "diff_hi", "p")
    out = pd.DataFrame(np.nan, index=pd.Index(list(rows)),
                       columns=[f"{c}_{s}" for c in cols for s in stats_])
    base = {b: blocks.get(rows[baseline] + (b,)) for b in benchmarks} if baseline in rows else {}
    for label, key in rows.items():
        own = {b: blocks.get(key + (b,)) for b in benchmarks}
        if all(x is not None for x in own.values()):
            seeds = sorted(set.intersection(*(set(x.index) for x in own.values())))
            arrays = [own[b].loc[seeds].dropna(axis=1).to_numpy() for b in benchmarks]
            for c, bl in zip(cols, [[x] for x in arrays] + [arrays]):
                est, _, _, _, half = crossed_mean_test(bl, level)
                out.loc[label, [f"{c}_lo", f"{c}_hi"]] = est - half, est + half
        if label == baseline or key[0] == TEACHER or not base:
            continue
        if any(x is None for x in list(own.values()) + list(base.values())):
            continue
        seeds = sorted(set.intersection(*(set(x.index) for x in list(own.values()) + list(base.values()))))
        diffs = []
        for b in benchmarks:
            a, r = own[b].loc[seeds], base[b].loc[seeds]
            common = a.columns.intersection(r.columns)
            diffs.append((a[common] - r[common]).dropna(axis=1).to_numpy())
        for c, bl in zip(cols, [[d] for d in diffs] + [diffs]):
            est, _, _, p, half = crossed_mean_test(bl, level)
            out.loc[label, [f"{c}_diff", f"{c}_diff_lo", f"{c}_diff_hi", f"{c}_p"]] = \
                est, est - half, est + half, p
    out["avg_p_holm"] = holm(out["avg_p"].to_numpy())
    return out


def same_runs(per_run: pd.DataFrame, rows: dict[str, tuple[str, str]],
              blocks: dict[tuple[str, str, str], pd.DataFrame] | None = None) -> dict[str, list[str]]:
    """Rows whose runs are identical, found from the data: {label of the first of them (in the
    order of `rows`): the labels of the later rows that repeat it}.

    Two rows repeat each other when they name the same (method, variant), or when their runs
    have the same training seeds, the same score on every test set (`run_scores`) and, where
    `blocks` (`seed_example_blocks`) are given, the same score on every test example of every
    seed. The teacher and rows without runs are never merged. Such rows are one row and one
    test in the tables: counting them twice would only add a copy to the family.
    """
    def scores(key):
        runs = per_run.loc[key] if key in per_run.index.droplevel("seed") else None
        examples = {k[2]: v for k, v in (blocks or {}).items() if k[:2] == key}
        return runs, examples

    firsts: dict[str, tuple] = {}
    out: dict[str, list[str]] = {}
    for label, key in rows.items():
        runs, examples = scores(key)
        if key[0] == TEACHER or runs is None:
            continue
        for first, (key0, runs0, examples0) in firsts.items():
            if key == key0 or (runs.equals(runs0) and examples.keys() == examples0.keys()
                               and all(examples[b].equals(examples0[b]) for b in examples)):
                out.setdefault(first, []).append(label)
                break
        else:
            firsts[label] = (key, runs, examples)
    return out


def _same_label(label: str, others: Sequence[str], rows: dict[str, tuple[str, str]],
                epochs: pd.DataFrame | None) -> str:
    """'distillm (= srkl: never sampled)': the row and why the others repeat it — the same run,
    an on-policy run that drew no sample of its own (epochs.csv logs its on-policy batches,
    all 0), or just the same scores."""
    def never_sampled(key):
        if epochs is None or "on_policy_batch" not in epochs.columns:
            return False
        logged = epochs.loc[(epochs["method"] == key[0]) & (epochs["variant"] == key[1]),
                            "on_policy_batch"].dropna()
        return len(logged) > 0 and bool((logged == 0).all())

    why = []
    for other in others:
        a, b = rows[label], rows[other]
        reason = ("same run" if a == b else "never sampled" if never_sampled(a) or never_sampled(b)
                  else "same scores")
        why.append(f"{other}: {reason}")
    return f"{label} (= {', '.join(why)})"


# --------------------------------------------------------------------------- tables
def _over_seeds(n_seeds, kind: str) -> str:
    """'mean ± sample std over 3 training seeds', or '1 training seed, no std'."""
    n = _range_text(n_seeds)
    return f"1 {kind} seed, no std" if n == "1" else f"mean ± sample std over {n} {kind} seeds"


def _col_spec(key, header, fmt="{:.2f}", best="max", show_std=True, kind="mean") -> dict:
    """How `format_table` shows value column `key`.

    kind: "mean" (`key_mean` ± `key_std`), "diff" (`key_diff` [`key_diff_lo`, `key_diff_hi`],
    † where `key_p_holm` < ALPHA) or "p" (`key_p_holm`). best: "max", "min" or None — which
    mean is bold among students (kind "mean" only).
    """
    return dict(key=key, header=header, fmt=fmt, best=best, show_std=show_std, kind=kind)


def _range_text(values) -> str:
    vals = sorted({int(v) for v in values if pd.notna(v) and v > 0})
    if not vals:
        return "?"
    return str(vals[0]) if vals[0] == vals[-1] else f"{vals[0]}–{vals[-1]}"


_STATS = ("lo", "hi", "diff", "diff_lo", "diff_hi", "p")


def _score_table(runs, rows, index_name, examples, baseline, what, epochs) -> pd.DataFrame:
    """Shared body of the main and ablation tables: Rouge-L per row and its difference to
    row `baseline`; `what` names the rows in the caption ("method", "ablation")."""
    benchmarks = benchmarks_of(runs)
    per_run = run_scores(runs, benchmarks)
    blocks = seed_example_blocks(examples, set(rows.values())) if examples is not None else None
    same = same_runs(per_run, rows, blocks)
    merged = {label: _same_label(label, others, rows, epochs) for label, others in same.items()}
    rows = {k: v for k, v in rows.items() if not any(k in o for o in same.values())}
    baseline = next((k for k, o in same.items() if baseline in o), baseline)  # folded: its row
    df = _seed_summary(per_run, rows)
    cols = benchmarks + ["avg"]
    tested = blocks is not None and baseline in rows  # differences at least; tests from 2 seeds
    if tested:
        sig = significance(blocks, rows, baseline, benchmarks)
    else:
        sig = pd.DataFrame(np.nan, index=df.index, columns=[f"{c}_{s}" for c in cols for s in _STATS]
                           + ["avg_p_holm"])
    for c in cols:
        for s_ in _STATS:
            df[f"{c}_{s_}"] = sig[f"{c}_{s_}"].reindex(df.index).to_numpy()
    df["avg_p_holm"] = sig["avg_p_holm"].reindex(df.index).to_numpy()
    df.insert(0, "pair", runs["pair"].iloc[0] if "pair" in runs.columns and len(runs) else "")
    df["same_as"] = [", ".join(same.get(label, [])) for label in df.index]
    value = [f"{c}_{s}" for c in cols for s in ("mean", "std") + _STATS]
    df = df[["pair", "method", "variant", "same_as", "n_seeds"] + value + ["avg_p_holm"]]
    df = df.rename(index=merged)
    n_family = int(np.isfinite(df["avg_p"]).sum())

    students, teachers = df[df["method"] != TEACHER], df[df["method"] == TEACHER]
    n_seeds = _range_text(students["n_seeds"])
    n_seeds += " training seed" + ("" if n_seeds == "1" else "s")
    n_eval = _range_text(runs["n_eval_seeds"]) if "n_eval_seeds" in runs.columns else "?"
    notes = [
        f"Rouge-L F1 (×100), {_over_seeds(students['n_seeds'], 'training')}"
        + (f" (teacher: {_over_seeds(teachers['n_seeds'], 'teacher')}; not tested)" if len(teachers) else "")
        + "; each run's score is its mean over " + ("its" if n_eval == "?" else n_eval)
        + " sampling seeds. avg: a run's mean over the test sets, then mean ± std over seeds.",
    ]
    headers = {c: BENCHMARK_NAMES.get(c.lower(), c) for c in cols}
    specs = [_col_spec(c, headers[c], best=None) for c in cols]
    if not tested:
        why = ("per-example scores (examples.csv.gz) were not given" if blocks is None
               else f"the baseline row {baseline!r} is missing")
        notes.append(f"No differences or tests: {why}.")
        caption = f"Rouge-L of every {what} over {n_seeds} (no test: {why})."
    elif n_family == 0:
        specs += [_col_spec(c, f"Δ {headers[c]}", kind="diff") for c in cols]
        caption = (f"Rouge-L of every {what} over {n_seeds} and its difference Δ to {baseline} (no "
                   "interval or test: they need two training seeds).")
        notes.append(f"Δ: the row's mean minus {baseline}'s, runs paired by training seed, test "
                     "examples by id; no interval or test with fewer than two training seeds.")
    else:
        specs += [_col_spec(c, f"Δ {headers[c]}", kind="diff") for c in cols]
        specs.append(_col_spec("avg", "p (Holm)", kind="p"))
        caption = (f"Rouge-L of every {what} over {n_seeds} and its difference Δ to "
                   f"{baseline} with its 95% interval; {DAGGER} marks a Δ avg that survives Holm's "
                   f"correction over the {n_family} {what}s tested, and nothing is bold.")
        notes += [
            f"Δ: the row's mean minus {baseline}'s, [95% interval]; runs paired by training seed "
            f"(the same student initialisation and teacher), test examples by id. One test per "
            f"row, the primary comparison: Δ avg against {baseline}, {DAGGER} where its p < "
            f"{ALPHA:g} after Holm's correction over the {n_family} rows tested (p (Holm): the "
            "adjusted p). The Δ per test set are shown with their intervals only: unmarked, "
            "uncorrected.",
            f"Test and intervals: a paired t-test over the {n_seeds} (df = seeds − 1) "
            "whose variance also counts the sampling of the test examples "
            "(kdbench.tables.crossed_mean_test; docs/protocol.md, \"Statistics\", gives its size "
            "and power in simulated tables, and what it does not model: seeds that share a "
            "teacher seed). The CSV holds every number: _diff, _diff_lo, _diff_hi, _p per cell, "
            "avg_p_holm.",
            "Nothing is bold: no row is tested against the best one, and with few seeds most rows "
            "could not be told apart from it.",
        ]
    if merged:
        labels = "; ".join(merged.values())
        why = {"never sampled": "never sampled: one of them is an on-policy method whose epochs drew no sample "
                                "of the student's own, so it trained as the other",
               "same scores": "same scores: different runs whose answers score the same on every test example "
                              "of every training seed"}
        said = [text for reason, text in why.items() if f": {reason}" in labels]
        notes.append(f"{labels}: one row, one test for runs that are the same run, or that score the same on "
                     "every test example of every training seed" + (f" ({'; '.join(said)})" if said else "") + ".")
    df.attrs.update(columns=specs, caption=caption, footnote=notes, index_header=index_name)
    return df


def main_table(runs: pd.DataFrame, ablations: pd.DataFrame | None = None,
               baseline: str = "kd", examples: pd.DataFrame | None = None,
               pair: str | None = None, epochs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The main results table (numeric).

    runs: runs.csv (one row per run × benchmark); ablations: ablations.csv, used only to
    drop ablation-only variants (see `main_rows`); examples: examples.csv.gz for the
    differences to row `baseline` and their tests (None: none, said in the footnote); pair:
    which teacher–student pair (needed only when runs holds several); epochs: epochs.csv,
    only to say why two rows' runs are identical ("never sampled", see `same_runs`).
    Rows: teacher first, then sft, seqkd, kd, then the other methods by name; rows whose runs
    are identical are one row ("distillm (= srkl: never sampled)"). Columns: pair, method,
    variant, same_as (the labels folded into the row), n_seeds, and for each benchmark and
    "avg": `_mean`, `_std`, `_lo`, `_hi`, `_diff`, `_diff_lo`, `_diff_hi`, `_p`; then
    `avg_p_holm` (see `significance`).
    """
    runs = require_columns(select_pair(runs, pair), _KEY + ["seed", "benchmark", "rouge_l"],
                    LONG_TABLES["runs"])
    if runs.empty:
        raise UserError("runs.csv has no rows; run the DAG (snakemake) before making tables.")
    examples = select_pair(examples, pair) if examples is not None else None
    rows = {row_label(m, v): (m, v) for m, v in main_rows(runs, ablations)}
    df = _score_table(runs, rows, "method", examples, baseline, "method", select_pair(epochs, pair))
    df.attrs["footnote"] = [*df.attrs["footnote"], lr_note(runs)]
    return df


def lr_note(runs: pd.DataFrame) -> str:
    """How the students' learning rates were set, from the runs' own `lr` (runs.csv)."""
    students = runs[runs["method"] != TEACHER]
    lrs = sorted(students["lr"].dropna().unique()) if "lr" in students else []
    if len(lrs) > 1:
        return (f"Learning rates: per method ({', '.join(f'{v:g}' for v in lrs)}; runtime table), each chosen by "
                "its validation Rouge-L over the same grid on one seed (`snakemake tune`, "
                "benchmarks/results/tuning_<profile>.md), never by a test score.")
    if lrs:
        return f"Learning rate: {lrs[0]:g} for every student method."
    return "Learning rates: not recorded in runs.csv (runs of an older kdbench)."


def ablation_table(runs: pd.DataFrame, ablations: pd.DataFrame,
                   examples: pd.DataFrame | None = None, reference: str = "full",
                   pair: str | None = None, epochs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ablation table (numeric): one row per ablation name, in config order.

    ablations: ablations.csv (ablation, method, variant); names that share a run, or whose
    runs are identical, are one row. Same columns and statistics as `main_table`; every row is
    compared with the `reference` ("full") row. An ablation whose run is missing gives a NaN
    row (n_seeds 0).
    """
    runs = require_columns(select_pair(runs, pair), _KEY + ["seed", "benchmark", "rouge_l"],
                    LONG_TABLES["runs"])
    ablations = require_columns(ablations, ["ablation", "method", "variant"], LONG_TABLES["ablations"])
    if ablations.empty:
        raise UserError("ablations.csv has no rows; declare an ablation grid in the config.")
    examples = select_pair(examples, pair) if examples is not None else None
    rows: dict[str, tuple[str, str]] = {}
    for a, m, v in ablations[["ablation", "method", "variant"]].itertuples(index=False):
        rows.setdefault(a, (m, v))
    df = _score_table(runs, rows, "ablation", examples, reference, "ablation",
                      select_pair(epochs, pair))
    return _with_cost_ratios(df, runs)


def read_baselines(tables_dir: str | Path) -> pd.DataFrame | None:
    """baselines.csv of `tables_dir` (the `baselines` stage), or None where it is absent."""
    path = Path(tables_dir) / BASELINES_TABLE
    return pd.read_csv(path, dtype=_STR_COLUMNS | {"baseline": str}) if path.is_file() else None


def with_baselines(main: pd.DataFrame, baselines: pd.DataFrame | None) -> pd.DataFrame:
    """`main` (a `main_table` frame) with one row per trivial baseline of `baselines`
    (baselines.csv: baseline, benchmark, rouge_l; kdbench/baselines.py) after the methods:
    its Rouge-L per benchmark and avg (the mean over the table's benchmarks), method "trivial",
    variant the baseline's name, n_seeds 0. An answer that needs no model has no seeds: no
    std, no interval, no test, never bold. `main` itself when `baselines` is None or empty."""
    from kdbench.baselines import LABELS

    if baselines is None or baselines.empty:
        return main
    cols = [c.removesuffix("_mean") for c in main.columns if c.endswith("_mean")]  # benchmarks, avg
    benches = [c for c in cols if c != "avg"]
    wide = baselines.pivot(index="baseline", columns="benchmark", values="rouge_l").reindex(columns=benches)
    wide["avg"] = wide[benches].mean(axis=1, skipna=False)
    names = [b for b in LABELS if b in wide.index] + sorted(set(wide.index) - set(LABELS))
    rows = pd.DataFrame(np.nan, index=pd.Index([LABELS.get(b, b) for b in names], name=main.index.name),
                        columns=main.columns)
    rows["pair"] = main["pair"].iloc[0] if len(main) else ""
    rows["method"], rows["variant"], rows["n_seeds"] = TRIVIAL, names, 0
    for c in cols:
        rows[f"{c}_mean"] = wide.loc[names, c].to_numpy()
    out = pd.concat([main, rows.astype({c: main[c].dtype for c in ("pair", "method", "variant", "n_seeds")})])
    words = baselines.loc[baselines["baseline"] == "frequent_words", "answer_words"]
    bag = f" the {words.iloc[0]:.0f}" if len(words) else ""
    out.attrs = {**main.attrs, "footnote": list(main.attrs.get("footnote", [])) + [
        f"{TRIVIAL}: answers that need no model, scored with the same Rouge-L (kdbench/baselines.py): the input "
        f"copied (empty where a prompt has none), the instruction copied, and{bag} most frequent words of the "
        "training references, as many as the mean reference has, one fixed answer for every prompt. They have "
        "no seeds: no ±, no test. A method near or below them wins its Rouge-L without language."]}
    return out


def _with_cost_ratios(df: pd.DataFrame, runs: pd.DataFrame, baseline: str = "kd") -> pd.DataFrame:
    """Add `examples_ratio` and `time_ratio` (ratios of seed means to `baseline`'s default
    run) after the Rouge-L columns of an ablation table, when runs.csv has the cost columns:
    what each row pays for its score."""
    cost = {"train_examples": "examples_ratio", "train_wall_s": "time_ratio"}
    if not set(cost) <= set(runs.columns):
        return df
    per = runs.groupby(_KEY)[list(cost)].mean()  # values repeat per benchmark and seed
    base = per.loc[(baseline, "default")] if (baseline, "default") in per.index else None
    keys = list(zip(df["method"], df["variant"]))
    for src, key in cost.items():
        vals = per[src].reindex(pd.MultiIndex.from_tuples(keys, names=_KEY)).to_numpy(dtype=float)
        df[f"{key}_mean"] = vals / base[src] if base is not None else np.nan
    df.attrs["columns"] = df.attrs["columns"] + [
        _col_spec("examples_ratio", f"examples / {baseline}", best=None, show_std=False),
        _col_spec("time_ratio", f"time / {baseline}", best=None, show_std=False)]
    df.attrs["footnote"] = df.attrs["footnote"] + [
        f"examples / {baseline}, time / {baseline}: examples seen and training wall time over "
        f"those of {baseline} (default variant), ratios of means over seeds"
        + ("." if base is not None else f" (not available: no {baseline} run).")]
    return df


def _magnitude_fmt(values) -> str:
    """A number format suited to the largest finite value: 1,234 / 12.3 / 1.23."""
    vals = np.abs(np.asarray(values, dtype=float))
    top = np.nanmax(vals) if np.isfinite(vals).any() else 0.0
    return "{:,.0f}" if top >= 1000 else "{:.1f}" if top >= 10 else "{:.2f}"


#: Answer-shape and fluency columns of runs.csv (`kdbench.stages.evaluate`) shown in the runtime table.
ANSWER_SHAPE = {"length_ratio": "answer/ref", "capped": "capped", "repetition": "repeat",
                "teacher_nll": "teacher NLL"}


def runtime_table(runs: pd.DataFrame, epochs: pd.DataFrame | None = None,
                  baseline: str = "kd", ablations: pd.DataFrame | None = None,
                  pair: str | None = None) -> pd.DataFrame:
    """The runtime table (numeric): one row per (method, variant), every variant included.

    Per run (values of runs.csv repeat per benchmark; gen_tokens_per_s is averaged over
    benchmarks): train_wall_s (s), train_tokens_per_s, train_examples (examples seen, all
    epochs), gen_tokens_per_s; then mean ± sample std over seeds. `time_ratio` = mean wall
    time of the row / mean wall time of `baseline` (a ratio of means; no std).
    With train_gen_s in runs.csv: `gen_share` = the share of the training wall time spent
    sampling the student's own answers (on-policy methods; 0 for the others).
    With pregen_wall_s in runs.csv (some run > 0): `pregen_wall_s` = the seconds spent sampling,
    before training, the answers the run trains on (SeqKD, DistiLLM-2; not in train_wall_s).
    With `epochs` (epochs.csv): `data_fraction` = examples seen / (epochs × training-set
    size), the size being the largest epoch among the pair's students (the teacher's own for
    the teacher, which may train on another split) — below 1 for curricula that train on subsets.
    With selected_epoch and val_loss_change_last20 in runs.csv (convergence): `best_epoch`
    (the epoch kept, 1-based; mean ± std over seeds) and `val_loss_change` (the relative change
    of the validation loss over the last 20% of the steps, %, of the seed where it is largest).
    With `ablations`: non-default variants are labelled by ablation name.
    The teacher is listed first only if it was trained in this profile (finite wall time).
    """
    values = ["train_wall_s", "train_tokens_per_s", "train_examples", "gen_tokens_per_s"]
    runs = require_columns(select_pair(runs, pair), _KEY + ["seed"] + values, LONG_TABLES["runs"])
    values += [c for c in ANSWER_SHAPE if c in runs.columns]  # runs scored before they existed lack them
    by_run = runs.groupby(_KEY + ["seed"])  # runs.csv repeats a run's values per benchmark
    per_run = by_run[values].mean()
    if "train_gen_s" in runs.columns:
        per_run["gen_share"] = by_run["train_gen_s"].mean().fillna(0.0) / per_run["train_wall_s"]
    if "pregen_wall_s" in runs.columns and (runs["pregen_wall_s"].fillna(0.0) > 0).any():
        per_run["pregen_wall_s"] = by_run["pregen_wall_s"].mean().fillna(0.0)
    if "selected_epoch" in runs.columns and runs["selected_epoch"].notna().any():
        per_run["best_epoch"] = by_run["selected_epoch"].mean() + 1
        per_run["val_loss_change"] = 100 * by_run["val_loss_change_last20"].mean()
    if "lr" in runs.columns and runs["lr"].notna().any():
        per_run["lr"] = by_run["lr"].mean()
    if epochs is not None and not select_pair(epochs, pair).empty:
        ep = require_columns(select_pair(epochs, pair), _KEY + ["seed", "epoch", "n_examples"],
                      LONG_TABLES["epochs"])
        # the full set is the largest epoch among the students, or among the teacher's runs
        full = ep.groupby(ep["method"] == TEACHER)["n_examples"].transform("max")
        g = ep.assign(share=ep["n_examples"] / full).groupby(_KEY + ["seed"])
        frac = g["share"].sum() / g["epoch"].nunique()
        per_run["data_fraction"] = frac.reindex(per_run.index)
    per_run = per_run[~((per_run.index.get_level_values("method") == TEACHER)
                        & per_run["train_wall_s"].isna())]
    gap = val_rouge_gap_last20(select_pair(epochs, pair)) if epochs is not None else None

    names: dict[tuple[str, str], list[str]] = {}
    if ablations is not None and not ablations.empty:
        for a, m, v in ablations[["ablation", "method", "variant"]].itertuples(index=False):
            names.setdefault((m, v), []).append(a)
    keys = sorted({k[:2] for k in per_run.index}, key=lambda mv: order_key(*mv))
    rows = {row_label(m, v, names.get((m, v), ())): (m, v) for m, v in keys}
    df = _seed_summary(per_run, rows)
    df.insert(0, "pair", runs["pair"].iloc[0] if "pair" in runs.columns and len(runs) else "")
    base = df.loc[baseline, "train_wall_s_mean"] if baseline in df.index else np.nan
    df["time_ratio_mean"] = df["train_wall_s_mean"] / base
    df["time_ratio_std"] = np.nan
    if gap is not None and not gap.empty:
        df["val_gap_mean"] = [gap.get(mv, np.nan) for mv in rows.values()]
        df["val_gap_std"] = np.nan
    if "val_loss_change" in per_run.columns:  # the worst seed, not the mean: did every run converge?
        change = per_run["val_loss_change"]
        worst = change.groupby(level=_KEY).agg(
            lambda x: x[x.abs().idxmax()] if x.notna().any() else np.nan)  # NaN: no validation
        df["val_loss_change_mean"] = [worst.get(mv, np.nan) for mv in rows.values()]
        df["val_loss_change_std"] = np.nan

    cols = [
        _col_spec("train_wall_s", "train time (s)", _magnitude_fmt(df["train_wall_s_mean"]),
                  best="min"),
        _col_spec("train_tokens_per_s", "train tok/s",
                  _magnitude_fmt(df["train_tokens_per_s_mean"])),
        _col_spec("train_examples", "examples seen", "{:,.0f}", best=None, show_std=False),
        _col_spec("time_ratio", f"time / {baseline}", "{:.2f}", best="min", show_std=False),
        _col_spec("gen_tokens_per_s", "gen tok/s", _magnitude_fmt(df["gen_tokens_per_s_mean"])),
    ]
    if "data_fraction_mean" in df.columns:
        cols.insert(3, _col_spec("data_fraction", "data fraction", "{:.2f}", best=None,
                                 show_std=False))
    if "gen_share_mean" in df.columns:
        cols.insert(-1, _col_spec("gen_share", "on-policy gen share", "{:.2f}", best=None,
                                  show_std=False))
    if "best_epoch_mean" in df.columns:
        cols[4:4] = [_col_spec("best_epoch", "best epoch", "{:.1f}", best=None),
                     _col_spec("val_loss_change", "val-loss Δ last 20% (%)", "{:+.1f}", best=None,
                               show_std=False)]
    if "val_gap_mean" in df.columns:
        cols.insert(cols.index(next(c for c in cols if c["key"] == "time_ratio")),
                    _col_spec("val_gap", "val R-L gap last 20%", "{:.2f}", best=None, show_std=False))
    if "pregen_wall_s_mean" in df.columns:
        cols.insert(1, _col_spec("pregen_wall_s", "pre-gen time (s)", _magnitude_fmt(df["pregen_wall_s_mean"]),
                                 best=None, show_std=False))
    if "lr_mean" in df.columns:
        cols.insert(0, _col_spec("lr", "lr", "{:g}", best=None, show_std=False))
    cols += [_col_spec(key, header, "{:.2f}", best=None) for key, header in ANSWER_SHAPE.items()
             if f"{key}_mean" in df.columns]
    order = [f"{c['key']}_{s}" for c in cols for s in ("mean", "std")]
    df = df[["pair", "method", "variant", "n_seeds"] + order]
    notes = [
        "Training wall time (s), training throughput (response tokens/s) and generation "
        f"throughput (generated tokens/s): {_over_seeds(df.loc[df['method'] != TEACHER, 'n_seeds'], 'training')}. "
        "Examples seen: summed over epochs.",
        f"time / {baseline}: mean wall time over {baseline}'s mean wall time"
        + ("." if np.isfinite(base) else f" (not available: no {baseline} row)."),
        "Bold: fastest training time, highest throughput (students only).",
    ]
    if "data_fraction_mean" in df.columns:
        notes.insert(2, "Data fraction: examples seen / (epochs × training-set size).")
    if "best_epoch_mean" in df.columns:
        n_epochs = _range_text(runs.loc[runs["method"] != TEACHER, "n_epochs"]) if "n_epochs" in runs else "?"
        over = df.loc[(df["method"] != TEACHER) & (df["val_loss_change_mean"].abs() > 2.0)].index.tolist()
        notes.insert(-1, f"Best epoch: the epoch kept (best validation Rouge-L; of {n_epochs}), mean ± std "
                         "over seeds. Val-loss Δ last 20%: the relative change of the validation loss over "
                         "the last 20% of the training steps, of the seed where it is largest (negative: "
                         "still falling); beyond ±2% the run had not flattened" + (f" ({', '.join(over)})." if over else " (no student row)."))
    if "val_gap_mean" in df.columns:
        wide = df.loc[(df["method"] != TEACHER) & (df["val_gap_mean"] > 1.0)].index.tolist()
        notes.insert(-1, "Val R-L gap last 20%: the best validation Rouge-L of the seed-mean curve minus its "
                         "mean over the last 20% of the epochs; above 1 point the run had not settled at its "
                         "best" + (f" ({', '.join(wide)})." if wide else " (no student row)."))
    if "lr_mean" in df.columns:
        notes.insert(0, "lr: the peak learning rate of the row's runs"
                        + (" (per method, chosen by validation Rouge-L over a grid: `snakemake tune`)."
                           if df.loc[df["method"] != TEACHER, "lr_mean"].nunique() > 1 else "."))
    if "gen_share_mean" in df.columns:
        notes.insert(-1, "On-policy gen share: share of the training time spent sampling the "
                         "student's own answers (included in train time).")
    if "pregen_wall_s_mean" in df.columns:
        notes.insert(-1, "Pre-gen time: seconds spent, before training, sampling the answers a run trains on "
                         "(the teacher's, and for DistiLLM-2 the student's own), mean over seeds; not in train "
                         "time, and one teacher's samples serve every run that distils from that teacher.")
    if "length_ratio_mean" in df.columns:
        notes.append("Answer shape, mean over benchmarks (kdbench/metrics.py): answer/ref = mean answer "
                     "length / mean reference length, in words; capped = share of answers that hit the "
                     "generation cap without EOS; repeat = share of an answer's word trigrams that repeat "
                     "an earlier one. High values flag babbling that Rouge-L can reward.")
    if "teacher_nll_mean" in df.columns:
        notes.append("Teacher NLL: the fluency of the answers, the mean negative log-likelihood per token "
                     "(nats) that the run's teacher gives them after their prompts (kdbench/fluency.py); "
                     "word salad scores far above the teacher's own answers; comparable within a pair only.")
    df.attrs.update(columns=cols, caption="Training and generation cost per method.",
                    footnote=notes, index_header="method")
    return df


def val_rouge_gap_last20(epochs: pd.DataFrame) -> pd.Series:
    """Per (method, variant): the best validation Rouge-L of its seed-mean curve (epoch by
    epoch, mean over seeds) minus that curve's mean over the last 20% of its epochs (at least
    one). Near 0: the run stays at its best to the end; large: it ended below its best epoch
    (the seed mean keeps one noisy epoch from setting the best). Empty without val_rouge_l."""
    if epochs is None or "val_rouge_l" not in epochs or epochs["val_rouge_l"].isna().all():
        return pd.Series(dtype=float)
    curve = epochs.groupby(_KEY + ["epoch"])["val_rouge_l"].mean()
    return curve.groupby(level=_KEY).apply(lambda c: float(c.max() - last_fifth_mean(c.sort_index())))


def last_fifth_mean(values: pd.Series) -> float:
    """The mean of the last 20% of an epoch-ordered series (at least one value): the end of
    training that the convergence columns compare with the best epoch."""
    return float(values.iloc[-max(1, math.ceil(0.2 * len(values))):].mean())


# --------------------------------------------------------------------------- formatting
_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}
_TEX_UNICODE = {"±": r"$\pm$", DAGGER: r"$^{\dagger}$", "–": "--", "—": "---",
                "×": r"$\times$", "θ": r"$\theta$", "≥": r"$\geq$", "≤": r"$\leq$",
                "α": r"$\alpha$", "τ": r"$\tau$", "μ": r"$\mu$", "π": r"$\pi$",
                "Δ": r"$\Delta$"}


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and map the few non-ASCII symbols the tables use to math."""
    out = "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))
    for k, v in _TEX_UNICODE.items():
        out = out.replace(k, v)
    return out


def format_table(df: pd.DataFrame, target: str = "md") -> pd.DataFrame:
    """Strings for display, per column spec (`_col_spec`): 'mean ± std' (the best student
    mean bold where the spec asks), 'Δ [lo, hi]' with † where the Holm-adjusted p < ALPHA, or
    the adjusted p itself.

    target: "md" (**bold**, †) or "tex" (\\textbf{}, $^{\\dagger}$, escaped labels).
    Returns a frame with the row-label column first (header `df.attrs["index_header"]`) and
    one column per spec; NaN shows as an en dash.
    """
    if target not in ("md", "tex"):
        raise ValueError(f"target must be 'md' or 'tex', not {target!r}")
    specs = df.attrs.get("columns")
    if not specs:
        raise UserError("this frame has no column description in .attrs; pass a frame made by "
                        "main_table, ablation_table or runtime_table.")
    tex = target == "tex"
    pm, dash, dagger = (r" $\pm$ ", "--", r"$^{\dagger}$") if tex else (" ± ", "–", DAGGER)
    students = (~df["method"].isin([TEACHER, TRIVIAL])).to_numpy() if "method" in df.columns \
        else np.ones(len(df), bool)

    def column(name):
        return df[name].to_numpy(dtype=float) if name in df else np.full(len(df), np.nan)

    def signed(x):  # "+1.23", "-1.23" ($-$ in LaTeX)
        text = f"{x:+.2f}"
        return text.replace("-", "$-$") if tex else text

    header = df.attrs.get("index_header", "method")
    out = pd.DataFrame({header: [tex_escape(i) if tex else str(i) for i in df.index]})
    for spec in specs:
        key, fmt, kind = spec["key"], spec["fmt"], spec.get("kind", "mean")
        p_holm = column(f"{key}_p_holm")
        if kind == "p":
            cells = [dash if not np.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")
                     for p in p_holm]
        elif kind == "diff":
            d, lo, hi = column(f"{key}_diff"), column(f"{key}_diff_lo"), column(f"{key}_diff_hi")
            cells = [dash if not np.isfinite(d[i]) else signed(d[i]) if not np.isfinite(lo[i]) else
                     f"{signed(d[i])} [{signed(lo[i])}, {signed(hi[i])}]"
                     + (dagger if p_holm[i] < ALPHA else "") for i in range(len(df))]
        else:
            mean, std = column(f"{key}_mean"), column(f"{key}_std")
            shown = [fmt.format(m) if np.isfinite(m) else None for m in mean]
            best_text = None
            cand = mean[students & np.isfinite(mean)]
            if spec["best"] and cand.size and len({fmt.format(c) for c in cand}) > 1:
                # bold only where students differ at the shown precision
                best_text = fmt.format(cand.max() if spec["best"] == "max" else cand.min())
            cells = []
            for i, text in enumerate(shown):
                if text is None:
                    cells.append(dash)
                    continue
                if spec["show_std"] and np.isfinite(std[i]):
                    text += pm + fmt.format(std[i])
                if best_text is not None and students[i] and shown[i] == best_text:
                    text = rf"\textbf{{{text}}}" if tex else f"**{text}**"
                cells.append(text)
        out[tex_escape(spec["header"]) if tex else spec["header"]] = cells
    return out


# --------------------------------------------------------------------------- writing


def _write(path: Path, text: str) -> Path:
    io.write_text(path, text)  # atomic: a temporary beside it, then a rename
    return path


def _lines(footnote) -> list[str]:
    if footnote is None:
        return []
    return [footnote] if isinstance(footnote, str) else [str(x) for x in footnote]


def to_markdown(formatted: pd.DataFrame, caption: str | None = None, footnote=None) -> str:
    """A pipe table (label column left-aligned, values right-aligned) with the caption above
    and each footnote line as its own paragraph below."""
    align = ["left"] + ["right"] * (formatted.shape[1] - 1)
    body = formatted.to_markdown(index=False, colalign=align, disable_numparse=True)
    parts = ([f"**{caption}**", ""] if caption else []) + [body]
    for line in _lines(footnote):
        parts += ["", line]
    return "\n".join(parts) + "\n"


def to_latex(formatted: pd.DataFrame, caption: str | None = None, footnote=None,
             label: str | None = None, escape: bool = False) -> str:
    """A booktabs `table` float: \\toprule, header, \\midrule, rows (a \\midrule after a first
    row labelled "teacher"), \\bottomrule, then the footnote in \\footnotesize.

    `formatted` cells are used verbatim unless escape=True (plain text frames)."""
    esc = tex_escape if escape else str
    cols = list(formatted.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    if caption:
        lines.append(rf"\caption{{{tex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{l{'r' * (len(cols) - 1)}}}", r"\toprule",
              " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    first = str(formatted.iloc[0, 0]) if len(formatted) else ""
    for i, row in enumerate(formatted.itertuples(index=False)):
        lines.append(" & ".join(esc(x) for x in row) + r" \\")
        if i == 0 and first == TEACHER and len(formatted) > 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = _lines(footnote)
    if notes:
        lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize",
                  " ".join(tex_escape(n) for n in notes), r"\end{minipage}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(df_or_formatted: pd.DataFrame, out_stem: str | Path,
                caption: str | None = None, footnote=None) -> list[Path]:
    """Write `{stem}.md`, `{stem}.csv` and `{stem}.tex` atomically; return their paths.

    A numeric frame from main_table/ablation_table/runtime_table is formatted here (caption
    and footnote default to its .attrs) and its CSV keeps the numbers: the row label, pair,
    method, variant, n_seeds and `<column>_mean/_std/...` as the table has them. Any other frame is written as it
    is (its cells escaped for LaTeX).
    """
    stem = Path(out_stem)
    df = df_or_formatted
    numeric = bool(df.attrs.get("columns"))
    caption = caption if caption is not None else df.attrs.get("caption")
    footnote = footnote if footnote is not None else df.attrs.get("footnote")
    if numeric:
        md, tex = format_table(df, "md"), format_table(df, "tex")
        csv = df.reset_index().to_csv(index=False, float_format="%.10g")
        escape = False
    else:
        md = tex = df
        csv = df.to_csv(index=False)
        escape = True
    label = "tab:" + stem.name.replace("_", "-")
    paths = [
        _write(stem.with_suffix(".md"), to_markdown(md, caption, footnote)),
        _write(stem.with_suffix(".csv"), csv),
        _write(stem.with_suffix(".tex"),
                          to_latex(tex, caption, footnote, label=label, escape=escape)),
    ]
    return paths


# --------------------------------------------------------------------------- all
def build_all(tables_dir: str | Path) -> list[Path]:
    """Read the long tables of `tables_dir` and write main.*, ablation.* (only if
    ablations.csv has rows) and runtime.* next to them; return the written paths.

    With several teacher–student pairs in runs.csv, every table is written once per pair
    (file names: `kdbench.paths.per_pair`).
    """
    tables_dir = Path(tables_dir)
    t = read_tables(tables_dir, ["runs", "examples", "ablations", "epochs"])
    runs = require_columns(t["runs"], _KEY + ["pair", "seed", "benchmark", "rouge_l"],
                    str(tables_dir / LONG_TABLES["runs"]))
    ablations = t["ablations"]
    has_abl = ablations is not None and not ablations.empty
    pairs = [str(p) for p in pd.unique(runs["pair"])]
    written: list[Path] = []
    for pair in pairs:
        def dest(stem):
            return tables_dir / per_pair(stem, pair, pairs)

        r = runs[runs["pair"] == pair]
        ex = t["examples"]
        ex = ex[ex["pair"] == pair] if ex is not None else None
        ep = t["epochs"]
        ep = ep[ep["pair"] == pair] if ep is not None else None
        written += write_table(with_baselines(main_table(r, ablations, examples=ex, epochs=ep),
                                              read_baselines(tables_dir)), dest(MAIN_TABLE))
        if has_abl:
            written += write_table(ablation_table(r, ablations, examples=ex, epochs=ep),
                                   dest(ABLATION_TABLE))
        written += write_table(runtime_table(r, ep, ablations=ablations),
                               dest(RUNTIME_TABLE))
    return written
