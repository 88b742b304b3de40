"""Publication tables from the long tables that the DAG's `collect` step writes.

Inputs follow the contract of `results/<profile>/tables/` (runs.csv, examples.csv.gz,
epochs.csv, ablations.csv; see `read_tables`). Outputs:

* `main_table`     teacher first, then every student (method, variant) of the main grid;
                   one column per benchmark plus "avg"; Rouge-L mean ± std over training seeds.
* `ablation_table` one row per ablation name (config order), tested against "full".
* `runtime_table`  training wall time, throughput, examples seen, time relative to kd, and
                   the shape of the answers (length against the reference, share capped
                   without EOS, repetition), which exposes degenerate answers.
* `write_table`    writes `{stem}.md`, `{stem}.csv` (numeric) and `{stem}.tex` (booktabs).
* `build_all`      everything above from a tables directory (what the DAG rule calls).

The table functions return *numeric* frames: one row per table row (index = row label),
columns `pair, method, variant, n_seeds` and, for every value column `c`, `c_mean`, `c_std`
and (main and ablation tables) `c_lo`, `c_hi`, `c_diff_lo`, `c_diff_hi`, `c_p`, `c_p_holm`.
Formatting (± std, bold best, † for a Holm-adjusted p < 0.05) happens only in
`format_table` / `write_table`; what to format is described in `df.attrs` ("columns",
"caption", "footnote", "index_header").

Significance (`significance`, `crossed_mean_test`, `holm`): every row against a baseline row,
runs paired by training seed and test examples by id, with a variance that counts both the
training seeds and the test examples, so that a difference that a new training seed could
undo is not marked; Holm's correction over all the tests of one table. Why not a bootstrap:
with the usual three training seeds, resampling seeds sees two degrees of freedom and
underestimates their variance, and a two-level bootstrap marked differences in about half of
simulated null tables where the seeds dominate the noise (docs/protocol.md, "Statistics").
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench import io
from kdbench.errors import UserError
from kdbench.paths import ABLATION_TABLE, LONG_TABLES, MAIN_TABLE, RUNTIME_TABLE, TEACHER, per_pair

#: Methods shown first (after the teacher), in this order; every other method follows by name.
LEAD_METHODS = ("sft", "seqkd", "kd")
#: Significance level for the † mark.
ALPHA = 0.05
DAGGER = "†"
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


def crossed_mean_test(blocks: Sequence[np.ndarray], level: float = 0.95
                      ) -> tuple[float, float, float, float, float]:
    """Test and interval for the mean of seed × example scores, counting both levels of
    sampling: the training seeds and the test examples.

    blocks: one (S, N_b) array per benchmark, rows = training seeds (the same S seeds, in the
    same order, in every block), columns = test examples (the mean over sampling seeds).
    The estimate is the mean over benchmarks of each block's mean (a run's "avg" for several
    blocks, the benchmark's score for one). Its variance is estimated by the variance
    components of the crossed seed × example design (two-way ANOVA without replication):

        V = s²(a_k) / S + Σ_b (MS_ex,b − MS_res,b) / (S · N_b · J²)

    with a_k the seed's mean over the J benchmarks, MS_ex,b = S · var(example means) and
    MS_res,b the residual mean square of block b; a negative example component is set to 0.
    The first term is the seed-level variance (as in a paired t-test over seeds), the second
    the sampling variance of the test examples that the seed means share. Degrees of freedom
    by Satterthwaite: close to S − 1 when seeds dominate, large when examples do. Applied to
    paired differences (method − baseline, seeds paired by index, examples by id) this is a
    seed-level paired t-test that also counts the test examples.

    Returns (estimate, standard error, degrees of freedom, two-sided p of estimate = 0,
    half-width of the `level` interval); NaN standard error, p and interval with fewer than
    two seeds (the seed-level variance is unknown). A zero variance gives p = 1 for a zero
    estimate and p = 0 otherwise.
    """
    blocks = [np.asarray(x, dtype=float) for x in blocks]
    J, S = len(blocks), blocks[0].shape[0]
    seed_means = np.mean([x.mean(axis=1) for x in blocks], axis=0)  # a_k, (S,)
    estimate = float(seed_means.mean())
    if S < 2:
        return estimate, math.nan, math.nan, math.nan, math.nan
    terms = [(float(seed_means.var(ddof=1)) / S, S - 1)]  # (variance term, its df)
    for x in blocks:
        N = x.shape[1]
        if N < 2:
            continue
        ms_ex, ms_res = mean_squares(x)
        scale = S * N * J * J
        if ms_ex > ms_res:
            terms += [(ms_ex / scale, N - 1), (-ms_res / scale, (S - 1) * (N - 1))]
    var = sum(v for v, _ in terms)
    if var <= 1e-24 * max(1.0, estimate * estimate):
        return estimate, 0.0, math.inf, float(estimate == 0.0), 0.0
    df = var ** 2 / sum(v * v / d for v, d in terms)
    se = math.sqrt(var)
    return estimate, se, df, 2 * t_sf(abs(estimate) / se, df), t_quantile(0.5 + level / 2, df) * se


def mean_squares(x: np.ndarray) -> tuple[float, float]:
    """(MS_ex, MS_res) of a seeds × examples array (S, N), S, N >= 2: the example mean square
    S · var(example means) and the residual mean square of the two-way layout without
    replication (`crossed_mean_test`)."""
    S, N = x.shape
    ex = x.mean(axis=0)
    resid = x - x.mean(axis=1, keepdims=True) - ex[None, :] + x.mean()
    return S * float(ex.var(ddof=1)), float((resid ** 2).sum()) / ((S - 1) * (N - 1))


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` (> 0, real) degrees of freedom; the normal tail
    for df = inf. Through the regularised incomplete beta function:
    P(T > t) = ½ I_{df/(df+t²)}(df/2, ½) for t ≥ 0."""
    if math.isinf(df) or df > 1e7:
        return 0.5 * math.erfc(t / math.sqrt(2))
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1 - tail


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


