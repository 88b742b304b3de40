"""Helpers shared by the analysis notebooks (`analysis/*.ipynb`).

The notebooks read only a profile's `results/<profile>/tables/` (and, as a fallback, its
`figures/`) and draw through `kdbench.tables` and `kdbench.plots`. What is absent is never an
exception here: it is reported with `note` (a "> **Note.** ..." line) and the part that needs
it is skipped, so every notebook runs on any profile.

Nothing reads a notebook's globals: the tables folder, the folder for redrawn figures, the
DAG's figures folder and the ablation names are passed in explicitly. Functions that only
show something (`note`, `show_table`, `figure`, `save_and_show`) return None, so a call as
the last line of a cell adds no output of its own.

Needs IPython (installed with the `dev` extra, through ipykernel).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display
from matplotlib.figure import Figure

from kdbench import plots as KP
from kdbench import tables as T
from kdbench.errors import UserError
from kdbench.paths import LONG_TABLES

#: (method, variant) -> the ablation names that use that run (see `ablation_names`).
AblationNames = Mapping[tuple[str, str], Sequence[str]]

# Scratch folders handed out by `scratch_dir`; held here so that they live as long as the
# kernel (a TemporaryDirectory removes its folder when collected or at interpreter exit).
_SCRATCH: list[tempfile.TemporaryDirectory] = []


def scratch_dir(prefix: str = "kdbench_nb_") -> Path:
    """A new empty temporary folder for figures redrawn from the tables (the DAG's own
    copies in `figures/` are left alone); removed when the kernel exits."""
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    _SCRATCH.append(tmp)
    return Path(tmp.name)


def note(text: str) -> None:
    """Show a highlighted "> **Note.** text" line saying what is absent or skipped."""
    display(Markdown(f"> **Note.** {text}"))


def read(tables: str | Path, names: Sequence[str]) -> dict[str, pd.DataFrame | None]:
    """The long tables `names` (keys of `kdbench.paths.LONG_TABLES`) of the folder `tables`.

    Returns {name: DataFrame, or None where the file is absent or empty}; every name is a key.
    Notes (rather than raises) when the folder does not exist or some tables are absent.
    """
    tables = Path(tables)
    if not tables.is_dir():
        note(f"`{tables}` does not exist: run the DAG (`snakemake`) or set KDBENCH_RESULTS.")
        return {n: None for n in names}
    t = T.read_tables(tables, names)
    absent = [LONG_TABLES[n] for n, df in t.items() if df is None]
    if absent:
        note(f"absent or empty in `{tables}`: {', '.join(absent)}; the parts that need them are skipped.")
    return t


def choose_pair(t: Mapping[str, pd.DataFrame | None]) -> tuple[str | None, str]:
    """The teacher–student pair to show, from the tables `t` (as returned by `read`).

    Returns (pair, suffix): pair is $KDBENCH_PAIR when it is one of the tables' pairs, else
    the first pair found (tables in `t`'s order, rows in file order), or None when no table
    has a "pair" column; suffix is "" for a single pair, else "_<pair>" (the DAG's figure
    file suffix). Notes an unknown $KDBENCH_PAIR and the presence of several pairs.
    """
    present = [d for d in t.values() if d is not None and "pair" in d.columns]
    pairs = list(dict.fromkeys(str(p) for d in present for p in pd.unique(d["pair"])))
    wanted = os.environ.get("KDBENCH_PAIR")
    if wanted and wanted not in pairs:
        note(f"KDBENCH_PAIR={wanted!r} is not in the tables (pairs: {pairs}); showing the first.")
        wanted = None
    pair = wanted or (pairs[0] if pairs else None)
    if len(pairs) > 1:
        note(f"the tables hold the pairs {pairs}; showing {pair!r} (set KDBENCH_PAIR to change).")
    return pair, ("" if len(pairs) <= 1 else f"_{pair}")


def one_pair(df: pd.DataFrame | None, pair: str | None) -> pd.DataFrame | None:
    """The rows of `df` whose "pair" is `pair` (all rows if `df` has no "pair" column);
    None if `df` is None or no row is left."""
    if df is not None and "pair" in df.columns:
        df = df[df["pair"] == pair]
    return None if df is None or df.empty else df


def ablation_names(ablations: pd.DataFrame | None) -> dict[tuple[str, str], list[str]]:
    """{(method, variant): [ablation names that use that run, in ablations.csv order]};
    {} when `ablations` is None."""
    names: dict[tuple[str, str], list[str]] = {}
    if ablations is not None:
        for a, m, v in ablations[["ablation", "method", "variant"]].itertuples(index=False):
            names.setdefault((m, v), []).append(a)
    return names


def label(method: str, variant: str, names: AblationNames) -> str:
    """Row label as in the tables: 'method' for the default variant, else
    'method (ablation names or variant)'; `names` from `ablation_names`."""
    return T.row_label(method, variant, names.get((method, variant), ()))


def labelled(df: pd.DataFrame, names: AblationNames) -> pd.DataFrame:
    """A copy of `df` (index (method, variant, ...)) in table order (`kdbench.tables.order_key`)
    with the two keys replaced by `label`: a plain label index for (method, variant), else
    tuples (label, *rest)."""
    keys = sorted(df.index, key=lambda k: T.order_key(k[0], k[1]))
    df = df.loc[keys]
    df.index = [label(k[0], k[1], names) if len(k) == 2 else (label(k[0], k[1], names),) + tuple(k[2:])
                for k in keys]
    return df


def show_table(df: pd.DataFrame) -> None:
    """Show a numeric frame of `kdbench.tables` formatted as the DAG writes it (markdown,
    with the caption and footnote from `df.attrs`)."""
    md = T.to_markdown(T.format_table(df, "md"), df.attrs.get("caption"), df.attrs.get("footnote"))
    display(Markdown(md))


def figure(name: str, make: Callable[[Path], Sequence[Path]], out: str | Path,
           figures: str | Path, suffix: str = "") -> None:
    """Draw figure `name` with `make(Path(out) / name)` (a `kdbench.plots` function, which
    returns the written paths) and show its PNG.

    When `make` writes no PNG or raises UserError (noted), show the DAG's copy
    `figures/<name><suffix>.png` instead (`suffix` from `choose_pair`); note when there is
    neither.
    """
    try:
        paths = make(Path(out) / name)
    except UserError as exc:
        note(f"{name}: {exc}")
        paths = []
    png = next((p for p in paths if str(p).endswith(".png")), None)
    if png is None:
        dag = Path(figures) / f"{name}{suffix}.png"
        if dag.exists():
            note(f"{name}: could not be redrawn from the tables; showing the DAG's `{dag}`.")
            png = dag
        else:
            note(f"{name}: nothing to plot in these tables.")
            return
    display(Image(filename=str(png)))


def run_styles(keys: Iterable[tuple[str, str]], names: AblationNames) -> dict[tuple[str, str], dict]:
    """{(method, variant): matplotlib line kwargs (color, ls, marker, label)}, in table order,
    one look per run that is the same in every panel: the method's colour; its variants
    (table order) cycle through `kdbench.plots.VARIANT_LINESTYLES`, then markers. Labels
    from `label` with `names`."""
    looks: dict[tuple[str, str], dict] = {}
    count: dict[str, int] = {}
    for m, v in sorted(set(keys), key=lambda k: T.order_key(*k)):
        i = count[m] = count.get(m, -1) + 1
        n = len(KP.VARIANT_LINESTYLES)
        marker = KP.method_marker(m) if i < n else KP.EXTRA_MARKERS[(i // n) % len(KP.EXTRA_MARKERS)]
        looks[(m, v)] = dict(color=KP.method_color(m), ls=KP.VARIANT_LINESTYLES[i % n],
                             marker=marker, label=label(m, v, names))
    return looks


def save_and_show(fig: Figure, name: str, out: str | Path) -> None:
    """Save `fig` (drawn inside `kdbench.plots.style()` on `new_figure`) as
    `out/<name>.png` and `.pdf` and show the PNG."""
    paths = KP.save(fig, Path(out) / name)
    display(Image(filename=str(paths[0])))
