"""Figures from the DAG's long tables (results/<profile>/tables/ → results/<profile>/figures/).

Every function takes the tables as DataFrames (columns as in the collect contract), writes
`{out}.png` (150 dpi) and `{out}.pdf` (vector) atomically and returns the two paths, or []
when its inputs hold nothing to plot. One style for all figures (`RC`, `style()`): font sizes
≥ 9 pt, colour-blind-safe colours (Paul Tol's "bright"/"muted" and Okabe–Ito), and a fixed
colour and marker per method (`method_color`, `method_marker`) so a method looks the same in
every figure.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through
pyplot: importing this module does not change the global backend (notebooks keep inline).
A table with several teacher–student pairs must be filtered to one pair first;
`build_all` does this and suffixes the file names with the pair.
"""
from __future__ import annotations

import contextlib
import zlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.ticker
import matplotlib.transforms
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kdbench import io
from kdbench import tables as T
from kdbench.paths import LONG_TABLES, per_pair

#: One style for every figure.
RC = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "errorbar.capsize": 2,
    "legend.frameon": False,
    "figure.dpi": 150,
    "savefig.dpi": 150,
    "figure.constrained_layout.use": True,
    "pdf.fonttype": 42,  # embed TrueType: text in the PDF stays text
    "ps.fonttype": 42,
    "font.family": "DejaVu Sans",
}
DPI = 150

#: Fixed colour per known method (Tol bright/muted, Okabe–Ito; teacher black, SFT-style grey).
METHOD_COLORS = {
    "teacher": "#000000",
    "sft": "#AAAAAA",
    "seqkd": "#666666",
    "kd": "#4477AA",
    "rkl": "#66CCEE",
    "skl": "#228833",
    "srkl": "#CCBB44",
    "jsd": "#AA3377",
    "tvd": "#EE6677",
    "akl": "#882255",
    "taid": "#44AA99",
    "cpd": "#D55E00",
    "pocl": "#332288",
    "curriculum_kd": "#999933",
}
#: Colours for methods not listed above, chosen by a stable hash of the name.
EXTRA_COLORS = ["#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#117733",
                "#88CCEE", "#DDCC77", "#AA4499", "#661100"]
METHOD_MARKERS = {
    "teacher": "*", "sft": "o", "seqkd": "s", "kd": "D", "rkl": "^", "skl": "v",
    "srkl": "<", "jsd": ">", "tvd": "p", "akl": "h", "taid": "X", "cpd": "P",
    "pocl": "d", "curriculum_kd": "8",
}
EXTRA_MARKERS = ["o", "s", "^", "v", "D", "p", "h", "X", "P", "d"]
#: Line styles that tell apart variants of one method (default variant solid).
VARIANT_LINESTYLES = ["-", "--", ":", "-."]


def _stable_index(name: str, n: int) -> int:
    return zlib.crc32(name.encode()) % n


def method_color(method: str) -> str:
    """The method's colour in every figure."""
    return METHOD_COLORS.get(method) or EXTRA_COLORS[_stable_index(method, len(EXTRA_COLORS))]


def method_marker(method: str) -> str:
    """The method's marker in every figure."""
    return METHOD_MARKERS.get(method) or EXTRA_MARKERS[_stable_index(method, len(EXTRA_MARKERS))]


@contextlib.contextmanager
def style():
    """Context in which figures get the suite's rcParams (`RC`)."""
    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A Figure (inches) on an Agg canvas; call inside `style()`."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, out: str | Path) -> list[Path]:
    """Write `{out}.png` and `{out}.pdf` atomically (kdbench.io.atomic_path: a temporary
    beside the target, then a rename); return both paths. The PDF carries no creation date
    and the PNG no timestamp, so a rerun on the same data writes identical files."""
    out = Path(out)
    paths = []
    for ext in ("png", "pdf"):
        path = out.with_name(f"{out.name}.{ext}")
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=DPI, bbox_inches="tight", pad_inches=0.05,
                        metadata={"CreationDate": None} if ext == "pdf" else {})
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- helpers
def _rows(df: pd.DataFrame, ablations: pd.DataFrame | None, teacher: bool
          ) -> list[tuple[str, str]]:
    """Main-table rows present in df (see tables.main_rows), with or without the teacher."""
    rows = T.main_rows(df, ablations)
    return [r for r in rows if teacher or r[0] != T.TEACHER]