def significance(examples: pd.DataFrame, rows: dict[str, tuple[str, str]], baseline: str,
                 benchmarks: Sequence[str], level: float = 0.95) -> pd.DataFrame:
    """Intervals of every row and tests of every row against row `baseline` (a label of `rows`).

    Returns a frame indexed by label with, for each c in `benchmarks` + "avg": `c_lo`, `c_hi`
    (the `level` interval of the row's mean), `c_diff_lo`, `c_diff_hi` (of its difference to
    the baseline), `c_p` (two-sided p of no difference) and `c_p_holm` (Holm-adjusted over
    every p of the frame: the table is the family). All by `crossed_mean_test`: a row's runs
    are paired with the baseline's by training-seed index (runs of seed k share the student
    initialisation and, with several teacher seeds, the teacher) and examples by example_id
    (inner joins). NaN for the baseline itself, the teacher, where a side lacks per-example
    scores, and with fewer than two common seeds.
    """
    cols = list(benchmarks) + ["avg"]
    stats_ = ("lo", "hi", "diff_lo", "diff_hi", "p")
    out = pd.DataFrame(np.nan, index=pd.Index(list(rows)),
                       columns=[f"{c}_{s}" for c in cols for s in stats_])
    blocks_of = seed_example_blocks(examples, set(rows.values()))
    base = {b: blocks_of.get(rows[baseline] + (b,)) for b in benchmarks} if baseline in rows else {}
    for label, key in rows.items():
        own = {b: blocks_of.get(key + (b,)) for b in benchmarks}
        if all(x is not None for x in own.values()):
            seeds = sorted(set.intersection(*(set(x.index) for x in own.values())))
            blocks = [own[b].loc[seeds].dropna(axis=1).to_numpy() for b in benchmarks]
            for c, bl in zip(cols, [[x] for x in blocks] + [blocks]):
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
            out.loc[label, [f"{c}_diff_lo", f"{c}_diff_hi", f"{c}_p"]] = est - half, est + half, p
    p_cols = [f"{c}_p" for c in cols]
    adjusted = holm(out[p_cols].to_numpy())
    for j, c in enumerate(cols):
        out[f"{c}_p_holm"] = adjusted[:, j]
    return out


# --------------------------------------------------------------------------- tables
def _over_seeds(n_seeds, kind: str) -> str:
    """'mean ± sample std over 3 training seeds', or '1 training seed, no std'."""
    n = _range_text(n_seeds)
    return f"1 {kind} seed, no std" if n == "1" else f"mean ± sample std over {n} {kind} seeds"


def _col_spec(key, header, fmt="{:.2f}", best="max", show_std=True) -> dict:
    """How `format_table` shows value column `key` (numeric columns key_mean/key_std/key_p_holm).

    best: "max", "min" or None — which mean is bold among students.
    """
    return dict(key=key, header=header, fmt=fmt, best=best, show_std=show_std)


def _range_text(values) -> str:
    vals = sorted({int(v) for v in values if pd.notna(v) and v > 0})
    if not vals:
        return "?"
    return str(vals[0]) if vals[0] == vals[-1] else f"{vals[0]}–{vals[-1]}"


