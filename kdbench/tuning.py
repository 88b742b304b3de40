"""The learning-rate grid (`snakemake tune`): one budget of tuning for every method.

Every main-table method and variant trains once (seed `tuning.seed`) at each learning rate of
`tuning.lr`; its score is the validation Rouge-L of its selected epoch, the number model
selection already uses, and the value with the highest score is its choice (ties: the smaller
learning rate). The test sets are never sampled by these runs. `write` gathers the runs into
results/<profile>/tables/tuning.csv and a report, benchmarks/results/tuning_<profile>.md, that
ends with the `training.per_method` lines to paste into the profile (docs/protocol.md, "Tuning").
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from kdbench import io
from kdbench.config import tuning_runs
from kdbench.paths import Paths



def results(cfg: dict) -> pd.DataFrame:
    """One row per tuning run: pair, method, variant, lr, val_rouge_l (selected epoch),
    selected_epoch, n_epochs, train_wall_s, and `chosen` (the best lr of its method and variant)."""
    P, rows = Paths(cfg), []
    for pair, method, variant, lr in tuning_runs(cfg):
        r = io.read_json(P.tuning_result(pair, method, variant, lr))
        rows.append({"pair": pair, "method": method, "variant": variant, "lr": lr,
                     "val_rouge_l": r["val_rouge_l_selected"], "selected_epoch": r["selected_epoch"],
                     "n_epochs": r["n_epochs"], "train_wall_s": r["train_wall_s"], "device": r["device"]})
    df = pd.DataFrame(rows)
    best = (df.sort_values(["val_rouge_l", "lr"], ascending=[False, True])
            .groupby(["pair", "method", "variant"], sort=False).head(1).index)
    df["chosen"] = df.index.isin(best)
    return df


def report(cfg: dict, df: pd.DataFrame) -> str:
    """The markdown report: method × learning rate → validation Rouge-L, the choice, and the
    profile lines that apply it."""
    grid = sorted(cfg["tuning"]["lr"])
    lines = [f"# Learning-rate grid of the `{cfg['profile']}` profile",
             "",
             f"Made by `snakemake tune --cores all --configfile <profile>` on {df['device'].iloc[0]}, "
             f"{time.strftime('%Y-%m-%d')}. Every main-table method and variant trains once (training seed "
             f"{cfg['tuning']['seed']}) at each learning rate of `tuning.lr`; a cell is the validation Rouge-L "
             f"of the run's selected epoch (the best of its epochs, as model selection keeps it), on "
             f"{cfg['data'].get('synthetic_sizes', {}).get('validation', 'the')} validation prompts. The choice (bold) "
             "is the highest; ties go to the smaller rate. No test set is sampled by these runs, so no test "
             "score takes part. A choice at the edge of the grid is marked †: the grid may not bracket its best rate.",
             ""]
    for pair, part in df.groupby("pair", sort=False):
        if df["pair"].nunique() > 1:
            lines += [f"## Pair `{pair}`", ""]
        lines += ["| method | " + " | ".join(f"lr {v:g}" for v in grid) + " | choice |",
                  "|---|" + "---:|" * (len(grid) + 1)]
        for (method, variant), g in part.groupby(["method", "variant"], sort=True):
            by_lr = g.set_index("lr")
            cells = [f"**{by_lr.at[v, 'val_rouge_l']:.2f}**" if by_lr.at[v, "chosen"] else
                     f"{by_lr.at[v, 'val_rouge_l']:.2f}" for v in grid]
            lr = float(g.loc[g["chosen"], "lr"].iloc[0])
            edge = " †" if len(grid) > 1 and lr in (grid[0], grid[-1]) else ""
            name = method if variant == "default" else f"{method} ({variant})"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {lr:g}{edge} |")
        lines.append("")
    # one line per method: its `default` variant's choice, or that of the main-table variant
    # that `methods.params` makes of it (distillm's divergence-sfkl in the default profile)
    chosen = (df[df["chosen"]].assign(other=lambda d: d["variant"] != "default")
              .sort_values(["method", "other"], kind="stable").groupby("method", sort=True).head(1))
    lines += ["The choices as profile lines (`training.per_method`, merged with any other per-method keys;",
              "a method's other variants train at its choice):", "", "```yaml",
              "training:", "  per_method:"]
    lines += [f"    {m}: {{lr: {lr:g}}}" for m, lr in zip(chosen["method"], chosen["lr"])]
    lines += ["```", ""]
    return "\n".join(lines)


def write(cfg: dict) -> list[Path]:
    """tuning.csv beside the profile's tables and the report; the paths written."""
    P, df = Paths(cfg), results(cfg)
    csv, md = Path(P.tuning_table), Path(P.tuning_report)
    io.write_csv(csv, df)
    io.write_text(md, report(cfg, df))
    return [csv, md]