def _style_of(rows: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """colour, marker, linestyle and label per (method, variant); a method's extra variants
    keep its colour and get dashed/dotted lines."""
    out, seen = {}, {}
    for m, v in rows:
        k = seen.get(m, 0)
        seen[m] = k + 1
        out[(m, v)] = dict(color=method_color(m), marker=method_marker(m),
                           ls=VARIANT_LINESTYLES[k % len(VARIANT_LINESTYLES)],
                           label=T.row_label(m, v))
    return out


def _pretty(benchmark: str) -> str:
    return T.BENCHMARK_NAMES.get(str(benchmark).lower(), str(benchmark))


def _time_unit(seconds_max: float) -> tuple[float, str]:
    """(divisor, unit) so that wall times read as small numbers."""
    if not np.isfinite(seconds_max) or seconds_max < 600:
        return 1.0, "s"
    if seconds_max < 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _one_pair(df: pd.DataFrame | None) -> pd.DataFrame | None:
    return T.select_pair(df) if df is not None else None


def _epoch_axis(e: pd.Series, first: int) -> pd.Series:
    """Epochs shown 1-based whatever the table's base."""
    return e - first + 1


def _integer_epoch_axis(ax, shown: pd.Series) -> None:
    """Whole-number epoch ticks; a lone epoch sits in the middle of a unit-wide axis instead
    of matplotlib's ±5% range with fractional ticks."""
    lo, hi = int(shown.min()), int(shown.max())
    if hi - lo < 12:
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlim(lo - 0.5, hi + 0.5)


def _place_labels(fig: Figure, ax, xs, ys, texts, colors, xerr=None, yerr=None,
                  fontsize=9) -> None:
    """Label points without overlaps where possible.

    For each point (top first) try offsets around it, near ones first, and keep the first
    whose text box hits no earlier label, no other marker, no error bar and stays inside the
    axes; otherwise take the least-overlapping spot (far spots get a leader line).
    """
    fig.canvas.draw()  # fixes the layout so display coordinates are final
    renderer = fig.canvas.get_renderer()
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    xe = np.zeros_like(xs) if xerr is None else np.asarray(xerr, float)
    ye = np.zeros_like(ys) if yerr is None else np.asarray(yerr, float)
    disp = ax.transData.transform
    Bbox = matplotlib.transforms.Bbox
    pts = disp(np.column_stack([xs, ys]))
    r = 4.5 * fig.dpi / 72  # marker radius in pixels
    w = 1.5 * fig.dpi / 72  # half width of an error bar line
    markers = [Bbox([[px - r, py - r], [px + r, py + r]]) for px, py in pts]
    bars = []
    for x, y, dx, dy in zip(xs, ys, xe, ye):
        (x0, y0), (x1, y1) = disp([[x - dx, y - dy], [x + dx, y + dy]])
        (cx, cy), = disp([[x, y]])
        bars += [Bbox([[x0, cy - w], [x1, cy + w]]), Bbox([[cx - w, y0], [cx + w, y1]])]
    ax_box = ax.get_window_extent(renderer)
    near = [(8, 0, "left", "center"), (-8, 0, "right", "center"), (0, 8, "center", "bottom"),
            (0, -8, "center", "top"), (6, 6, "left", "bottom"), (-6, 6, "right", "bottom"),
            (6, -6, "left", "top"), (-6, -6, "right", "top")]
    cands = near + [(dx * f, dy * f, ha, va) for f in (2.2, 3.5, 5.0)
                    for dx, dy, ha, va in near]

    def overlap(bb, boxes):
        return sum(max(0.0, min(bb.x1, o.x1) - max(bb.x0, o.x0))
                   * max(0.0, min(bb.y1, o.y1) - max(bb.y0, o.y0)) for o in boxes)

    placed: list = []
    for i in np.argsort(-ys):
        obstacles = [b for j, b in enumerate(markers) if j != i] + bars
        best = None
        for dx, dy, ha, va in cands:
            far = abs(dx) > 9 or abs(dy) > 9
            ann = ax.annotate(
                texts[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                ha=ha, va=va, fontsize=fontsize, color=colors[i], zorder=5,
                bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.75),
                arrowprops=dict(arrowstyle="-", color=colors[i], lw=0.6, alpha=0.8,
                                shrinkA=0, shrinkB=5) if far else None)
            bb = ann.get_window_extent(renderer)
            inside = (bb.x0 >= ax_box.x0 and bb.x1 <= ax_box.x1 and bb.y0 >= ax_box.y0
                      and bb.y1 <= ax_box.y1)
            # labels must not overlap labels (weight 10); crossing bars is the lesser evil
            cost = 10 * overlap(bb, placed) + overlap(bb, obstacles) + (0 if inside else 1e7)
            cost += 0.5 * (abs(dx) + abs(dy))  # prefer near spots among equals
            if best is None or cost < best[1]:
                if best is not None:
                    best[0].remove()
                best = (ann, cost, bb)
            else:
                ann.remove()
            clean = inside and overlap(bb, placed) + overlap(bb, obstacles) == 0
            if clean and not far and best[0] is ann:
                break
        placed.append(best[2])


def _text_color(color) -> tuple:
    """The colour darkened until it reads on white (relative luminance ≤ 0.3)."""
    rgb = np.array(matplotlib.colors.to_rgb(color))
    for _ in range(20):
        lum = float(rgb @ [0.2126, 0.7152, 0.0722])
        if lum <= 0.3:
            break
        rgb = rgb * 0.85
    return tuple(rgb)


def _legend_below(fig: Figure, handles, labels, ncol: int | None = None) -> None:
    ncol = ncol or min(len(labels), 7)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, handlelength=2.2,
               columnspacing=1.2)