def _score_table(runs, rows, index_name, examples, baseline, caption, baseline_role
                 ) -> pd.DataFrame:
    """Shared body of the main and ablation tables."""
    benchmarks = benchmarks_of(runs)
    per_run = run_scores(runs, benchmarks)
    df = _seed_summary(per_run, rows)
    cols = benchmarks + ["avg"]
    tested = examples is not None and baseline in rows
    stats_ = ("lo", "hi", "diff_lo", "diff_hi", "p", "p_holm")
    if tested:
        sig = significance(examples, rows, baseline, benchmarks)
    else:
        sig = pd.DataFrame(np.nan, index=df.index, columns=[f"{c}_{s}" for c in cols for s in stats_])
    for c in cols:
        for s_ in stats_:
            df[f"{c}_{s_}"] = sig[f"{c}_{s_}"].reindex(df.index).to_numpy()
    df.insert(0, "pair", runs["pair"].iloc[0] if "pair" in runs.columns and len(runs) else "")
    # Reorder to key columns, then mean/std/intervals/p per value column.
    value = [f"{c}_{s}" for c in cols for s in ("mean", "std") + stats_]
    df = df[["pair", "method", "variant", "n_seeds"] + value]
    n_tests = int(np.isfinite(df[[f"{c}_p" for c in cols]].to_numpy()).sum())

    students = df[df["method"] != TEACHER]
    teachers = df[df["method"] == TEACHER]
    n_eval = _range_text(runs["n_eval_seeds"]) if "n_eval_seeds" in runs.columns else "?"
    notes = [
        f"Rouge-L F1 (×100), {_over_seeds(students['n_seeds'], 'training')}"
        + (f" (teacher: {_over_seeds(teachers['n_seeds'], 'teacher')})" if len(teachers) else "")
        + "; each run's score is its mean over "
        + ("its" if n_eval == "?" else n_eval) + " sampling seeds. avg: a run's mean over "
        "the test sets, then mean ± std over seeds.",
        "Bold: best student per column (ties at the shown precision all bold)"
        + ("; the teacher is set apart and never bold." if (df["method"] == TEACHER).any()
           else "."),
    ]
    if examples is None:
        notes.append("No significance marks: per-example scores (examples.csv.gz) were not "
                     "given.")
    elif baseline not in rows:
        notes.append(f"No significance marks: the {baseline_role} row {baseline!r} is "
                     "missing.")
    else:
        notes.append(
            f"{DAGGER}: differs from {baseline} at p < {ALPHA:g} after Holm's correction over the "
            f"{n_tests} tests of this table. Test: two-sided paired t-test on the mean difference, "
            "runs paired by training seed and test examples by id, its variance counting both the "
            "training seeds and the test examples (seed × example variance components, "
            "Satterthwaite degrees of freedom); with one seed no test is made. 95% intervals of "
            "every mean and difference are in the CSV (columns _lo/_hi, _diff_lo/_diff_hi).")
        caption = caption.rstrip(".") + f" († Holm-corrected paired test against {baseline})."
    df.attrs.update(
        columns=[_col_spec(c, BENCHMARK_NAMES.get(c.lower(), c)) for c in cols],
        caption=caption, footnote=notes, index_header=index_name)
    return df


def main_table(runs: pd.DataFrame, ablations: pd.DataFrame | None = None,
               baseline: str = "kd", examples: pd.DataFrame | None = None,
               pair: str | None = None) -> pd.DataFrame:
    """The main results table (numeric).

    runs: runs.csv (one row per run × benchmark); ablations: ablations.csv, used only to
    drop ablation-only variants (see `main_rows`); examples: examples.csv.gz for the paired
    test against row `baseline` (None: no test, said in the footnote); pair: which
    teacher–student pair (needed only when runs holds several).
    Rows: teacher first, then sft, seqkd, kd, then the other methods by name. Columns:
    pair, method, variant, n_seeds, and for each benchmark and "avg": `_mean`, `_std`, `_lo`,
    `_hi`, `_diff_lo`, `_diff_hi`, `_p`, `_p_holm` (see `significance`).
    """
    runs = require_columns(select_pair(runs, pair), _KEY + ["seed", "benchmark", "rouge_l"],
                    LONG_TABLES["runs"])
    if runs.empty:
        raise UserError("runs.csv has no rows; run the DAG (snakemake) before making tables.")
    examples = select_pair(examples, pair) if examples is not None else None
    rows = {row_label(m, v): (m, v) for m, v in main_rows(runs, ablations)}
    return _score_table(runs, rows, "method", examples, baseline,
                        caption="Rouge-L of every distillation method.",
                        baseline_role="baseline")


