"""CPD's default reading by validation Rouge-L (the rule: docs/protocol.md, "CPD").

Reads the runs of a profile whose ablation rows are the candidate readings of `cpd`
(benchmarks/profiles/cpd_reading.yaml), after

    nice snakemake --cores 2 --configfile benchmarks/profiles/cpd_reading.yaml --until distill
    python benchmarks/cpd_reading.py

and writes benchmarks/results/cpd_reading.md: each candidate's validation Rouge-L at the epoch
its run keeps (train.json), its validation curve (epochs.csv), and the reading the rule picks.
Only validation numbers are read; the runs' test-set scores (metrics.json, answers/) are not
opened.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdbench import config as C  # noqa: E402
from kdbench import io  # noqa: E402
from kdbench.paths import Paths  # noqa: E402

TIE_BREAK = "mixture"  # the rule: an exact tie goes to the simpler reading


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def candidates(cfg: dict, seed: int) -> tuple[pd.DataFrame, dict]:
    """One row per ablation row of the profile: its reading and its run's validation numbers;
    and the first run's train.json (its provenance: commit, time, versions)."""
    paths, rows, made = Paths(cfg), [], {}
    pair = next(iter(cfg["pairs"]))
    for row, (method, variant, params) in C.ablation_variants(cfg).items():
        run = {"pair": pair, "method": method, "variant": variant, "seed": seed}
        stats = io.read_json(REPO / paths.run_file("train", **run))
        made = made or stats
        epochs = pd.read_csv(REPO / paths.run_file("epochs", **run))
        best = int(stats["selected_epoch"])
        rows.append({"row": row, "target": params.get("target", "(default)"), "variant": variant,
                     "selected_epoch": best + 1, "n_epochs": len(epochs),
                     "val_rouge_l": float(stats["val_rouge_l_selected"]),
                     "val_loss_at_selected": float(epochs["val_loss"].iloc[best]),
                     "val_rouge_l_last": float(epochs["val_rouge_l"].iloc[-1]),
                     "examples_seen": int(epochs["n_examples"].sum()),
                     "train_wall_s": float(stats["train_wall_s"]),
                     "curve": epochs["val_rouge_l"].tolist()})
    return pd.DataFrame(rows), made


def choose(df: pd.DataFrame) -> str:
    """The rule: the highest validation Rouge-L at the kept epoch; an exact tie to TIE_BREAK."""
    top = df[df["val_rouge_l"] == df["val_rouge_l"].max()]["target"].tolist()
    return TIE_BREAK if TIE_BREAK in top else top[0]


def report(df: pd.DataFrame, chosen: str, configfile: str, seed: int, made: dict) -> str:
    table = df.drop(columns=["curve"]).round(2).to_markdown(index=False)
    curves = pd.DataFrame({r.target: r.curve for r in df.itertuples()})
    curves.index = curves.index + 1
    curves.index.name = "epoch"
    return "\n".join([
        "# CPD's default reading by validation Rouge-L",
        "",
        f"Runs made {made['time'][:10]} at {made['git_commit'][:7]} (torch {made['versions']['torch']}) on "
        f"{cpu_name()}, {os.cpu_count()} cores (shared), with",
        "",
        f"    nice snakemake --cores 2 --configfile {configfile} --until distill",
        f"    python benchmarks/cpd_reading.py --configfile {configfile}",
        "",
        "The rule (docs/protocol.md, \"CPD\", written before these runs): among the readings that pass",
        "the abstract's property tests, the one with the higher validation Rouge-L at the epoch its",
        f"run keeps; training seed {seed}, teacher seed 0, the default profile's data, models and budget.",
        "No test-set score was read.",
        "",
        table,
        "",
        f"**Chosen: `{chosen}`.**",
        "",
        "Validation Rouge-L per epoch:",
        "",
        curves.round(2).to_markdown(),
        "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="benchmarks/profiles/cpd_reading.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/cpd_reading.md")
    args = ap.parse_args()
    cfg = C.validate(C.read(REPO / args.configfile), source=args.configfile)
    df, made = candidates(cfg, args.seed)
    chosen = choose(df)
    io.write_text(REPO / args.out, report(df, chosen, args.configfile, args.seed, made))
    print(df.drop(columns=["curve"]).to_string(index=False))
    print("chosen:", chosen)


if __name__ == "__main__":
    main()
