"""Wall time of a whole profile, cold and rerun, and the throughput of its stages.

    python benchmarks/pipeline.py --configfile config/smoke.yaml --cold
    python benchmarks/pipeline.py --configfile config/default.yaml --cold   # also writes the committed results
    python benchmarks/pipeline.py --configfile config/default.yaml --cold --precision bf16 --gpu-jobs 16   # a GPU
    python benchmarks/pipeline.py --configfile benchmarks/profiles/default214.yaml --cold   # the default of 214c625

--cold deletes results/<profile>/ first (the tokenizer, teacher and every run are rebuilt).
--precision runs a copy of the profile with every training stage and the sampling at that
precision, as profile `<profile>-<precision>` (results/<profile>-<precision>/, beside the
committed runs). --gpu-jobs N lets N jobs share the one GPU (`--resources gpu=N`; the workflow
profile allows 1, which models this small leave mostly idle).
The DAG is run twice: the first run does the work, the second must find nothing to do.
Throughput comes from the profile's own tables (runs.csv) and the jobs' timing files; the CPU
seconds of Snakemake's own process are those of the whole command minus its jobs'.
Results: benchmarks/results/pipeline_<profile>.md, pipeline_<profile>-cuda.md where the jobs ran
on a GPU (overwritten).
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
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdbench import config as C  # noqa: E402
from kdbench import io  # noqa: E402
from kdbench.paths import Paths  # noqa: E402


def run(configfile: str, cores: str, gpu_jobs: int, time_limit: float | None = None) -> tuple[float, float, bool]:
    """Wall seconds and CPU seconds (user + system of Snakemake and every job) of one DAG run,
    and whether it completed. With `time_limit` (seconds), Snakemake is interrupted (SIGINT:
    it stops its running jobs and exits) when the run goes past it; the run then counts as
    not completed."""
    import resource
    import signal

    t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", cores, "--configfile", configfile, "-q",
                             "--resources", f"gpu={gpu_jobs}"], cwd=REPO)
    try:
        rc = proc.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        rc = None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if rc not in (0, None):
        raise subprocess.CalledProcessError(rc, "snakemake")
    return time.perf_counter() - t0, cpu, rc == 0


def stage_times(timings: Path) -> pd.DataFrame:
    """Wall and CPU seconds per rule from the jobs' timing files (`--timing`): count of jobs,
    sum and mean of the wall seconds, sum of the CPU seconds."""
    rows = []
    for tsv in timings.rglob("*.tsv"):
        t = pd.read_csv(tsv, sep="\t").iloc[-1]
        rule = tsv.relative_to(timings).parts[0].removesuffix(".tsv")  # timings/<rule>/... or timings/<rule>.tsv
        rows.append({"rule": rule, "s": float(t["s"]), "cpu_s": float(t["cpu_time"])})
    df = pd.DataFrame(rows)
    if not len(df):
        return df
    out = df.groupby("rule").agg(count=("s", "size"), sum=("s", "sum"), mean=("s", "mean"), cpu_sum=("cpu_s", "sum"))
    return out.round(1)


def at_precision(raw: dict, precision: str) -> dict:
    """The profile with every training stage and the sampling at `precision`, renamed
    `<profile>-<precision>` so that its results sit beside the profile's own."""
    raw = {**raw, "profile": f"{raw['profile']}-{precision}"}
    raw["training"] = {k: {**v, "precision": precision} if isinstance(v, dict) and "epochs" in v else v
                       for k, v in raw["training"].items()}  # the stages, not per_method's overrides
    raw["evaluation"] = {**raw.get("evaluation", {}), "precision": precision}
    return raw


