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
the per-example scores.

Then bad inputs and failed reruns, one case at a time (`cases`), on a small profile whose data
are local files (the smoke profile's models and budgets, methods kd and cpd): each case's
command, exit status, message (the last line on stderr, or of the failed job's log) and what
was left on disk: an edited data file, a rerun that fails (lr 1e6) and one killed during
`tables`, an empty training file, a read-only results folder, names and numbers the schema
must read right, a mistyped folder, a planted checkpoint, prompt/completion data, a corrupt
line, the checkpoint folders after a complete run. Result: benchmarks/results/faults.md
(overwritten; --skip-kills runs the cases only and keeps the file's first part).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
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


# --- bad inputs and failed reruns -----------------------------------------------------------------

def _kdbench(work: Path, *args) -> tuple[int, list[str], list[str]]:
    """(exit status, stdout lines, non-empty stderr lines) of `python -m kdbench ARGS` in `work`."""
    out = subprocess.run([sys.executable, "-m", "kdbench", *map(str, args)], cwd=work, capture_output=True,
                         text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return out.returncode, out.stdout.splitlines(), [ln for ln in out.stderr.splitlines() if ln.strip()]


def _snakemake(work: Path, profile: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
                           "--configfile", str(profile), "--cores", "2", *extra], cwd=work, capture_output=True, text=True)


def _profile(work: Path, cfg: dict, name: str, **edits) -> Path:
    """`cfg` with `edits` (dotted keys) written to work/<name>.yaml; its path relative to `work`
    (where the commands run)."""
    cfg = copy.deepcopy(cfg)
    for key, value in edits.items():
        *head, last = key.split(".")
        d = cfg
        for k in head:
            d = d.setdefault(k, {})
        d[last] = value
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Path(f"{name}.yaml")


def _write_rows(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _colour_rows(start: int, n: int) -> list[dict]:
    colours, things = ["red", "blue", "green", "yellow", "black", "white"], ["car", "house", "kite", "boat", "hat", "door"]
    return [{"question": f"What colour is the {things[(i // 6) % 6]}?", "context": f"The {things[(i // 6) % 6]} is "
             f"{colours[i % 6]}.", "answer": f"The {things[(i // 6) % 6]} is {colours[i % 6]}."} for i in range(start, start + n)]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()} if root.exists() else {}


def _changes(root: Path, before: dict) -> str:
    after = _files(root)
    new = [k for k in after if k not in before]
    gone = [k for k in before if k not in after]
    changed = [k for k in after if k in before and after[k] != before[k]]
    if not (new or gone or changed):
        return "nothing written or removed under results/"
    return "; ".join(f"{what}: {', '.join(f'`{k}`' for k in keys[:4])}{' …' if len(keys) > 4 else ''} ({len(keys)})"
                     for what, keys in (("new", new), ("removed", gone), ("rewritten", changed)) if keys)


class _Planted:
    """A pickle that creates a file when it is unpickled (what `torch.load(weights_only=False)` would run)."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def cases(base: Path) -> list[dict]:
    """The bad inputs and failed reruns, in order; each {case, what, status, message, left}."""
    import torch

    work = base / "cases"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _write_rows(work / "mydata" / "raw.jsonl", _colour_rows(0, 60))
    _write_rows(work / "mydata" / "valid.jsonl", _colour_rows(60, 12))
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    cfg.update(profile="hub", methods_dir=str(REPO / "methods"), methods={"include": ["kd", "cpd"]},
               ablations={"method": None})
    cfg["data"] = {"source": "hub", "train": "mydata", "fields": {"instruction": "question", "input": "context",
                                                                  "output": "answer"},
                   "benchmarks": {"mytest": "mydata/valid.jsonl"}, "max_length": 256}
    cfg["training"]["teacher_data"] = "train"
    profile = _profile(work, cfg, "hub")
    root = work / "results" / "hub"
    rows, say = [], print

    def add(case, what, status, message, left):
        rows.append({"case": case, "what": what, "status": status, "message": message, "left": left})
        say(f"[{case}] {what}: {status} | {message} | {left}")

    def last(lines):
        return lines[-1] if lines else "(nothing on stderr)"

    # 10b, and the tree the other cases start from
    done = _snakemake(work, profile)
    empty = [d for d in (root / "checkpoints").rglob("*") if d.is_dir() and not any(d.iterdir())] \
        if (root / "checkpoints").exists() else []
    add(10, "a complete `snakemake` run: empty folders left under `checkpoints/`", done.returncode,
        f"{len(empty)} empty folders", "no `checkpoints/` folder" if not (root / "checkpoints").exists()
        else f"`checkpoints/` with {len(empty)} empty folders")

    # 1: an edited data file
    train_before = len(json_lines(root / "data" / "train.jsonl"))
    with open(work / "mydata" / "raw.jsonl", "a") as f:
        f.write(json.dumps(_colour_rows(72, 1)[0]) + "\n")
    dry = _snakemake(work, profile, "-n")
    reason = next((ln.strip() for ln in dry.stdout.split("rule prepare_data:")[-1].splitlines() if "reason:" in ln), "")
    scheduled = "rule prepare_data:" in dry.stdout
    rerun = _snakemake(work, profile)
    add(1, "one line appended to `mydata/raw.jsonl` after a complete run, then `snakemake -n` and `snakemake`",
        rerun.returncode, f"-n schedules prepare_data: {scheduled} ({reason})",
        f"`data/train.jsonl`: {train_before} rows before, {len(json_lines(root / 'data' / 'train.jsonl'))} after")

    # 2, 3: a rerun that fails, then one killed during `tables`
    models = {m: root / "runs" / "tiny" / m / "default" / "seed0" / "model" / "model.safetensors" for m in ("kd", "cpd")}
    teacher = root / "runs" / "tiny" / "teacher" / "default" / "seed0" / "model" / "model.safetensors"
    before = {m: hashlib.sha256(p.read_bytes()).hexdigest() for m, p in models.items()}
    failed = _snakemake(work, _profile(work, cfg, "lr", **{"training.student.lr": 1.0e6}))
    log = (root / "logs" / "distill" / "tiny" / "cpd" / "default.log").read_text().splitlines()
    message = next((ln[ln.index("kdbench distill: error:"):] for ln in log if "kdbench distill: error:" in ln), "")
    kept = {m: p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == before[m] for m, p in models.items()}
    add("2, 3", "`training.student.lr: 1.0e6` after a complete run (Snakemake reruns kd and cpd)", failed.returncode,
        message, ", ".join(f"{m}'s previous `model.safetensors`: {'kept' if k else 'deleted'}" for m, k in kept.items())
        + f"; the teacher's: {'kept' if teacher.is_file() else 'deleted'}")
    _snakemake(work, profile)  # rebuild
    tables = root / "tables"
    t0 = {p.name: p.stat().st_mtime_ns for p in tables.glob("*") if p.suffix in (".md", ".csv", ".tex")}
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
                             "--configfile", str(profile), "--cores", "2", "--forcerun", "tables"], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:  # kill Snakemake and its job once the job has written main.md
        main_md = tables / "main.md"
        if main_md.is_file() and main_md.stat().st_mtime_ns != t0.get("main.md"):
            for pid in [proc.pid] + [pid for pid, stage in jobs_of(work)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    left = {name: ("new" if (tables / name).stat().st_mtime_ns != m else "old") if (tables / name).is_file() else "missing"
            for name, m in t0.items() if name.split(".")[0] in ("main", "runtime")}
    _snakemake(work, profile, "--unlock")
    again = _snakemake(work, profile)
    redone = "rule tables:" in again.stdout + again.stderr
    add(2, "`snakemake --forcerun tables` killed with its job (SIGKILL) once `main.md` is rewritten; then "
        "`--unlock` and `snakemake`", proc.returncode, f"the next run reran tables: {redone} (exit {again.returncode})",
        ", ".join(f"`{k}` {v}" for k, v in sorted(left.items())))

    # 2: why kdbench does not keep outputs with Snakemake's `update` flag (a one-rule workflow)
    toy = base / "update"
    shutil.rmtree(toy, ignore_errors=True)
    toy.mkdir()
    (toy / "Snakefile").write_text('rule a:\n    output: update("out.txt")\n    params: v=config["setting"]\n'
                                   '    shell: "test {params.v} != fail && echo {params.v} > {output}"\n')
    toy_run = lambda *a: subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *a], cwd=toy,  # noqa: E731
                                        capture_output=True, text=True)
    toy_run("--config", "setting=good")
    bad = toy_run("--config", "setting=fail")
    dry = toy_run("-n", "--config", "setting=fail")
    restored = "Restored previous version" in bad.stdout + bad.stderr
    nothing = "Nothing to be done" in dry.stdout + dry.stderr
    add(2, "Snakemake's `update` flag (not used): a one-rule workflow writes `out.txt`, reruns with a failing "
        "setting, then `snakemake -n` with that setting", bad.returncode,
        f"the failed job's output copied back: {restored}; then `snakemake -n`: "
        f"{'Nothing to be done' if nothing else 'reruns the job'}",
        f"`out.txt` holds {(toy / 'out.txt').read_text().strip()!r}, the good run's"
        + (", taken for the failing setting's result" if nothing else ""))

    # 4: an empty training file, a read-only results folder
    (work / "empty.jsonl").write_text("")
    empty_cfg = _profile(work, cfg, "empty", **{"data.train": "empty.jsonl"})
    for stage in ("validate", "prepare_data"):
        snap = _files(work / "results")
        status, _, lines = _kdbench(work, stage, "--config", empty_cfg)
        add(4, f"`data.train` an empty file: `python -m kdbench {stage}`", status, last(lines),
            f"{len(lines)} line(s) on stderr; " + _changes(work / "results", snap))
    ro = base / "readonly"
    shutil.rmtree(ro, ignore_errors=True)
    (ro / "results").mkdir(parents=True)
    shutil.copytree(work / "mydata", ro / "mydata")
    if os.geteuid() == 0:  # root ignores permissions; an immutable folder refuses it too
        locked = subprocess.run(["chattr", "+i", str(ro / "results")], capture_output=True).returncode == 0
    else:
        (ro / "results").chmod(0o555)
        locked = True
    try:
        out = _snakemake(ro, _profile(ro, cfg, "hub"))
    finally:
        subprocess.run(["chattr", "-i", str(ro / "results")], capture_output=True)
        (ro / "results").chmod(0o755)
    err = [ln for ln in out.stderr.splitlines() if ln.strip()]
    add(4, "a read-only `results/` (`chattr +i`): `snakemake`" if locked else "read-only results: not testable here",
        out.returncode, last(err), f"traceback: {'Traceback' in out.stderr}; `results/` "
        f"{'empty' if not any((ro / 'results').iterdir()) else 'not empty'}")

    # 5, 6, 7: names, numbers, a mistyped folder (validate)
    def validate(case, what, path, left=None):
        snap = _files(work / "results")
        status, out, err = _kdbench(work, "validate", "--config", path)
        add(case, what, status, last(err) if status else out[-1], left or _changes(work / "results", snap))
        return out

    named = copy.deepcopy(cfg)
    named["pairs"] = {"None": named["pairs"]["tiny"]}
    named["data"]["benchmarks"] = {"NA": "mydata/valid.jsonl"}
    validate(5, "pair `None`, test set `NA`", _profile(work, named, "names"))
    validate(5, "`results_dir: results;touch x`", _profile(work, cfg, "semicolon", results_dir="results;touch x"))
    validate(5, "ablation row `../../x y;touch z`", _profile(work, cfg, "row", **{
        "ablations": {"method": "cpd", "variants": {"../../x y;touch z": {}}}}))
    numbers = _profile(work, cfg, "numbers", **{"methods.include": ["kd", "skl"]})
    text = (work / numbers).read_text().replace("training:\n", "training:\n  per_method:\n    kd: {lr: 3e-3}\n", 1)
    (work / numbers).write_text(text.replace("methods:\n", "methods:\n  params:\n    skl: {alpha: 1e-1}\n", 1))
    sys.path.insert(0, str(REPO))
    from kdbench import config as C

    with contextlib.chdir(work):  # the profile's paths are relative to it
        loaded = C.load(numbers) if _kdbench(work, "validate", "--config", numbers)[0] == 0 else None
    validate(6, "`training.per_method.kd.lr: 3e-3`, `methods.params.skl.alpha: 1e-1`", numbers,
             f"kd's lr: {C.student_budget(loaded, 'kd')['lr']!r}; skl's variants: "
             f"{sorted({r.variant for r in C.runs(loaded) if r.method == 'skl'})}" if loaded else None)
    validate(6, "a grid `skl.temperature: [2, 2.0]`", _profile(work, cfg, "grid", **{
        "methods.include": ["kd", "skl"], "methods.grids": {"skl": {"temperature": [2, 2.0]}}}))
    validate(7, "`data.train: mydta` (for mydata)", _profile(work, cfg, "typo", **{"data.train": "mydta"}))

    # 8: a planted checkpoint
    planted = root / "checkpoints" / "tiny" / "kd" / "default" / "seed0.pt"
    planted.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": "x", "loop": _Planted(work / "PWNED")}, planted)
    status, _, lines = _kdbench(work, "distill", "--config", profile, "--pair", "tiny", "--method", "kd",
                             "--variant", "default", "--seed", "0")
    add(8, "a pickle that creates a file, planted as kd's checkpoint, then `python -m kdbench distill`", status,
        next((ln for ln in lines if "checkpoint" in ln), "(no word on the checkpoint)"),
        f"the file it creates: {'created' if (work / 'PWNED').exists() else 'absent'}; the planted checkpoint: "
        f"{'still there' if planted.exists() else 'removed'}")

    # 9, 10: prompt/completion data, an empty completion, a corrupt line
    pc = [{"prompt": r["question"] + " " + r["context"], "completion": r["answer"]} for r in _colour_rows(0, 60)]
    _write_rows(work / "pc" / "train.jsonl", pc)
    pc_cfg = copy.deepcopy(cfg)
    pc_cfg["data"].update(train="pc/train.jsonl", fields={"instruction": "prompt", "output": "completion"},
                          benchmarks={"pc": "pc/train.jsonl"})
    out = validate(9, "prompt/completion rows, `data.fields: {instruction: prompt, output: completion}`",
                   _profile(work, pc_cfg, "pc"))
    if out:
        rows[-1]["message"] = " / ".join(ln.strip() for ln in out if ln.startswith(("  train:", "  prompts over")))
    _write_rows(work / "pc" / "gap.jsonl", pc[:6] + [{"prompt": "Name a colour.", "completion": ""}] + pc[6:])
    pc_cfg["data"].update(train="pc/gap.jsonl", benchmarks={"pc": "pc/gap.jsonl"})
    validate(9, "the same with an empty completion on line 7", _profile(work, pc_cfg, "gap"))
    _write_rows(work / "bad" / "raw.jsonl", [json.dumps(r) for r in _colour_rows(0, 20)] + ['{"question": "x", "context": ']
                + [json.dumps(r) for r in _colour_rows(20, 10)])
    snap = _files(work / "results")
    status, _, lines = _kdbench(work, "validate", "--config", _profile(work, cfg, "corrupt", **{"data.train": "bad"}))
    add(10, "line 21 of `bad/raw.jsonl` cut short: `python -m kdbench validate`", status, last(lines),
        f"{len(lines)} line(s) on stderr; " + _changes(work / "results", snap))
    return sorted(rows, key=lambda r: int(str(r["case"]).split(",")[0]))


def json_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def cases_section(rows: list[dict]) -> list[str]:
    cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["## Bad inputs and failed reruns", "",
            f"`python benchmarks/faults.py` (cases) on {platform.machine()}, {os.cpu_count()} CPUs: a profile with "
            "local data files (`mydata/raw.jsonl`, `mydata/valid.jsonl`; the smoke profile's models and budgets, "
            "methods kd and cpd), one case at a time. Exit status: of the command; message: its last line on "
            "stderr (for a failed job, the error line of its log).", "",
            "| case | what | exit | message | left on disk |", "|---|---|---|---|---|",
            *(f"| {r['case']} | {cell(r['what'])} | {r['status']} | {cell(r['message'])} | {cell(r['left'])} |"
              for r in rows), ""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default=str(REPO / "config" / "smoke.yaml"))
    ap.add_argument("--kills", type=int, default=4, help="jobs killed before Snakemake itself is killed")
    ap.add_argument("--every", type=float, default=20.0, help="mean seconds between kills")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smaller profile: 48 training examples, one benchmark, kd and taid")
    ap.add_argument("--workdir", default="/tmp/kdbench-faults")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "faults.md"))
    ap.add_argument("--skip-kills", action="store_true", help="run the bad-input cases only (keep the file's first part)")
    args = ap.parse_args(argv)
    base = Path(args.workdir)
    if args.skip_kills:
        out = Path(args.out)
        head = out.read_text().split("## Bad inputs and failed reruns")[0] if out.exists() else ""
        out.write_text(head.rstrip() + "\n\n" + "\n".join(cases_section(cases(base))))
        return 0

    cfg = yaml.safe_load(Path(args.configfile).read_text())
    cfg["checkpoint"] = {"every_minutes": 0}
    if args.quick:
        cfg["data"]["synthetic_sizes"] = {"train": 48, "validation": 8, "id": 8, "broad": 24}
        cfg["data"]["benchmarks"] = {"id": "id"}
        cfg["methods"] = {"include": ["kd", "taid"]}  # cached teacher logits; a method with state
        cfg["ablations"] = {"method": None}
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
    lines += cases_section(cases(base))
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if len(same_weights) == len(w_clean) and runs_clean.equals(runs_faulty) else 1


if __name__ == "__main__":
    sys.exit(main())
