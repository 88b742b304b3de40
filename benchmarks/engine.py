"""Engine speed, side by side in one run: a distillation step and sampling, kdbench against
TRL's GKD loss path, a plain PyTorch loop and `transformers`' generate, with the FLOP floor.

Pairs: `default` (config/default.yaml: student Llama 32 x 1 layer, teacher 96 x 3, V = 1024)
and `mid` (student 256 x 4 layers, teacher 384 x 4 layers, same tokenizer). Data: the
synthetic training split, one fixed batch of 32 examples; teacher logits are cached (computed
once, before timing) for every implementation.

(a) one optimizer step (forward, loss, backward, clipping, AdamW) on that batch:
    kdbench  `kdbench.train.train` with the `kd` method and the cached teacher (its whole
             per-step path: collate, trace, schedule)
    trl      TRL GKDTrainer's compute_loss path with lmbda = 0 (off-policy) and beta = 0 (its
             forward-KL setting): the student's full-sequence logits with the attention mask,
             `GKDTrainer.generalized_jsd_loss` on the response labels; the Trainer's own
             bookkeeping is left out, so a real GKDTrainer step is slower than this
    plain    a hand-written loop: full logits, log-softmax KL over the (B, T, V) tensor at
             the response positions, CE, backward, step
    baseline (with --baseline REV) `train` of the kdbench at git revision REV, run in a
             subprocess worker with the same data and seed, alternating with the current one;
             timed on the one batch (a `train` call's set-up included) and, per step, over a
             12-step epoch of the next examples (the steady state of a pipeline run); over
             that epoch also the current tree with the student's decoder under
             `torch.compile(dynamic=True)`, its compile time in the first call's column
(b) sampling the `id`-style synthetic prompts (100 prompts, batch 100, at most 64 new tokens,
    temperature 1, top_p 1, top_k 0, same seed): `kdbench.generate.sample` (its static-cache
    decoder, kdbench/decode.py, which also stops computing rows that have ended) against
    `model.generate` on the same left-padded batches, both timed from prompt records to
    answer texts (tokenising, padding, sampling, cutting at EOS, decoding); on each pair's
    untrained student and on the committed default's trained kd student (`default, trained`,
    when results/default exists)
(c) the FLOP floor: matmul/attention FLOPs of each measured call (torch.utils.flop_counter)
    divided by the measured fp32 matmul rate (a 1024^3 matmul) of the same thread count.

Timing: CPU time of the process (time.process_time; the machine may be shared, and wall time
then measures the other jobs) and wall time; repetitions interleave the implementations so
each ratio compares figures taken at the same moments. One torch thread unless --threads.

    python benchmarks/engine.py --baseline 214c625     # writes benchmarks/results/engine.{md,csv}
    python benchmarks/engine.py --quick                # default pair only, fewer repetitions

TRL is needed for the trl rows (`pip install trl`; not a kdbench dependency).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEFAULT_PAIR = {
    "student": {"hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": 1},
    "teacher": {"hidden_size": 96, "intermediate_size": 288, "num_hidden_layers": 3},
}
MID_PAIR = {
    "student": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4},
    "teacher": {"hidden_size": 384, "intermediate_size": 1152, "num_hidden_layers": 4},
}
PAIRS = {"default": DEFAULT_PAIR, "mid": MID_PAIR}
# the committed default's kd student (seed 0): sampling is also timed on it, because a trained
# student's answers end at EOS at different lengths (an untrained one runs every row to the cap)
TRAINED = ROOT / "results/default/runs/tiny/kd/default/seed0/model"
BATCH, N_PROMPTS, MAX_NEW, MAX_LENGTH = 32, 100, 64, 256
EPOCH_STEPS = 12  # the baseline comparison also times a 12-step epoch: the steady state of a run
BUDGET = {"batch_size": BATCH, "grad_accum": 1, "lr": 4e-3, "min_lr_ratio": 0.1, "warmup": 0.05,
          "weight_decay": 0.01, "grad_clip": 1.0, "loss_on": "response", "precision": "fp32",
          "bucket_window": 50}


# --- fixture (built once, shared with the worker processes) ------------------------------

def fixture(work: Path, n_examples: int = BATCH):
    """Tokenizer, the first `n_examples` training examples, prompts; built into `work` on first use."""
    from kdbench.data import encode
    from kdbench.models import load_tokenizer
    from kdbench.synthetic import generate_split
    from kdbench.tokenizer import train_bpe

    records = generate_split("train", 400, seed=0)
    if not (work / "tok").exists():
        train_bpe(records, 1024, work / "tok")
    tok = load_tokenizer(work / "tok")
    examples = encode(tok, records[:n_examples], MAX_LENGTH)
    prompts = generate_split("id", N_PROMPTS, seed=1)
    return tok, examples, prompts


def build(tok, pair: str, role: str, seed: int):
    from kdbench.models import build as kbuild

    cfg = {"model_type": "llama", "num_attention_heads": 2 if pair == "default" else 4,
           "num_key_value_heads": 2 if pair == "default" else 4, "max_position_embeddings": MAX_LENGTH,
           "tie_word_embeddings": True, **PAIRS[pair][role]}
    return kbuild({"init": "scratch", "config": cfg, "attn_implementation": "sdpa"}, tok, seed, role)


def teacher_cache(work: Path, tok, examples, pair: str) -> Path:
    """The teacher's cached logits of `examples`, in the format of the kdbench tree imported
    here (the format changed across revisions: a baseline worker builds its own)."""
    from kdbench import teacher

    tree = Path(teacher.__file__).resolve().parents[1].name
    out = work / f"caches-{tree}" / f"cache-{pair}-{len(examples)}"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        teacher.build_cache(build(tok, pair, "teacher", 1), examples, tok.pad_token_id, out, "fp32",
                            torch.device("cpu"))
    return out


# --- the step implementations --------------------------------------------------------------

def kdbench_step(tok, examples, cache: Path, student):
    """One call = one optimizer step of kdbench's engine (train() for one epoch of one batch)."""
    from kdbench import method as M
    from kdbench.teacher import CachedTeacher
    from kdbench.train import train

    # the methods folder beside the kdbench being timed (a baseline worker runs an older tree)
    meth = M.discover(Path(M.__file__).resolve().parents[1] / "methods")["kd"]()
    teacher = CachedTeacher(cache, examples)

    def step():
        train(student, examples, {**BUDGET, "epochs": 1}, seed=0, pad_id=tok.pad_token_id,
              method=meth, teacher=teacher, kd_ratio=1.0, desc="bench")
    return step


