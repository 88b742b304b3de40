"""What on-policy training costs against kd, per optimizer step and per default-profile run.

    python benchmarks/onpolicy_cost.py --config results/default/config.yaml

Needs the profile's prerequisites of the pair (data, teacher, its logit cache, student_init of
seed 0). Trains the initial student for one epoch on the first `--examples` training examples
with: kd; gkd with λ = 0 (every step on the references) and λ = 1 (every step on fresh student
samples); distillm (θ₀ = 0: references only, plus its validation passes); and times one
validation pass. Times are CPU seconds of this process (`time.process_time`, one thread), which
stay meaningful when other jobs share the machine, unlike wall time. A full run is then
extrapolated from the per-step costs: steps × (reference step + λ × (on-policy step − reference
step)) for gkd, steps × step + (epochs + 1) validation passes for distillm. The first steps of
an untrained student sample long answers, so the on-policy step here is an upper estimate.
Writes benchmarks/results/onpolicy_<profile>.md.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import torch
import yaml

from kdbench import method as M
from kdbench import models
from kdbench.data import encode, load_records
from kdbench.onpolicy import OnPolicy, Teacher, validation_loss
from kdbench.paths import Paths
from kdbench.teacher import CachedTeacher, OnlineTeacher
from kdbench.train import train

RUNS = [("kd", "kd", {}), ("gkd λ=0", "gkd", {"lmbda": 0.0}), ("gkd λ=1", "gkd", {"lmbda": 1.0}),
        ("distillm", "distillm", {})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--pair", default="tiny")
    ap.add_argument("--examples", type=int, default=320)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = yaml.safe_load(open(args.config))
    P, cpu = Paths(cfg), torch.device("cpu")
    budget = {**cfg["training"]["student"], "epochs": 1}
    tok = models.load_tokenizer(P.student_init(args.pair, 0))
    all_records = load_records(P.data("train"))
    examples = encode(tok, all_records[:args.examples], cfg["data"]["max_length"])
    validation = encode(tok, load_records(P.data("validation")), cfg["data"]["max_length"])
    cached = CachedTeacher(P.teacher_cache(args.pair), examples)
    online = OnlineTeacher(models.load_model(P.teacher_model(args.pair)), budget["precision"], cpu)

    rows = {}
    for label, name, params in RUNS:
        meth = M.instantiate(M.get(name, cfg["methods_dir"]), params, name)
        student = models.load_model(P.student_init(args.pair, 0))
        t0 = time.process_time()
        op = None
        if meth.train_on == "mixed":
            op = OnPolicy(meth, examples, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                          max_length=cfg["data"]["max_length"], max_new_tokens=cfg["evaluation"]["max_new_tokens"],
                          precision=budget["precision"], seed=0, validation=validation, model=student)
        res = train(student, examples, budget, seed=0, pad_id=tok.pad_token_id, method=meth,
                    teacher=Teacher(cached, online) if op else cached, kd_ratio=1.0, on_policy=op, desc=label)
        steps = res.stats["train_steps"]
        rows[label] = {"cpu_s": time.process_time() - t0, "steps": steps,
                       "tokens_per_example": res.stats["train_tokens"] / res.stats["train_examples"],
                       "gen_share_wall": res.stats["train_gen_s"] / res.stats["train_wall_s"]}
        rows[label]["step_s"] = rows[label]["cpu_s"] / steps
    student = models.load_model(P.student_init(args.pair, 0))
    t0 = time.process_time()
    validation_loss(student, validation, tok.pad_token_id, budget["precision"])
    val_s = time.process_time() - t0

    full = cfg["training"]["student"]
    n_train = len(all_records)
    full_steps = full["epochs"] * math.ceil(math.ceil(n_train / full["batch_size"]) / full.get("grad_accum", 1))
    ref, on = rows["gkd λ=0"]["step_s"], rows["gkd λ=1"]["step_s"]
    kd_run = full_steps * rows["kd"]["step_s"]
    dm_step = (rows["distillm"]["cpu_s"] - 2 * val_s) / rows["distillm"]["steps"]
    est = {"kd": kd_run, "gkd (λ = 0.5, default)": full_steps * (ref + 0.5 * (on - ref)),
           "gkd λ = 1": full_steps * on, "distillm (θ stays 0)": full_steps * dm_step + (full["epochs"] + 1) * val_s}

    lines = [f"# On-policy methods vs kd ({cfg['profile']} profile, pair {args.pair})", "",
             f"`python benchmarks/onpolicy_cost.py --config {args.config}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores shared with other jobs, one thread. CPU seconds of the process "
             f"(`time.process_time`). One epoch of the initial student on {args.examples} training examples:", "",
             "| run | steps | CPU s / step | tokens trained / example | sampling share of wall time |",
             "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['steps']} | {r['step_s']:.3f} | {r['tokens_per_example']:.1f} | "
                     f"{r['gen_share_wall']:.2f} |")
    lines += ["", f"One validation pass ({len(validation)} examples, DistiLLM's schedule): {val_s:.2f} CPU s.", "",
              f"Extrapolated to one full run of the profile ({full_steps} steps, {full['epochs']} epochs):", "",
              "| method | CPU s / run | / kd |", "|---|---|---|"]
    for label, s in est.items():
        lines.append(f"| {label} | {s:.0f} | {s / kd_run:.2f} |")
    out = Path("benchmarks/results") / f"onpolicy_{cfg['profile']}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