# --------------------------------------------------------------------------- figures
def rouge_by_method(runs: pd.DataFrame, out: str | Path,
                    ablations: pd.DataFrame | None = None) -> list[Path]:
    """Dot plot: one panel per benchmark plus "avg"; a row per student (table order), each
    seed a small dot, the mean a marker with ± sample std; the teacher a dashed black line
    and kd a dotted line in its colour for reference. `ablations` drops ablation-only
    variants (as in the main table)."""
    runs = _one_pair(runs)
    if runs is None or runs.empty:
        return []
    benchmarks = T.benchmarks_of(runs)
    per_run = T.run_scores(runs, benchmarks)
    students = _rows(runs, ablations, teacher=False)
    if not students:
        return []
    looks = _style_of(students)
    cols = benchmarks + ["avg"]
    ncols = len(cols) if len(cols) <= 4 else 3
    nrows = -(-len(cols) // ncols)
    height = max(2.4, 0.27 * len(students) + 1.0)
    with style():
        fig = new_figure(2.5 * ncols + 1.3, height * nrows)
        axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
        ypos = {k: i for i, k in enumerate(students)}
        teacher = per_run.xs((T.TEACHER, "default"), level=["method", "variant"]) \
            if (T.TEACHER, "default") in per_run.index.droplevel("seed") else None
        for ax, c in zip(axes, cols):
            for k in students:
                if k not in per_run.index.droplevel("seed"):
                    continue
                vals = per_run.loc[k, c].dropna().to_numpy()
                if vals.size == 0:
                    continue
                y = ypos[k]
                lk = looks[k]
                ax.plot(vals, np.full(vals.size, y), ls="none", marker="o", ms=3.2,
                        color=lk["color"], alpha=0.45, mec="none")
                std = vals.std(ddof=1) if vals.size > 1 else 0.0
                ax.errorbar(vals.mean(), y, xerr=std, fmt=lk["marker"], ms=6,
                            color=lk["color"], mec="black", mew=0.5, elinewidth=1.2)
            if teacher is not None and teacher[c].notna().any():
                tv = teacher[c].mean()
                ax.axvline(tv, color="black", ls="--", lw=1.1)
                ax.annotate("teacher", (tv, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(-3, -2), textcoords="offset points", ha="right",
                            va="top", fontsize=9, rotation=90)
            kd = ("kd", "default")
            if kd in ypos and kd in per_run.index.droplevel("seed"):
                ax.axvline(per_run.loc[kd, c].mean(), color=method_color("kd"), ls=":",
                           lw=1.1)
            ax.set_title(_pretty(c), fontweight="bold" if c == "avg" else None)
            ax.set_xlabel("Rouge-L")
            ax.grid(axis="y", visible=False)
            ax.margins(x=0.08)
        for ax in axes[len(cols):]:
            ax.set_visible(False)
        axes[0].set_yticks(range(len(students)), [looks[k]["label"] for k in students])
        axes[0].set_ylim(len(students) - 0.5, -0.5)
        fig.suptitle("Rouge-L per benchmark (dots: training seeds; marker: mean ± std; "
                     "dotted: kd)", fontsize=10)
        return save(fig, out)


def _per_run_train(runs: pd.DataFrame) -> pd.DataFrame:
    """train_wall_s per run (index method, variant, seed)."""
    T.require_columns(runs, ["method", "variant", "seed", "train_wall_s"], LONG_TABLES["runs"])
    return runs.groupby(["method", "variant", "seed"])["train_wall_s"].mean()


def train_time(runs: pd.DataFrame, out: str | Path,
               ablations: pd.DataFrame | None = None) -> list[Path]:
    """Horizontal bars: mean training wall time per row (table order), seed dots and ± std,
    the ratio to kd written at the bar's end; the teacher (if trained here) hatched on top."""
    runs = _one_pair(runs)
    if runs is None or runs.empty:
        return []
    wall = _per_run_train(runs).dropna()
    rows = [k for k in _rows(runs, ablations, teacher=True)
            if k in wall.index.droplevel("seed")]
    if not rows:
        return []
    looks = _style_of(rows)
    scale, unit = _time_unit(wall.max())
    kd = wall.loc[("kd", "default")].mean() if ("kd", "default") in rows else np.nan
    with style():
        fig = new_figure(6.2, max(2.4, 0.3 * len(rows) + 1.1))
        ax = fig.subplots()
        for i, k in enumerate(rows):
            vals = wall.loc[k].to_numpy() / scale
            mean = vals.mean()
            std = vals.std(ddof=1) if vals.size > 1 else 0.0
            is_t = k[0] == T.TEACHER
            ax.barh(i, mean, color="white" if is_t else looks[k]["color"], height=0.7,
                    edgecolor="black", lw=0.6, hatch="///" if is_t else None, alpha=0.9)
            ax.errorbar(mean, i, xerr=std, fmt="none", ecolor="black", elinewidth=1)
            ax.plot(vals, np.full(vals.size, i), "o", ms=2.8, color="black", alpha=0.6,
                    mec="none")
            if np.isfinite(kd) and not is_t:
                ax.annotate(f"{mean * scale / kd:.2f}×", (mean + std, i), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=9)
        ax.set_yticks(range(len(rows)), [looks[k]["label"] for k in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        if rows[0][0] == T.TEACHER and len(rows) > 1:
            ax.axhline(0.5, color="grey", lw=0.8)
        ax.set_xlabel(f"training wall time ({unit})")
        ax.grid(axis="y", visible=False)
        ax.margins(x=0.12)
        ax.set_title("Training time (bars: mean over seeds; dots: seeds; "
                     + ("labels: ratio to kd)" if np.isfinite(kd) else "± std)"))
        return save(fig, out)


def quality_vs_cost(runs: pd.DataFrame, out: str | Path,
                    ablations: pd.DataFrame | None = None) -> list[Path]:
    """Average Rouge-L against training wall time, one point per student (mean, ± std error
    bars over seeds), the Pareto front (no other row is both faster and better) as a step
    line, the teacher's avg as a dashed line; points labelled with their names."""
    runs = _one_pair(runs)
    if runs is None or runs.empty:
        return []
    benchmarks = T.benchmarks_of(runs)
    score = T.run_scores(runs, benchmarks)["avg"]
    wall = _per_run_train(runs)
    both = pd.concat([score.rename("avg"), wall.rename("wall")], axis=1).dropna()
    rows = [k for k in _rows(runs, ablations, teacher=False)
            if k in both.index.droplevel("seed")]
    if not rows:
        return []
    looks = _style_of(rows)
    g = both.groupby(level=["method", "variant"])
    mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
    scale, unit = _time_unit(both["wall"].max())
    x = np.array([mean.loc[k, "wall"] for k in rows]) / scale
    xe = np.array([std.loc[k, "wall"] for k in rows]) / scale
    y = np.array([mean.loc[k, "avg"] for k in rows])
    ye = np.array([std.loc[k, "avg"] for k in rows])
    front = pareto_front(x, y)
    with style():
        fig = new_figure(6.6, 4.6)
        ax = fig.subplots()
        fx, fy = x[front], y[front]
        ax.step(fx, fy, where="post", color="0.35", lw=1.2, ls="-", zorder=1,
                label="Pareto front")
        for i, k in enumerate(rows):
            lk = looks[k]
            ax.errorbar(x[i], y[i], xerr=xe[i], yerr=ye[i], fmt=lk["marker"], ms=7,
                        color=lk["color"], mec="black", mew=0.6 if i not in front else 1.4,
                        elinewidth=0.9, alpha=0.95, zorder=3)
        t = (T.TEACHER, "default")
        if t in score.index.droplevel("seed"):
            ax.axhline(score.loc[t].mean(), color="black", ls="--", lw=1.0,
                       label="teacher")
        ax.set_xlabel(f"training wall time ({unit}, on-policy sampling included), lower is better")
        ax.set_ylabel("average Rouge-L, higher is better")
        ax.margins(x=0.12, y=0.12)
        ax.legend(loc="lower right")
        ax.set_title("Quality vs training cost (mean ± std over seeds)")
        _place_labels(fig, ax, x, y, [looks[k]["label"] for k in rows],
                      [_text_color(looks[k]["color"]) for k in rows], xerr=xe, yerr=ye)
        return save(fig, out)


def rouge_vs_length(runs: pd.DataFrame, out: str | Path,
                    ablations: pd.DataFrame | None = None) -> list[Path]:
    """Average Rouge-L against answer length / reference length (log scale), one point per
    row including the teacher (mean over seeds and benchmarks); rows where at least half of
    the answers hit the generation cap without ending are ringed in red. Word salad sits far
    to the right: long, capped, whatever its Rouge-L. Where runs.csv has the fluency score
    (`teacher_nll`, kdbench/fluency.py), a second panel puts the same Rouge-L against it:
    salad that is neither long nor capped sits far to the right there. Returns [] for runs
    scored before the answer-shape columns existed (kdbench.stages.evaluate)."""
    runs = _one_pair(runs)
    if runs is None or runs.empty or not {"length_ratio", "capped"} <= set(runs.columns):
        return []
    score = T.run_scores(runs, T.benchmarks_of(runs))["avg"]
    shape_cols = ["length_ratio", "capped"] + (["teacher_nll"] if "teacher_nll" in runs.columns else [])
    shape = runs.groupby(["method", "variant", "seed"])[shape_cols].mean()
    both = pd.concat([score.rename("avg"), shape], axis=1).dropna(subset=["avg", "length_ratio"])
    rows = [k for k in _rows(runs, ablations, teacher=True) if k in both.index.droplevel("seed")]
    if not rows:
        return []
    looks = _style_of(rows)
    mean = both.groupby(level=["method", "variant"]).mean()
    x = np.array([max(mean.loc[k, "length_ratio"], 1e-2) for k in rows])
    y = np.array([mean.loc[k, "avg"] for k in rows])
    capped = np.array([mean.loc[k, "capped"] for k in rows])
    nll = np.array([mean.loc[k, "teacher_nll"] if "teacher_nll" in mean else np.nan for k in rows])
    fluent = np.isfinite(nll).any()
    with style():
        fig = new_figure(11.6 if fluent else 6.6, 4.6)
        axes = fig.subplots(1, 2, sharey=True) if fluent else [fig.subplots()]
        ax = axes[0]
        ax.set_xscale("log")
        ax.axvline(1.0, color="0.35", ls=":", lw=1.0, label="as long as the reference")
        ringed = False
        for i, k in enumerate(rows):
            lk = looks[k]
            for a, xi in zip(axes, (x[i], nll[i])):
                a.plot(xi, y[i], lk["marker"], ms=9 if k[0] == T.TEACHER else 7, color=lk["color"],
                       mec="black", mew=0.6, zorder=3)
                if np.isfinite(capped[i]) and capped[i] >= 0.5:
                    a.plot(xi, y[i], "o", ms=16, mfc="none", mec="#CC3311", mew=1.6, zorder=4,
                           label=None if ringed else "≥ half the answers hit the cap without ending")
                    ringed = True
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(2.0 ** np.arange(-7, 8)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("mean answer length / mean reference length (words, log scale)")
        ax.set_ylabel("average Rouge-L")
        ax.set_title("Rouge-L against answer length (mean over seeds)")
        if fluent:
            axes[1].set_xlabel("teacher NLL of the answers (nats/token), lower is more fluent")
            axes[1].set_title("Rouge-L against fluency (mean over seeds)")
        ax.legend(loc="best")
        for a, xs in zip(axes, (x, nll)):
            a.margins(x=0.15, y=0.15)
            shown = np.isfinite(xs)
            _place_labels(fig, a, xs[shown], y[shown], [looks[k]["label"] for k, s in zip(rows, shown) if s],
                          [_text_color(looks[k]["color"]) for k, s in zip(rows, shown) if s])
        return save(fig, out)


def pareto_front(cost: Sequence[float], quality: Sequence[float]) -> np.ndarray:
    """Indices of the Pareto-optimal points (lower cost, higher quality), by rising cost: a
    point is kept if every cheaper-or-equal point has strictly lower quality."""
    cost, quality = np.asarray(cost, float), np.asarray(quality, float)
    order = np.lexsort((-quality, cost))  # by cost, ties: best quality first
    keep, best = [], -np.inf
    for i in order:
        if quality[i] > best:
            keep.append(i)
            best = quality[i]
    return np.array(keep, dtype=int)


def training_curves(trace: pd.DataFrame, out: str | Path,
                    ablations: pd.DataFrame | None = None) -> list[Path]:
    """Training curves of every student (mean over seeds, smoothed with a centred rolling
    mean over ~2% of the steps): the CE on the reference (comparable across methods) and
    the total loss (scale differs by divergence, log axis), against examples seen (or step).
    """
    trace = _one_pair(trace)
    if trace is None or trace.empty:
        return []
    T.require_columns(trace, ["method", "variant", "seed", "step", "loss"], LONG_TABLES["trace"])
    rows = _rows(trace, ablations, teacher=False)
    if not rows:
        return []
    looks = _style_of(rows)
    xcol = "examples" if "examples" in trace.columns and trace["examples"].notna().any() \
        else "step"
    panels = [c for c in ("ce", "loss") if c in trace.columns and trace[c].notna().any()]
    titles = {"ce": "cross-entropy on the reference", "loss": "total training loss"}
    with style():
        fig = new_figure(4.1 * len(panels), 3.9)
        axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True))
        handles = []
        for k in rows:
            run = trace[(trace["method"] == k[0]) & (trace["variant"] == k[1])]
            m = run.groupby("step")[[xcol] + panels].mean() if xcol != "step" \
                else run.groupby("step")[panels].mean()
            xs = m[xcol] if xcol != "step" else m.index.to_series()
            w = max(1, len(m) // 50)
            for ax, c in zip(axes, panels):
                yv = m[c].rolling(w, center=True, min_periods=1).mean()
                (h,) = ax.plot(xs, yv, color=looks[k]["color"], ls=looks[k]["ls"], lw=1.4)
            handles.append(h)
        for ax, c in zip(axes, panels):
            ax.set_title(titles[c])
            ax.set_xlabel("examples seen" if xcol == "examples" else "optimizer step")
            if c == "loss":
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_log_label))
                ax.yaxis.set_minor_formatter(
                    matplotlib.ticker.FuncFormatter(lambda v, p: _log_label(v, p, (2, 3, 5))))
        _legend_below(fig, handles, [looks[k]["label"] for k in rows])
        return save(fig, out)


def _log_label(v: float, _pos=None, keep: Sequence[int] | None = None) -> str:
    """Plain numbers on log axes ('0.5', '2'); with `keep`, only mantissas in it."""
    if v <= 0:
        return ""
    mantissa = round(v / 10 ** np.floor(np.log10(v)), 6)
    return f"{v:g}" if keep is None or mantissa in keep else ""


def rouge_by_difficulty(examples: pd.DataFrame, out: str | Path,
                        ablations: pd.DataFrame | None = None) -> list[Path]:
    """Mean Rouge-L per difficulty level (1–5) per row, one panel per benchmark that has
    levels (the synthetic ones), teacher dashed black. Returns [] if no example has a level.
    """
    examples = _one_pair(examples)
    if examples is None or "difficulty" not in examples.columns:
        return []
    ex = examples[examples["difficulty"].notna()]
    if ex.empty:
        return []
    rows = _rows(ex, ablations, teacher=True)
    looks = _style_of(rows)
    benches = [str(b) for b in pd.unique(ex["benchmark"])]
    means = ex.groupby(["benchmark", "method", "variant", "difficulty"])["rouge_l"].mean()
    with style():
        side = len(benches) <= 2  # legend on the right leaves a narrow figure its height
        fig = new_figure(3.9 * len(benches) + (1.7 if side else 0), 4.2)
        axes = np.atleast_1d(fig.subplots(1, len(benches), sharey=True))
        handles = {}
        for ax, b in zip(axes, benches):
            for k in rows:
                try:
                    s = means.loc[(b,) + k]
                except KeyError:
                    continue
                is_t = k[0] == T.TEACHER
                (h,) = ax.plot(s.index.to_numpy(float), s.to_numpy(),
                               color=looks[k]["color"], ls="--" if is_t else looks[k]["ls"],
                               marker=looks[k]["marker"], ms=5 if not is_t else 7,
                               lw=1.8 if is_t else 1.3, alpha=0.9)
                handles.setdefault(k, h)
            ax.set_title(_pretty(b))
            ax.set_xlabel("difficulty level (1 = easiest)")
            levels = np.sort(ex["difficulty"].unique())
            ax.set_xticks(levels, [f"{v:g}" for v in levels])
        axes[0].set_ylabel("Rouge-L")
        order = [k for k in rows if k in handles]
        handles, labels = [handles[k] for k in order], [looks[k]["label"] for k in order]
        if side:
            fig.legend(handles, labels, loc="outside right center", handlelength=2.4)
        else:
            _legend_below(fig, handles, labels)
        return save(fig, out)


_SCHEDULE_PANELS = [
    ("alpha", "mixing coefficient α (teacher weight)"),
    ("temperature", "temperature τ"),
    ("n_examples", "subset size (examples per epoch)"),
    ("mean_difficulty", "mean difficulty of the subset"),
]
def _curricula(epochs: pd.DataFrame) -> list[str]:
    """Methods whose default variant trains on fewer examples in some epoch than in another."""
    runs = epochs[epochs["variant"] == "default"].groupby(["method", "epoch"])["n_examples"].mean()
    return [m for m, s in runs.groupby(level="method") if s.nunique() > 1]


def method_schedule(epochs: pd.DataFrame, out: str | Path, method: str, variant: str = "default",
                    reference: str = "kd") -> list[Path]:
    """2×2 panels per epoch (mean over seeds): α, τ, subset size and mean difficulty of
    `method`/`variant`; the subset-size and difficulty panels also show the other curricula
    and `reference` (full data) where present. Returns [] if the run is absent."""
    epochs = _one_pair(epochs)
    if epochs is None or epochs.empty:
        return []
    T.require_columns(epochs, ["method", "variant", "seed", "epoch", "n_examples"], LONG_TABLES["epochs"])
    sel = epochs[(epochs["method"] == method) & (epochs["variant"] == variant)]
    if sel.empty:
        return []
    first = int(epochs["epoch"].min())
    if "temperature" not in epochs.columns and "tau" in epochs.columns:
        epochs = epochs.rename(columns={"tau": "temperature"})
    numeric = [c for c, _ in _SCHEDULE_PANELS if c in epochs.columns]
    with style():
        fig = new_figure(7.4, 5.6)
        axes = fig.subplots(2, 2, sharex=True).ravel()
        drawn_epochs: set[int] = set()
        for ax, (col, title) in zip(axes, _SCHEDULE_PANELS):
            ax.set_title(title)
            shown = [(method, variant)]
            if col in ("n_examples", "mean_difficulty"):
                shown += [(m, "default") for m in _curricula(epochs) + [reference] if m != method]
            drew = False
            for m, v in shown:
                run = epochs[(epochs["method"] == m) & (epochs["variant"] == v)]
                if run.empty or col not in numeric or run[col].isna().all():
                    continue
                s = run.groupby("epoch")[col].mean()
                drawn_epochs.update(int(e) for e in s.index)
                main = (m, v) == (method, variant)
                # comparisons: hollow and on top, so one that coincides with the main run
                # (e.g. all data in a one-epoch run) rings its marker instead of hiding under it
                ax.plot(_epoch_axis(s.index.to_series(), first), s.to_numpy(),
                        color=method_color(m), marker=method_marker(m),
                        mfc=method_color(m) if main else "none", mew=1.0 if main else 1.4,
                        lw=2.0 if main else 1.2, ms=6 if main else 9,
                        ls="-" if main else "--", zorder=2 if main else 3,
                        label=T.row_label(m, v) + (" (all data)" if m == reference else ""))
                drew = True
            if not drew:
                ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center",
                        va="center", color="0.4")
            elif col == "n_examples":
                ax.set_ylim(bottom=0)
        shown_epochs = _epoch_axis(pd.Series(sorted(drawn_epochs or {first})), first)
        _integer_epoch_axis(axes[0], shown_epochs)  # axes share x
        for ax in axes[2:]:
            ax.set_xlabel("epoch")
        handles = {}
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        _legend_below(fig, list(handles.values()), list(handles))
        one = "\none epoch: π = 1, all data at the schedule's end values" if len(shown_epochs) == 1 else ""
        fig.suptitle(f"Schedule of {T.row_label(method, variant)} per epoch (mean over seeds){one}")
        return save(fig, out)


def bin_loss(bin_loss: pd.DataFrame, out: str | Path, method: str,
             variant: str = "default", reference: str = "kd") -> list[Path]:
    """Per-difficulty-bin training CE over epochs (mean over seeds), one line per bin on an
    easy→hard colour ramp, `method` next to `reference` (kd, full data every epoch) with a
    shared y axis. Bins not trained in an epoch (curricula) have no point there."""
    df = _one_pair(bin_loss)
    if df is None or df.empty:
        return []
    T.require_columns(df, ["method", "variant", "seed", "epoch", "bin", "ce"], LONG_TABLES["bin_loss"])
    if "n_examples" in df.columns:
        df = df[df["n_examples"].fillna(0) > 0]
    runs = [(method, variant)]
    if reference != method and ((df["method"] == reference) & (df["variant"] == "default")).any():
        runs.append((reference, "default"))
    if df[(df["method"] == method) & (df["variant"] == variant)].empty:
        return []
    bins = np.sort(df["bin"].dropna().unique())
    cmap = matplotlib.colormaps["viridis"]
    ramp = {b: cmap(0.9 * i / max(1, len(bins) - 1)) for i, b in enumerate(bins)}
    first = int(df["epoch"].min())
    with style():
        fig = new_figure(3.7 * len(runs) + 0.6, 3.7)
        axes = np.atleast_1d(fig.subplots(1, len(runs), sharey=True, sharex=True))
        handles = {}
        for ax, (m, v) in zip(axes, runs):
            run = df[(df["method"] == m) & (df["variant"] == v)]
            s = run.groupby(["bin", "epoch"])["ce"].mean()
            for b in bins:
                if b not in s.index.get_level_values("bin"):
                    continue
                sb = s.loc[b]
                (h,) = ax.plot(_epoch_axis(sb.index.to_series(), first), sb.to_numpy(),
                               color=ramp[b], marker="o", ms=4.5, lw=1.6)
                handles.setdefault(b, h)
            ax.set_title(T.row_label(m, v))
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[0].set_ylabel("training CE per token")
        labels = [f"bin {b:g}" + (" (easiest)" if b == bins[0] else
                                  " (hardest)" if b == bins[-1] else "") for b in handles]
        fig.legend(list(handles.values()), labels, loc="outside right center",
                   title="difficulty")
        fig.suptitle("Training CE per difficulty bin (mean over seeds)")
        return save(fig, out)


def _ablation_names(ablations: pd.DataFrame | None) -> dict[tuple[str, str], list[str]]:
    names: dict[tuple[str, str], list[str]] = {}
    if ablations is not None and not ablations.empty:
        for a, m, v in ablations[["ablation", "method", "variant"]].itertuples(index=False):
            names.setdefault((m, v), []).append(a)
    return names


def data_fraction_pareto(runs: pd.DataFrame, out: str | Path,
                         ablations: pd.DataFrame | None = None,
                         baseline: str = "kd") -> list[Path]:
    """What a curriculum buys per example seen: average Rouge-L (mean ± std over seeds)
    against the data fraction, examples seen / `baseline`'s (default variant), for every
    row that trains on less than all of it (curricula, budget-matched kd), every ablation
    row and every `baseline` variant (joined by a line: kd at reduced budgets); the Pareto
    front (no other row sees fewer examples and scores higher) as a step line."""
    runs = _one_pair(runs)
    if runs is None or runs.empty or "train_examples" not in runs.columns:
        return []
    score = T.run_scores(runs, T.benchmarks_of(runs))["avg"]
    seen = runs.groupby(["method", "variant", "seed"])["train_examples"].mean()
    both = pd.concat([score.rename("avg"), seen.rename("seen")], axis=1).dropna()
    g = both.groupby(level=["method", "variant"])
    mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
    if (baseline, "default") not in mean.index:
        return []
    frac = mean["seen"] / mean.loc[(baseline, "default"), "seen"]
    names = _ablation_names(ablations)
    rows = [k for k in sorted(mean.index, key=lambda mv: T.order_key(*mv))
            if k[0] != T.TEACHER and (frac[k] < 1 - 1e-9 or k in names or k[0] == baseline)]
    x = frac.reindex(rows).to_numpy()
    y = mean.loc[rows, "avg"].to_numpy()
    ye = std.loc[rows, "avg"].to_numpy()
    labels = [T.row_label(m, v, names.get((m, v), ())) for m, v in rows]
    front = pareto_front(x, y)
    with style():
        fig = new_figure(6.8, 4.8)
        ax = fig.subplots()
        ax.step(x[front], y[front], where="post", color="0.35", lw=1.2, zorder=1,
                label="Pareto front")
        kd = [i for i, k in enumerate(rows) if k[0] == baseline]
        kd.sort(key=lambda i: x[i])
        ax.plot(x[kd], y[kd], color=method_color(baseline), lw=1.2, ls=":", zorder=2,
                label=f"{baseline} at reduced budgets")
        for i, (m, _) in enumerate(rows):
            ax.errorbar(x[i], y[i], yerr=ye[i], fmt=method_marker(m), ms=7,
                        color=method_color(m), mec="black", mew=1.4 if i in front else 0.6,
                        elinewidth=0.9, zorder=3)
        ax.set_xlabel(f"data fraction (examples seen / {baseline}'s)")
        ax.set_ylabel("average Rouge-L, higher is better")
        ax.margins(x=0.12, y=0.12)
        ax.legend(loc="lower right")
        ax.set_title("Rouge-L per example seen (mean ± std over seeds)")
        _place_labels(fig, ax, x, y, labels,
                      [_text_color(method_color(m)) for m, _ in rows], yerr=ye)
        return save(fig, out)


def curriculum_subsets(epochs: pd.DataFrame, out: str | Path,
                       ablations: pd.DataFrame | None = None) -> list[Path]:
    """The subsets the curriculum runs train on, per epoch (mean over seeds): their size as a
    fraction of the training set, and their mean difficulty on the profile's own (raw) scale
    with the full set's mean dashed. One line per distinct sequence of subsets (runs whose
    epochs differ in size: cpd's scales and orders, curriculum_kd, pocl), labelled by every
    row that trains on it (ablation rows by their names)."""
    epochs = _one_pair(epochs)
    if epochs is None or epochs.empty or "mean_difficulty" not in epochs.columns:
        return []
    T.require_columns(epochs, ["method", "variant", "seed", "epoch", "n_examples"], LONG_TABLES["epochs"])
    names = _ablation_names(ablations)
    curves: dict[tuple, list[str]] = {}  # rounded (sizes, means) -> labels
    per_key = {}
    for k, run in epochs.groupby(["method", "variant"], sort=False):
        per = run.groupby("epoch")[["n_examples", "mean_difficulty"]].mean()
        if per["n_examples"].nunique() < 2:
            continue  # all data every epoch: no curriculum
        sig = tuple(np.round(per.to_numpy(dtype=float), 6).ravel())
        per_key.setdefault(sig, per)
        curves.setdefault(sig, []).append(T.row_label(*k, names.get(k, ())))
    if not curves:
        return []
    full = epochs["n_examples"].max()
    first = int(epochs["epoch"].min())
    whole = epochs.loc[epochs["n_examples"] == full, "mean_difficulty"].mean()
    palette = [METHOD_COLORS["cpd"], METHOD_COLORS["pocl"], *EXTRA_COLORS]
    with style():
        fig = new_figure(7.6, 4.2)
        ax_n, ax_d = fig.subplots(1, 2, sharex=True)
        for i, (sig, labels) in enumerate(curves.items()):
            per = per_key[sig]
            e = _epoch_axis(per.index.to_series(), first)
            kw = dict(color=palette[i % len(palette)], marker=EXTRA_MARKERS[i % len(EXTRA_MARKERS)],
                      ms=4.5, label=", ".join(labels))
            ax_n.plot(e, per["n_examples"] / full, **kw)
            ax_d.plot(e, per["mean_difficulty"], **kw)
        ax_d.axhline(whole, color="0.3", ls="--", lw=1.0, label="all data")
        ax_n.set_ylim(0, 1.05)
        ax_n.set_ylabel("subset size / training set")
        ax_d.set_ylabel("mean difficulty (raw scale)")
        for ax in (ax_n, ax_d):
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        h, lab = ax_d.get_legend_handles_labels()
        _legend_below(fig, h, lab, ncol=1 if max(map(len, lab)) > 40 else 2)
        fig.suptitle("Curriculum subsets per epoch (mean over seeds)")
        return save(fig, out)


# --------------------------------------------------------------------------- all
def build_all(tables_dir: str | Path, figures_dir: str | Path, method: str | None = None) -> list[Path]:
    """Make every figure whose input tables exist in `tables_dir`, into `figures_dir`;
    return the written paths. Names: rouge_by_method, train_time, quality_vs_cost,
    rouge_vs_length, training_curves, rouge_by_difficulty, data_fraction_pareto,
    curriculum_subsets and, for `method` (the profile's `ablations.method`), <method>_schedule
    and bin_loss; per pair as `kdbench.paths.per_pair`."""
    t = T.read_tables(tables_dir)
    figures_dir = Path(figures_dir)
    abl = t["ablations"]
    present = [d for d in t.values() if d is not None and "pair" in d.columns]
    pairs = list(dict.fromkeys(str(p) for d in present for p in pd.unique(d["pair"])))
    written: list[Path] = []
    for pair in pairs:
        def part(name):
            d = t[name]
            return d[d["pair"] == pair] if d is not None and "pair" in d.columns else None

        def dest(name):
            return figures_dir / per_pair(name, pair, pairs)

        runs, ex, trace = part("runs"), part("examples"), part("trace")
        epochs, bins = part("epochs"), part("bin_loss")
        if runs is not None and not runs.empty:
            written += rouge_by_method(runs, dest("rouge_by_method"), abl)
            if "train_wall_s" in runs.columns:
                written += train_time(runs, dest("train_time"), abl)
                written += quality_vs_cost(runs, dest("quality_vs_cost"), abl)
            written += rouge_vs_length(runs, dest("rouge_vs_length"), abl)
            written += data_fraction_pareto(runs, dest("data_fraction_pareto"), abl)
        if trace is not None:
            written += training_curves(trace, dest("training_curves"), abl)
        if ex is not None:
            written += rouge_by_difficulty(ex, dest("rouge_by_difficulty"), abl)
        if epochs is not None:
            written += curriculum_subsets(epochs, dest("curriculum_subsets"), abl)
        if method and epochs is not None:
            written += method_schedule(epochs, dest(f"{method}_schedule"), method)
        if method and bins is not None:
            written += bin_loss(bins, dest("bin_loss"), method)
    return written


__all__ = ["RC", "style", "method_color", "method_marker", "new_figure", "save",
           "pareto_front", "rouge_by_method", "train_time", "quality_vs_cost", "rouge_vs_length",
           "training_curves", "rouge_by_difficulty", "method_schedule", "bin_loss",
           "data_fraction_pareto", "curriculum_subsets", "build_all"]