def _full_batch(tok, examples, cache: Path):
    """The batch as (B, T) tensors and the cached teacher logits as a (B, T, V) float tensor."""
    from kdbench.data import collate

    batch = collate(examples, tok.pad_token_id)
    logits = np.load(cache / "logits.npy")
    offsets = np.load(cache / "offsets.npy")
    t = torch.zeros(batch["input_ids"].shape + (logits.shape[1],))
    for b, e in enumerate(examples):
        rows = torch.from_numpy(logits[offsets[e.index]:offsets[e.index + 1]].view(np.int16)).view(torch.bfloat16)
        t[b, e.n_prompt - 1:len(e.ids) - 1] = rows.float()
    return batch, t


def trl_step(tok, examples, cache: Path, student):
    """TRL GKDTrainer's compute_loss with lmbda = 0, beta = 0 (labels -100 outside the response)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        from trl import GKDTrainer
    batch, t_logits = _full_batch(tok, examples, cache)
    labels = torch.where(torch.roll(batch["mask"], 1, 1), batch["input_ids"], -100)  # token t+1 of mask t
    opt = torch.optim.AdamW(student.parameters(), lr=4e-3, weight_decay=0.01)

    def step():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = GKDTrainer.generalized_jsd_loss(student_logits=s[:, :-1], teacher_logits=t_logits[:, :-1],
                                               labels=labels[:, 1:], beta=0.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def plain_step(tok, examples, cache: Path, student):
    """A hand-written loop over the full (B, T, V) logits."""
    batch, t_logits = _full_batch(tok, examples, cache)
    mask, targets = batch["mask"], batch["targets"]
    opt = torch.optim.AdamW(student.parameters(), lr=4e-3, weight_decay=0.01)

    def step():
        s = student(input_ids=batch["input_ids"]).logits
        log_q, log_p = torch.log_softmax(s, -1), torch.log_softmax(t_logits, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)[mask].mean()
        loss = kl + 0 * F.cross_entropy(s[mask], targets[mask])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def kdbench_sample(tok, prompts, model):
    from kdbench.generate import sample

    return lambda: sample(model, tok, prompts, seed=0, max_length=MAX_LENGTH, max_new_tokens=MAX_NEW,
                          batch_size=N_PROMPTS, precision="fp32", desc="bench")[1]["gen_tokens"]


def hf_generate(tok, prompts, model):
    """`model.generate` on the same left-padded, length-sorted batch (kdbench's previous sampler),
    with the same work around it as `kdbench.generate.sample`: the prompts tokenised and padded,
    the answers cut at EOS and decoded to text."""
    from kdbench.data import encode_prompts

    @torch.no_grad()
    def run():
        enc = sorted(encode_prompts(tok, prompts), key=len)
        T = max(len(p) for p in enc)
        ids = torch.full((len(enc), T), tok.pad_token_id)
        attn = torch.zeros_like(ids)
        for b, p in enumerate(enc):
            ids[b, T - len(p):], attn[b, T - len(p):] = torch.tensor(p), 1
        torch.manual_seed(0)
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_p=1.0,
                             top_k=0, max_new_tokens=MAX_NEW, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        n_tokens = 0
        for row in out[:, T:].tolist():
            new = row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
            tok.decode(new, skip_special_tokens=True).strip()  # the answer text: timed, not kept
            n_tokens += len(new) + 1
        return n_tokens
    return run


# --- measurement ---------------------------------------------------------------------------

def timed(fn) -> tuple[float, float, object]:
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c, time.perf_counter() - w, out


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate() -> float:
    """fp32 FLOP/s of a 1024 x 1024 x 1024 matmul (best of 5, CPU time)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = min(timed(lambda: a @ b)[0] for _ in range(5))
    return 2 * 1024 ** 3 / best


def worker(work: Path, pair: str, reps: int, n_steps: int, compiled: bool = False) -> dict:
    """CPU seconds of the first `train` call and per kdbench step after it (runs in a
    subprocess, any kdbench tree): `reps` calls of `train` over `n_steps` batches each (1: one
    step with the call's set-up; more: an epoch). `compiled`: the student's decoder wrapped in
    `torch.compile(dynamic=True)` (its compile time is in the first call)."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    tok, examples, _ = fixture(work, n_steps * BATCH)
    student = build(tok, pair, "student", 2)
    if compiled:
        setattr(student, student.base_model_prefix,
                torch.compile(getattr(student, student.base_model_prefix), dynamic=True))
    step = kdbench_step(tok, examples, teacher_cache(work, tok, examples, pair), student)
    first = timed(step)[0]
    return {"first": first, "steps": [timed(step)[0] / n_steps for _ in range(reps)]}


def run_worker(work: Path, tree: Path, pair: str, reps: int, n_steps: int, compiled: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("BENCH_THREADS", "1")}
    out = subprocess.run([sys.executable, __file__, "--worker", str(work), pair, str(reps), str(n_steps),
                          str(int(compiled))], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--baseline", help="git revision of the kdbench to compare the engine with")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        w = args.worker
        print(json.dumps(worker(Path(w[0]), w[1], int(w[2]), int(w[3]), bool(int(w[4])))))
        return
    os.environ["BENCH_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    pairs = ["default"] if args.quick else ["default", "mid"]
    reps = 3 if args.quick else args.reps
    cmd = "python benchmarks/engine.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok, examples, prompts = fixture(work)
        base_tree = None
        if args.baseline:
            base_tree = work / "baseline"
            base_tree.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline, "kdbench", "methods"], cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive.stdout, check=True)
        rate = matmul_rate()
        for pair in pairs:
            cache = teacher_cache(work, tok, examples, pair)
            n_tokens = sum(e.n_response for e in examples)
            impls = {}
            for name, make in (("kdbench", kdbench_step), ("trl", trl_step), ("plain", plain_step)):
                student = build(tok, pair, "student", 2)
                impls[name] = make(tok, examples, cache, student)
                impls[name]()  # warm-up
            step_flops = {name: flops(fn) for name, fn in impls.items()}
            times = {name: [] for name in impls}
            for _ in range(reps):  # interleaved
                for name, fn in impls.items():
                    times[name].append(timed(fn)[:2])
            for name, t in times.items():
                rows.append(_row(pair, "step", name, t, step_flops[name], rate, n_tokens, "response tokens", cmd, args.threads))
            if base_tree is not None:
                for n_steps, label in ((1, ""), (EPOCH_STEPS, f", {EPOCH_STEPS}-step epoch")):
                    batches = fixture(work, n_steps * BATCH)[1]
                    step_tokens = sum(e.n_response for e in batches) / n_steps  # mean per step
                    # alternating subprocesses: current tree, baseline tree, and over an epoch the
                    # current tree with a compiled decoder
                    workers = {f"kdbench (worker{label})": (ROOT, False),
                               f"kdbench {args.baseline} (worker{label})": (base_tree, False)}
                    if n_steps > 1:
                        workers[f"kdbench, torch.compile (worker{label})"] = (ROOT, True)
                    got = {name: [] for name in workers}
                    for _ in range(2):
                        for name, (tree, compiled) in workers.items():
                            got[name].append(run_worker(work, tree, pair, max(1, reps // 2), n_steps, compiled))
                    # FLOPs counted for the current tree only (the baseline tree is not imported
                    # here), and for the one-step batch: an epoch's batches have other lengths
                    for name, runs in got.items():
                        n_flops = step_flops["kdbench"] if n_steps == 1 and workers[name][0] == ROOT else float("nan")
                        rows.append({**_row(pair, "step", name, [(c, float("nan")) for r in runs for c in r["steps"]],
                                            n_flops, rate, step_tokens, "response tokens", cmd, args.threads),
                                     "first_call_cpu_s": float(np.median([r["first"] for r in runs]))})
            rows += sampling_rows(pair, tok, prompts, build(tok, pair, "student", 3).eval(), reps, rate, cmd, args.threads)
        if TRAINED.exists():  # answers that end at EOS, as in the pipeline's validation and test sets
            from kdbench.models import load_model, load_tokenizer

            rows += sampling_rows("default, trained", load_tokenizer(TRAINED), prompts, load_model(TRAINED).eval(),
                                  reps, rate, cmd, args.threads)
    write(pd.DataFrame(rows), rate, args.threads, cmd)


def sampling_rows(pair, tok, prompts, model, reps, rate, cmd, threads) -> list[dict]:
    """kdbench's sampler against `generate` on `model`, interleaved repetitions."""
    samplers = {"kdbench": kdbench_sample(tok, prompts, model), "hf_generate": hf_generate(tok, prompts, model)}
    gen_tokens = {name: fn() for name, fn in samplers.items()}  # warm-up, and the token counts
    gen_flops = {name: flops(fn) for name, fn in samplers.items()}
    times = {name: [] for name in samplers}
    for _ in range(reps):
        for name, fn in samplers.items():
            times[name].append(timed(fn)[:2])
    return [_row(pair, "sample", name, t, gen_flops[name], rate, gen_tokens[name],
                 "generated tokens (EOS included)", cmd, threads) for name, t in times.items()]


def _row(pair, what, impl, times, n_flops, rate, n_tokens, unit, cmd, threads) -> dict:
    cpu = [c for c, _ in times]
    wall = [w for _, w in times]
    return {"pair": pair, "what": what, "impl": impl, "threads": threads, "reps": len(times),
            "cpu_s_min": min(cpu), "cpu_s_median": np.median(cpu),
            "wall_s_min": min(wall), "wall_s_median": np.median(wall),
            "tokens": n_tokens, "token_unit": unit, "tokens_per_cpu_s": n_tokens / np.median(cpu),
            "gflop": n_flops / 1e9, "floor_s": n_flops / rate, "command": cmd}


def write(df: pd.DataFrame, rate: float, threads: int, cmd: str) -> None:
    from kdbench import io

    RESULTS.mkdir(exist_ok=True)
    io.write_csv(RESULTS / "engine.csv", df)
    lines = [f"# Engine speed: distillation step and sampling\n",
             f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, {threads} torch thread(s); command: `{cmd}`. "
             "The machine was shared with other jobs while this ran, so times are CPU seconds of "
             "this process (wall seconds in the CSV) and every ratio compares implementations "
             "measured in interleaved repetitions of the same run.\n",
             f"Measured fp32 matmul rate (1024^3, CPU time): {rate / 1e9:.1f} GFLOP/s. The floor of a "
             "call is its matmul/attention FLOPs (torch.utils.flop_counter) at that rate.\n"]
    for (pair, what), g in df.groupby(["pair", "what"], sort=False):
        ref = g[g["impl"] == "kdbench"]["cpu_s_median"].iloc[0]
        g = g.assign(**{"x kdbench": g["cpu_s_median"] / ref, "floor share": g["floor_s"] / g["cpu_s_median"]})
        cols = ["impl", "reps", "cpu_s_min", "cpu_s_median", "tokens_per_cpu_s", "gflop", "floor_s",
                "floor share", "x kdbench"] + (["first_call_cpu_s"] if what == "step" and "first_call_cpu_s" in g else [])
        lines.append(f"## {pair}: {'one distillation step (batch 32, cached teacher logits)' if what == 'step' else 'sampling (100 prompts, batch 100, <= 64 new tokens)'}\n")
        lines.append(g[cols].to_markdown(index=False, floatfmt=".4g") + "\n")
        lines.append("`x kdbench`: median CPU time relative to kdbench (above 1: slower than kdbench)."
                     + (" `first_call_cpu_s`: a worker's first `train` call (set-up, warm-up and any "
                        "compilation), median over its processes." if what == "step" else "") + "\n")
    io.write_text(RESULTS / "engine.md", "\n".join(lines))


if __name__ == "__main__":
    main()