def ablation_table(runs: pd.DataFrame, ablations: pd.DataFrame,
                   examples: pd.DataFrame | None = None, reference: str = "full",
                   pair: str | None = None) -> pd.DataFrame:
    """The ablation table (numeric): one row per ablation name, in config order.

    ablations: ablations.csv (ablation, method, variant); several names may share a run.
    Same columns and statistics as `main_table`; the test compares every row with the
    `reference` ("full") row. An ablation whose run is missing gives a NaN row (n_seeds 0).
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
    df = _score_table(runs, rows, "ablation", examples, reference,
                      caption="Ablations: Rouge-L of each variant.",
                      baseline_role="reference")
    return _with_cost_ratios(df, runs)


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


#: Answer-shape columns of runs.csv (`kdbench.stages.score`) shown in the runtime table.
ANSWER_SHAPE = {"length_ratio": "answer/ref", "capped": "capped", "repetition": "repeat"}


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
    if "selected_epoch" in runs.columns and runs["selected_epoch"].notna().any():
        per_run["best_epoch"] = by_run["selected_epoch"].mean() + 1
        per_run["val_loss_change"] = 100 * by_run["val_loss_change_last20"].mean()
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
    if "gen_share_mean" in df.columns:
        notes.insert(-1, "On-policy gen share: share of the training time spent sampling the "
                         "student's own answers (included in train time).")
    if "length_ratio_mean" in df.columns:
        notes.append("Answer shape, mean over benchmarks (kdbench/metrics.py): answer/ref = mean answer "
                     "length / mean reference length, in words; capped = share of answers that hit the "
                     "generation cap without EOS; repeat = share of an answer's word trigrams that repeat "
                     "an earlier one. High values flag babbling that Rouge-L can reward.")
    df.attrs.update(columns=cols, caption="Training and generation cost per method.",
                    footnote=notes, index_header="method")
    return df


# --------------------------------------------------------------------------- formatting
_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}
_TEX_UNICODE = {"±": r"$\pm$", DAGGER: r"$^{\dagger}$", "–": "--", "—": "---",
                "×": r"$\times$", "θ": r"$\theta$", "≥": r"$\geq$", "≤": r"$\leq$",
                "α": r"$\alpha$", "τ": r"$\tau$", "μ": r"$\mu$", "π": r"$\pi$"}


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and map the few non-ASCII symbols the tables use to math."""
    out = "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))
    for k, v in _TEX_UNICODE.items():
        out = out.replace(k, v)
    return out


def format_table(df: pd.DataFrame, target: str = "md") -> pd.DataFrame:
    """Strings for display: 'mean ± std', best student mean per column bold, † if p < ALPHA.

    target: "md" (**bold**, †) or "tex" (\\textbf{}, $^{\\dagger}$, escaped labels).
    Returns a frame with the row-label column first (header `df.attrs["index_header"]`) and
    one column per value column; NaN means show as an en dash.
    """
    if target not in ("md", "tex"):
        raise ValueError(f"target must be 'md' or 'tex', not {target!r}")
    specs = df.attrs.get("columns")
    if not specs:
        raise UserError("this frame has no column description in .attrs; pass a frame made by "
                        "main_table, ablation_table or runtime_table.")
    tex = target == "tex"
    pm, dash = (r" $\pm$ ", "--") if tex else (" ± ", "–")
    students = (df["method"] != TEACHER).to_numpy() if "method" in df.columns \
        else np.ones(len(df), bool)
    header = df.attrs.get("index_header", "method")
    out = pd.DataFrame({header: [tex_escape(i) if tex else str(i) for i in df.index]})
    for spec in specs:
        key, fmt = spec["key"], spec["fmt"]
        mean = df[f"{key}_mean"].to_numpy(dtype=float)
        std = df[f"{key}_std"].to_numpy(dtype=float) if f"{key}_std" in df else \
            np.full(len(df), np.nan)
        pval = df[f"{key}_p_holm"].to_numpy(dtype=float) if f"{key}_p_holm" in df else \
            np.full(len(df), np.nan)
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
            if np.isfinite(pval[i]) and pval[i] < ALPHA:
                text += r"$^{\dagger}$" if tex else DAGGER
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
        written += write_table(main_table(r, ablations, examples=ex), dest(MAIN_TABLE))
        if has_abl:
            written += write_table(ablation_table(r, ablations, examples=ex), dest(ABLATION_TABLE))
        written += write_table(runtime_table(r, ep, ablations=ablations),
                               dest(RUNTIME_TABLE))
    return written