def accelerator() -> str:
    """Where the jobs run: the GPU's name, or '' on a machine without one."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config/default.yaml")
    ap.add_argument("--cores", default="all")
    ap.add_argument("--cold", action="store_true", help="delete results/<profile>/ first")
    ap.add_argument("--precision", choices=["fp32", "bf16"], help="run the profile at this precision throughout")
    ap.add_argument("--gpu-jobs", type=int, default=1, help="jobs sharing the GPU at a time (default 1, as profiles/default)")
    ap.add_argument("--time-limit", type=float, help="stop the first run after this many minutes and report the "
                                                      "stages that completed (the rerun is skipped)")
    ap.add_argument("--note", default="", help="a sentence on the conditions, written under the machine line")
    args = ap.parse_args()
    raw = C.read(REPO / args.configfile)
    if args.precision:
        raw = at_precision(raw, args.precision)
    cfg = C.validate(raw, source=args.configfile)
    root = REPO / Paths(cfg).root
    if args.cold and root.exists():
        shutil.rmtree(root)
    configfile = args.configfile
    if args.precision:  # the renamed copy, inside its own results folder
        io.write_text(root / "profile.yaml", yaml.safe_dump(raw, sort_keys=False))
        configfile = str((root / "profile.yaml").relative_to(REPO))
    first, first_cpu, done = run(configfile, args.cores, args.gpu_jobs,
                                 args.time_limit * 60 if args.time_limit else None)
    gpu = accelerator()
    per_rule = stage_times(REPO / Paths(cfg).timing())
    jobs_cpu = float(per_rule["cpu_sum"].sum()) if len(per_rule) else 0.0
    if not done:
        return partial(cfg, args, first, first_cpu, per_rule, gpu)
    again, _, _ = run(configfile, args.cores, args.gpu_jobs)
    runs = pd.read_csv(REPO / Paths(cfg).long_table("runs"))
    per_run = runs.drop_duplicates(["pair", "method", "variant", "seed"])
    teacher = per_run[per_run.method == "teacher"]
    students = per_run[per_run.method != "teacher"]
    lines = [
        f"# Pipeline timing: profile `{cfg['profile']}`",
        "",
        _measured(args, f"jobs on one {gpu} (`--resources gpu={args.gpu_jobs}`: up to {args.gpu_jobs} at a time), "
                  if gpu else ""),
        "",
        "| what | value |",
        "|---|---|",
        f"| end to end, first run | {first / 60:.1f} min ({first:.0f} s) |",
        f"| CPU seconds, first run: all processes | {first_cpu:.0f} |",
        f"| CPU seconds, first run: Snakemake's own process (all minus the jobs') | {first_cpu - jobs_cpu:.0f} |",
        f"| rerun with nothing changed | {again:.1f} s |",
        f"| student runs | {len(students)} |",
        f"| teacher training tokens/s (response tokens) | {teacher['train_tokens_per_s'].mean():.0f} |",
        f"| student training tokens/s, mean over runs | {students['train_tokens_per_s'].mean():.0f} |",
        f"| generation tokens/s, teacher | {runs[runs.method == 'teacher']['gen_tokens_per_s'].mean():.0f} |",
        f"| generation tokens/s, students, mean | {runs[runs.method != 'teacher']['gen_tokens_per_s'].mean():.0f} |",
        "",
        "Seconds per rule (each job's timing file, results/<profile>/timings/): wall (sum, mean) and CPU (sum);",
        "jobs run in parallel, so the wall sum exceeds the end-to-end time:",
        "",
        per_rule.to_markdown(),
        "",
    ]
    out = REPO / "benchmarks" / "results" / f"pipeline_{cfg['profile']}{'-cuda' if gpu else ''}.md"
    io.write_text(out, "\n".join(lines))
    print("\n".join(lines))


def _measured(args, on_gpu: str) -> str:
    """The report's line on when, where and how the run was measured."""
    return (f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
            f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, {on_gpu}"
            f"`snakemake --cores {args.cores}`; {'cold (results deleted first)' if args.cold else 'warm'}."
            + (f" {args.note}" if args.note else ""))


def partial(cfg: dict, args, first: float, first_cpu: float, per_rule: pd.DataFrame, gpu: str) -> None:
    """The report of a first run stopped at --time-limit: how long it ran and the jobs that
    completed (their timing files), so a run too long for the machine still says how far it got."""
    lines = [
        f"# Pipeline timing: profile `{cfg['profile']}` (stopped)",
        "",
        _measured(args, f"jobs on one {gpu}, " if gpu else ""),
        "",
        f"The first run was stopped at its time limit ({args.time_limit:g} min) after {first / 60:.1f} min "
        f"({first_cpu:.0f} CPU seconds in all processes), before the DAG finished; the jobs below had "
        "completed (each job's timing file, results/<profile>/timings/: wall seconds, sum and mean, and CPU "
        "seconds); the job running at the stop is not in it.",
        "",
        per_rule.to_markdown() if len(per_rule) else "(no job completed)",
        "",
    ]
    out = REPO / "benchmarks" / "results" / f"pipeline_{cfg['profile']}{'-cuda' if gpu else ''}.md"
    io.write_text(out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
