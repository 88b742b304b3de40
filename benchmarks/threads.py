"""Do the conclusions survive a change of floating-point behaviour?

    python benchmarks/threads.py --configfile config/default.yaml --threads 2

Runs the profile a second time with another `threads` setting (a different number of
threads changes the order of floating-point reductions, so every weight drifts a little, as
on another CPU), as a profile of its own, `results/<profile>-threads<N>/`, and compares its
per-method average Rouge-L with the profile's own results (run the profile first). That folder
is deleted first: Snakemake does not rerun a job when only the package's code changed, so
runs left from older code would be compared with the new ones. A method's
conclusion holds when its average moves by less than the half-width of its 95% interval
(t interval over training seeds, as the tables print it).
Results: benchmarks/results/threads.{md,csv} (overwritten).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdbench import config as C  # noqa: E402
from kdbench import io  # noqa: E402
from kdbench.paths import Paths  # noqa: E402
from kdbench.tables import t_quantile  # noqa: E402


def per_seed_avg(runs_csv: Path) -> pd.DataFrame:
    """Average Rouge-L over test sets, one row per (method, variant, seed)."""
    runs = pd.read_csv(runs_csv)
    return runs.groupby(["method", "variant", "seed"], as_index=False)["rouge_l"].mean()


def compare(ref: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (m, v), g in ref.groupby(["method", "variant"]):
        o = other[(other.method == m) & (other.variant == v)]
        if o.empty:  # not run the second time (--main-only leaves out the ablation grid)
            continue
        n = len(g)
        half = float(t_quantile(0.975, n - 1) * g.rouge_l.std(ddof=1) / n ** 0.5) if n > 1 else float("nan")
        delta = float(o.rouge_l.mean() - g.rouge_l.mean())
        # seeds whose score moved at all: the thread count did change the arithmetic
        moved = int((g.set_index("seed").rouge_l - o.set_index("seed").rouge_l).abs().gt(0).sum())
        rows.append({"method": m, "variant": v, "seeds": n, "seeds_moved": moved,
                     "avg": round(g.rouge_l.mean(), 2),
                     "avg_other": round(o.rouge_l.mean(), 2), "delta": round(delta, 2),
                     "ci95_half_width": round(half, 2), "holds": bool(abs(delta) < half)})
    return pd.DataFrame(rows)


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config/default.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cores", default="all")
    ap.add_argument("--main-only", action="store_true",
                    help="second run without the ablation grid (the main table's methods only)")
    args = ap.parse_args()
    raw = yaml.safe_load(open(REPO / args.configfile))
    cfg = C.validate(raw, source=args.configfile)
    ref_csv = REPO / Paths(cfg).long_table("runs")
    if not ref_csv.is_file():
        sys.exit(f"{ref_csv} is missing: run `snakemake --cores all --configfile {args.configfile}` first.")
    if args.threads == cfg["threads"]:
        sys.exit(f"the profile already runs with threads={cfg['threads']}; pass another --threads.")
    other = dict(raw, profile=f"{cfg['profile']}-threads{args.threads}", threads=args.threads)
    if args.main_only:
        other["ablations"] = {"method": None}
    other_paths = Paths(C.validate(other, source="threads"))
    other_root = REPO / other_paths.root
    if other_root.exists():  # always cold: the second run must use this code, not reuse older runs
        shutil.rmtree(other_root)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=REPO, delete=False) as f:
        yaml.safe_dump(other, f, sort_keys=False)
    try:
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", args.cores, "--configfile", f.name, "-q"],
                       cwd=REPO, check=True)
    finally:
        Path(f.name).unlink()
    other_csv = REPO / other_paths.long_table("runs")
    table = compare(per_seed_avg(ref_csv), per_seed_avg(other_csv))
    out = REPO / "benchmarks" / "results"
    io.write_csv(out / "threads.csv", table)
    held = int(table.holds.sum())
    md = [f"# Thread count: {cfg['threads']} vs {args.threads} threads per job ({cfg['profile']} profile)", "",
          f"Command: `python benchmarks/threads.py --configfile {args.configfile} --threads {args.threads} "
          f"--cores {args.cores}{' --main-only' if args.main_only else ''}`; "
          f"machine: {platform.processor() or platform.machine()}, {platform.system()}; measured "
          f"{datetime.date.today()} at commit {_commit()}.", "",
          "avg = mean over training seeds of the average Rouge-L over test sets; delta = the other run minus "
          "this one; the conclusion holds when |delta| < the half-width of the 95% t interval over seeds; "
          "seeds_moved: seeds whose average changed at all.", "",
          f"**{held} of {len(table)} rows hold.**", "", table.to_markdown(index=False), ""]
    io.write_text(out / "threads.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
