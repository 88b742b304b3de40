"""Faults under load: the smoke profile while a second process kills random jobs.

    nice python benchmarks/faults.py [--configfile config/smoke.yaml] [--kills 4] [--seed 0] [--quick]

Runs the profile twice in fresh folders under --workdir: once cleanly, once while a killer
thread sends SIGKILL to a random running `python -m kdbench` job of that run every few
seconds (at most --kills jobs), and finally to Snakemake itself (a stale lock, as after a
crashed node). After every interruption Snakemake is run again (`--unlock` first when it was
killed) until it completes. Checkpoints are written after every step (`checkpoint.every_minutes:
0`) so that kills land inside epochs and the resume path is exercised. --quick shrinks the
profile (48 training examples, one benchmark, kd and taid, no ablation) for a machine shared
with other work.

Compares the two runs: every run's model weights (bitwise), the tables' quality columns, and
the per-example scores. Result: benchmarks/results/faults.md (overwritten).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdbench.paths import LONG_TABLES  # noqa: E402


def snakemake(work: Path, profile: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(profile), "--cores", "2", "--config", f"methods_dir={REPO / 'methods'}", *extra]
    log = open(work / "snakemake.log", "a")
    return subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)


def jobs_of(work: Path) -> list[tuple[int, str]]:
    """(pid, stage) of the `python -m kdbench` jobs running in `work`."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(d / "cwd")
        except OSError:
            continue
        if b"kdbench" in argv and cwd == str(work):
            i = argv.index(b"kdbench")
            out.append((int(d.name), argv[i + 1].decode() if len(argv) > i + 1 else "?"))
    return out


class Killer(threading.Thread):
    """SIGKILLs a random job every `every` seconds (jittered), `kills` times, then Snakemake once."""

    def __init__(self, work: Path, kills: int, rng: random.Random, every: float):
        super().__init__(daemon=True)
        self.work, self.left, self.rng, self.every = work, kills, rng, every
        self.snakemake: subprocess.Popen | None = None
        self.log: list[dict] = []
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def run(self):
        while not self.stop.wait(self.rng.uniform(0.5, 1.5) * self.every):
            jobs = jobs_of(self.work)
            if self.left > 0 and jobs:
                pid, stage = self.rng.choice(jobs)
                self._kill(pid, stage)
                self.left -= 1
            elif self.left == 0 and self.snakemake is not None and self.snakemake.poll() is None and jobs:
                self._kill(self.snakemake.pid, "snakemake")
                for pid, stage in jobs:  # its jobs die with the node
                    self._kill(pid, stage)
                self.left = -1

    def _kill(self, pid, what):
        try:
            os.kill(pid, signal.SIGKILL)
            self.log.append({"t_s": round(time.perf_counter() - self.t0, 1), "killed": what, "pid": pid})
        except ProcessLookupError:
            pass


def run_until_complete(work: Path, profile: Path, killer: Killer | None) -> dict:
    attempts, t0 = 0, time.perf_counter()
    while True:
        attempts += 1
        proc = snakemake(work, profile)
        if killer is not None:
            killer.snakemake = proc
        rc = proc.wait()
        if rc == 0:
            return {"attempts": attempts, "wall_s": time.perf_counter() - t0}
        if killer is None or attempts > 20:  # the clean run has nothing to retry
            raise SystemExit(f"{work}: failed after {attempts} attempt(s); see {work / 'snakemake.log'}")
        if "cannot be locked" in (work / "snakemake.log").read_text()[-3000:] or rc < 0:
            snakemake(work, profile, "--unlock").wait()


