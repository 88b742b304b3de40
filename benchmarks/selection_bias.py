"""How much of a run's best validation Rouge-L is the luck of its sampled answers.

Every epoch, validation samples one answer per prompt (temperature 1, the run's fixed
validation seed) and the run keeps the epoch where that score is highest (`selection: best`).
The highest of 20 noisy scores overstates the kept model's own score, and the runtime table's
"val R-L gap last 20%" (best minus the mean of the last 20% of epochs) inherits that
overstatement. This script scores each run's kept model again on the same validation prompts
with `--draws` fresh sampling seeds, so that the kept model's score is measured without the
selection, and compares both with the last 20% of epochs (scored before any selection, so
unbiased).

    python benchmarks/selection_bias.py [--profile default] [--draws 8]

Needs the runs' folders (results/<profile>/runs/, kept by the DAG, not committed). Writes
benchmarks/results/selection_bias_<profile>.{md,csv}.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from kdbench import config as C, io  # noqa: E402
from kdbench.data import PromptFormat, load_records  # noqa: E402
from kdbench.models import device_name, load_model, load_tokenizer  # noqa: E402
from kdbench.paths import RUNTIME_TABLE, Paths, RunKey  # noqa: E402
from kdbench.tables import last_fifth_mean  # noqa: E402
from kdbench.validation import validator  # noqa: E402

def run_rows(cfg: dict, records: list[dict], draws: int) -> pd.DataFrame:
    """One row per student run: its kept epoch's logged score, the kept model re-scored on the
    validation `records` with `draws` fresh seeds (mean, sd), and the mean logged score of its
    last 20% of epochs."""
    paths = Paths(cfg)
    tok = load_tokenizer(paths.tokenizer)
    fmt = PromptFormat.of(cfg)

    @functools.cache
    def validators(pair: str, seed: int) -> list:  # shared by every method's run of (pair, seed)
        return [validator(tok, records, max_length=cfg["data"]["max_length"], evaluation=cfg["evaluation"],
                          seed=C.derive_seed(cfg["seed"], pair, seed, "revalidation", k), fmt=fmt)
                for k in range(draws)]

    keys = [RunKey(r.pair, r.method, r.variant, r.seed)._asdict() for r in C.runs(cfg)]
    keys = [k for k in keys if Path(paths.run_file("model", **k)).exists()]  # runs the DAG has made
    rows = []
    for i, key in enumerate(keys):
        epochs = pd.read_csv(paths.run_file("epochs", **key))
        if "val_rouge_l" not in epochs or epochs["val_rouge_l"].isna().all():
            continue
        kept = io.read_json(paths.run_file("train", **key))  # the engine's own selection
        model = load_model(paths.run_file("model", **key)).eval()
        fresh = [score(model)["val_rouge_l"] for score in validators(key["pair"], key["seed"])]
        rows.append({**key, "epochs": len(epochs), "kept_epoch": kept["selected_epoch"],
                     "logged_best": float(kept["val_rouge_l_selected"]),
                     "rescored_mean": float(np.mean(fresh)), "rescored_sd": float(np.std(fresh, ddof=1)),
                     "last20_mean": last_fifth_mean(epochs["val_rouge_l"])})
        print(f"selection_bias: {i + 1}/{len(keys)} {key['method']}/{key['variant']}/seed{key['seed']}: logged "
              f"{rows[-1]['logged_best']:.2f}, re-scored {rows[-1]['rescored_mean']:.2f}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def summary(per_run: pd.DataFrame, runtime: pd.DataFrame | None) -> pd.DataFrame:
    """Per (pair, method, variant), means over seeds: the kept epoch's logged score, its
    re-scored score, their difference (the selection's overstatement), and the gap to the last
    20% of epochs measured from each."""
    d = per_run.assign(bias=per_run["logged_best"] - per_run["rescored_mean"],
                       gap_logged=per_run["logged_best"] - per_run["last20_mean"],
                       gap_rescored=per_run["rescored_mean"] - per_run["last20_mean"])
    out = d.groupby(["pair", "method", "variant"], sort=False).agg(
        seeds=("seed", "size"), epochs=("epochs", "first"), logged_best=("logged_best", "mean"),
        rescored=("rescored_mean", "mean"), draw_sd=("rescored_sd", "mean"), bias=("bias", "mean"),
        last20=("last20_mean", "mean"), gap_logged=("gap_logged", "mean"),
        gap_rescored=("gap_rescored", "mean")).reset_index()
    if runtime is not None:  # which rows see all the data every epoch (the convergence criterion's scope)
        frac = runtime.set_index(["pair", "method", "variant"])["data_fraction_mean"]
        out["all_data"] = [bool(np.isclose(frac.get(tuple(k), np.nan), 1.0))
                           for k in out[["pair", "method", "variant"]].itertuples(index=False)]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--draws", type=int, default=8, help="fresh sampling seeds per kept model")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the profile's paths are relative to the repository, as for the DAG
    cfg = C.load(ROOT / "config" / f"{args.profile}.yaml")
    t0 = time.perf_counter()
    records = load_records(Paths(cfg).data("validation"))
    per_run = run_rows(cfg, records, args.draws)
    if per_run.empty:
        raise SystemExit(f"selection_bias: no student run with a model under results/{args.profile}/runs/; "
                         f"run the DAG first (snakemake --cores all --configfile config/{args.profile}.yaml).")
    runtime = [pd.read_csv(f) for pair in per_run["pair"].unique()
               if Path(f := Paths(cfg).table(RUNTIME_TABLE, pair, "csv")).is_file()]
    table = summary(per_run, pd.concat(runtime) if runtime else None)
    out = HERE / "results" / f"selection_bias_{args.profile}"
    io.write_csv(out.with_suffix(".csv"), per_run)
    text = (f"# The kept epoch's validation score, with and without its selection ({args.profile})\n\n"
            f"Measured {time.strftime('%Y-%m-%d')} on {device_name()} ({args.threads} torch thread(s)) in "
            f"{time.perf_counter() - t0:.0f} s: `python benchmarks/selection_bias.py --profile {args.profile} "
            f"--draws {args.draws}`. Each run's kept model (best validation Rouge-L of its epochs, one "
            f"sampled answer per prompt, {len(records)} prompts) scored again on the same prompts with "
            f"{args.draws} fresh sampling seeds. Means over seeds: `logged best` (the kept epoch's score as "
            "logged), `rescored` (the same model, fresh draws; `draw sd`: the sd of one pass over the "
            "draws), `bias` (logged − rescored: what the selection adds), `last 20%` (the logged scores "
            "of the last 20% of epochs, not selected, so not biased), `gap logged` (logged best − last "
            "20%, per run, as the runtime table's gap but per seed) and `gap rescored` (rescored − last "
            "20%: the kept model's own score against the end of training). `all data`: the row sees all "
            f"the training data every epoch. Per run: selection_bias_{args.profile}.csv.\n\n"
            + table.to_markdown(index=False, floatfmt=".2f") + "\n")
    io.write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
