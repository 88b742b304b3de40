"""What the fluency score (kdbench/fluency.py) adds to a run's evaluation.

    python benchmarks/fluency_cost.py [--configfile config/default.yaml] [--repeats 3]

Every run's evaluation samples its answers on every test set and sampling seed and then has
its teacher score them (one teacher-forced forward per answer). This times both on the
profile's own models and data: the profile's synthetic suite and trained tokenizer are built
in a temporary folder, the teacher and the student are built from the profile's configs
(random weights: the cost of a forward depends on the shapes, not the weights), the answers
are sampled from the student, then rescored by the teacher; the times are the process's CPU
seconds (robust to other jobs sharing the machine), median of `--repeats`, one thread, as a
distill job runs. Embedded (synthetic) profiles only.
Results: benchmarks/results/fluency_cost.md (overwritten).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from kdbench import config as C  # noqa: E402
from kdbench import models, stages  # noqa: E402
from kdbench.data import PromptFormat, load_records  # noqa: E402
from kdbench.fluency import answer_nll  # noqa: E402
from kdbench.generate import sample  # noqa: E402
from kdbench.paths import Paths  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default=str(REPO / "config" / "default.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fluency_cost.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = C.load(args.configfile)
    if cfg["data"]["source"] != "synthetic":
        sys.exit("fluency_cost.py times embedded (synthetic) profiles only")
    with tempfile.TemporaryDirectory() as tmp:
        cfg["results_dir"] = tmp
        P, ev, fmt = Paths(cfg), cfg["evaluation"], PromptFormat.of(cfg)
        stages.prepare_data(cfg)
        stages.train_tokenizer(cfg)
        tok = models.load_tokenizer(P.tokenizer)
        pair = next(iter(cfg["pairs"].values()))
        teacher = models.build(pair["teacher"], tok, 0, "teacher").eval()
        student = models.build(pair["student"], tok, 1, "student").eval()
        gen, nll, ref, n = [], [], [], 0
        for _ in range(args.repeats):
            g = s = r = 0.0
            n = 0
            for bench in cfg["data"]["benchmarks"]:
                records = load_records(P.data(bench))
                for es in ev["seeds"]:
                    t0 = time.process_time()
                    answers, _ = sample(student, tok, records, seed=es, max_length=cfg["data"]["max_length"],
                                        max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"],
                                        precision=ev["precision"], fmt=fmt)
                    t1 = time.process_time()
                    answer_nll(teacher, tok, records, answers, max_length=cfg["data"]["max_length"],
                               max_prompt_tokens=cfg["data"]["max_prompt_tokens"], precision=ev["precision"], fmt=fmt)
                    t2 = time.process_time()
                    answer_nll(teacher, tok, records, [rec["output"][0] for rec in records],
                               max_length=cfg["data"]["max_length"], max_prompt_tokens=cfg["data"]["max_prompt_tokens"],
                               precision=ev["precision"], fmt=fmt)
                    g, s, r, n = g + t1 - t0, s + t2 - t1, r + time.process_time() - t2, n + len(records)
            gen.append(g)
            nll.append(s)
            ref.append(r)
    g, s, r = statistics.median(gen), statistics.median(nll), statistics.median(ref)
    runs = len(C.runs(cfg)) + cfg["teacher_seeds"] * len(cfg["pairs"])
    shown = Path(args.configfile).resolve()
    shown = shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown
    text = f"""# Fluency score: cost per run, profile `{cfg['profile']}`

Measured {datetime.date.today()} with `python benchmarks/fluency_cost.py --configfile {shown}`
on {platform.machine()} ({cpu_model()}), one thread; median of {args.repeats}.

Per run: {n} answers (every test set x {len(ev['seeds'])} sampling seeds) of the profile's student,
sampled (at most {ev['max_new_tokens']} new tokens), then scored by the profile's teacher. With random
weights the student never ends an answer, so every answer runs to the cap: an upper bound. A trained
student's answers are about as long as the references (answer/ref near 1 in the committed runtime
table), so the last row is the realistic cost.

| what | CPU seconds per run |
|---|---|
| sampling the answers, all at the cap (the evaluation as before) | {g:.2f} |
| the teacher's NLL of those answers (added) | {s:.2f} |
| the teacher's NLL of answers as long as the references (added, realistic) | {r:.2f} |

The profile has {runs} runs (students and teachers), so the score adds about {runs * r:.0f} CPU-seconds
to a cold run ({runs * s:.0f} if every answer ran to the cap), plus loading the teacher once per
distill job and seed (a few milliseconds for the embedded models).
"""
    Path(args.out).write_text(text)
    print(text)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for the results' header."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