def weights(root: Path) -> dict[str, str]:
    """sha256 of every model.safetensors under the profile's runs (and student inits)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("model.safetensors"))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default=str(REPO / "config" / "smoke.yaml"))
    ap.add_argument("--kills", type=int, default=4, help="jobs killed before Snakemake itself is killed")
    ap.add_argument("--every", type=float, default=20.0, help="mean seconds between kills")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smaller profile: 48 training examples, one benchmark, kd and taid")
    ap.add_argument("--workdir", default="/tmp/kdbench-faults")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "faults.md"))
    args = ap.parse_args(argv)

    cfg = yaml.safe_load(Path(args.configfile).read_text())
    cfg["checkpoint"] = {"every_minutes": 0}
    if args.quick:
        cfg["data"]["synthetic_sizes"] = {"train": 48, "validation": 8, "id": 8, "broad": 24}
        cfg["data"]["benchmarks"] = {"id": "id"}
        cfg["methods"] = {"include": ["kd", "taid"]}  # cached teacher logits; a method with state
        cfg["ablations"] = {"method": None}
    base = Path(args.workdir)
    shutil.rmtree(base, ignore_errors=True)
    runs = {}
    for name in ("clean", "faulty"):
        work = base / name
        work.mkdir(parents=True)
        profile = work / "profile.yaml"
        profile.write_text(yaml.safe_dump(cfg, sort_keys=False))
        killer = Killer(work, args.kills, random.Random(args.seed), args.every) if name == "faulty" else None
        if killer:
            killer.start()
        runs[name] = run_until_complete(work, profile, killer)
        if killer:
            killer.stop.set()
            runs[name]["kills"] = killer.log
        runs[name]["root"] = work / "results" / cfg.get("profile", "default")

    clean, faulty = runs["clean"]["root"], runs["faulty"]["root"]
    w_clean, w_faulty = weights(clean), weights(faulty)
    same_weights = [k for k in w_clean if w_faulty.get(k) == w_clean[k]]
    quality = ["pair", "method", "variant", "seed", "benchmark", "rouge_l", "rouge_l_eval_std", "n_examples"]
    runs_clean = pd.read_csv(clean / "tables" / LONG_TABLES["runs"])[quality]
    runs_faulty = pd.read_csv(faulty / "tables" / LONG_TABLES["runs"])[quality]
    ex_clean = pd.read_csv(clean / "tables" / LONG_TABLES["examples"])
    ex_faulty = pd.read_csv(faulty / "tables" / LONG_TABLES["examples"])
    main_same = (clean / "tables" / "main.md").read_text() == (faulty / "tables" / "main.md").read_text()
    # hidden files the clean run has too (Snakemake's time stamps, the figures' .done) are no leftovers
    hidden = lambda root: {str(p.relative_to(root)) for p in root.rglob(".*")}  # noqa: E731
    leftovers = sorted(hidden(faulty) - hidden(clean)) + \
        sorted(str(p.relative_to(faulty)) for p in (faulty / "checkpoints").rglob("*.pt"))

    kills = runs["faulty"]["kills"]
    lines = [
        "# Faults under load", "",
        f"`python benchmarks/faults.py --configfile {Path(args.configfile).relative_to(REPO)} --kills {args.kills} "
        f"--every {args.every} --seed {args.seed}{' --quick' if args.quick else ''}` on {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other work), `--cores 2`, checkpoints after every step.", "",
        "The profile ran once cleanly and once while a second thread sent SIGKILL to random running "
        "`python -m kdbench` jobs and finally to Snakemake itself (with its jobs); Snakemake was rerun "
        "(`--unlock` first after its own kill) until it completed.", "",
        "| run | Snakemake invocations | wall s |", "|---|---|---|",
        *(f"| {n} | {r['attempts']} | {r['wall_s']:.0f} |" for n, r in runs.items()), "",
        "Kills (seconds after the faulty run started):", "",
        "| t s | killed |", "|---|---|", *(f"| {k['t_s']} | {k['killed']} |" for k in kills), "",
        "| check | result |", "|---|---|",
        f"| model weights bitwise equal (teacher, student inits, every run) | {len(same_weights)} of {len(w_clean)} |",
        f"| runs.csv quality columns equal | {runs_clean.equals(runs_faulty)} |",
        f"| examples.csv.gz (per-example scores) equal | {ex_clean.equals(ex_faulty)} |",
        f"| main.md equal | {main_same} |",
        f"| hidden temporaries or checkpoints left under results/ | {len(leftovers)} |", "",
    ]
    if leftovers:
        lines += ["Left over:", "", *(f"- `{p}`" for p in leftovers), ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if len(same_weights) == len(w_clean) and runs_clean.equals(runs_faulty) else 1


if __name__ == "__main__":
    sys.exit(main())
