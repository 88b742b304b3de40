"""Wall time of a whole profile, cold and rerun, and the throughput of its stages.

    python benchmarks/pipeline.py --configfile config/smoke.yaml --cold
    python benchmarks/pipeline.py --configfile config/default.yaml --cold   # also writes the committed results

--cold deletes results/<profile>/ first (the tokenizer, teacher and every run are rebuilt).
The DAG is run twice: the first run does the work, the second must find nothing to do.
Throughput comes from the profile's own tables (runs.csv) and Snakemake's benchmark files.
Results: benchmarks/results/pipeline_<profile>.md (overwritten).
"""
from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdbench import config as C  # noqa: E402
from kdbench import io  # noqa: E402
from kdbench.paths import Paths  # noqa: E402


def run(configfile: str, cores: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", cores, "--configfile", configfile, "-q"],
                   cwd=REPO, check=True)
    return time.perf_counter() - t0


def stage_times(timings: Path) -> pd.DataFrame:
    """Wall seconds per rule from Snakemake's timing (`benchmark:`) files (sum and count of jobs)."""
    rows = []
    for tsv in timings.rglob("*.tsv"):
        rule = tsv.relative_to(timings).parts[0]
        rows.append({"rule": rule, "s": float(pd.read_csv(tsv, sep="\t")["s"].iloc[-1])})
    df = pd.DataFrame(rows)
    return df.groupby("rule")["s"].agg(["count", "sum", "mean"]).round(1) if len(df) else df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config/default.yaml")
    ap.add_argument("--cores", default="all")
    ap.add_argument("--cold", action="store_true", help="delete results/<profile>/ first")
    args = ap.parse_args()
    cfg = C.load(REPO / args.configfile)
    root = REPO / Paths(cfg).root
    if args.cold and root.exists():
        shutil.rmtree(root)
    first = run(args.configfile, args.cores)
    again = run(args.configfile, args.cores)
    runs = pd.read_csv(REPO / Paths(cfg).long_table("runs"))
    per_run = runs.drop_duplicates(["pair", "method", "variant", "seed"])
    teacher = per_run[per_run.method == "teacher"]
    students = per_run[per_run.method != "teacher"]
    lines = [
        f"# Pipeline timing: profile `{cfg['profile']}`",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
        f"`snakemake --cores {args.cores}`; {'cold (results deleted first)' if args.cold else 'warm'}.",
        "",
        "| what | value |",
        "|---|---|",
        f"| end to end, first run | {first / 60:.1f} min ({first:.0f} s) |",
        f"| rerun with nothing changed | {again:.1f} s |",
        f"| student runs | {len(students)} |",
        f"| teacher training tokens/s (response tokens) | {teacher['train_tokens_per_s'].mean():.0f} |",
        f"| student training tokens/s, mean over runs | {students['train_tokens_per_s'].mean():.0f} |",
        f"| generation tokens/s, teacher | {runs[runs.method == 'teacher']['gen_tokens_per_s'].mean():.0f} |",
        f"| generation tokens/s, students, mean | {runs[runs.method != 'teacher']['gen_tokens_per_s'].mean():.0f} |",
        "",
        "Wall seconds per rule (Snakemake timing files, results/<profile>/timings/; jobs run in parallel, so the sum exceeds the",
        "end-to-end time):",
        "",
        stage_times(REPO / Paths(cfg).timing()).to_markdown(),
        "",
    ]
    out = REPO / "benchmarks" / "results" / f"pipeline_{cfg['profile']}.md"
    io.write_text(out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
