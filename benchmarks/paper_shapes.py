"""The engine at the paper pairs' true shapes: one distillation step, sampling, and the largest
batch that fits, with random weights built from transformers' config classes (every kernel,
memory and time as with the real checkpoints; no download).

Pairs (`SHAPES`): `gpt2` GPT-2 XL (1.5B) -> GPT-2 base (124M), V = 50,257 (config/paper-gpt2.yaml);
`qwen` Qwen2.5-1.5B -> Qwen2.5-0.5B, V = 151,936 (config/paper-qwen.yaml).

(a) One optimizer step on one batch of the protocol's window: `--batch` rows of `--window`
    tokens, the first `--prompt` a prompt and the rest the response that carries the loss
    (random token ids). Every implementation runs the teacher online (no_grad), the student
    forward, the loss, backward, gradient clipping at 1.0 and one fused AdamW step (the same
    optimizer object for all: identical work). Implementations:
      kdbench-plain   the engine's micro-step (`kdbench.train._micro_step`, fused=False): the
                      teacher's and the student's output layers on the response rows only, the
                      chunked divergence of `kdbench.divergences`
      kdbench-fused   the same with `distill.fused` on (kdbench/fused.py): the student's (N, V)
                      logits are never formed
      trl             TRL GKDTrainer.compute_loss: teacher and student full-sequence logits
                      (B, T, V) with the attention mask, `generalized_jsd_loss` on the shifted
                      logits and the response labels (the Trainer's bookkeeping left out)
      hf-loop         a hand-written loop: both models' full logits, the rows of the response
                      taken, log-softmax and the divergence written out in torch
    Losses (`--losses`): `kd` forward KL (TRL beta = 0; kdbench methods/kd.py) and `jsd` the
    generalised JSD at beta = 0.5 (TRL's GKDConfig default; kdbench methods/gkd.py, beta 0.5).
(b) Sampling `--sample-batch` prompts (random ids, lengths drawn in [32, --prompt]) for
    `--new-tokens` new tokens at temperature 1, top_p 1, top_k 0 with the student:
    `kdbench.generate.sample_batch` against `model.generate` on the same left-padded batch. A
    random model almost never draws EOS, so every row runs to the cap.
(c) The largest batch whose step (loss `--fit-loss`) fits: on a GPU, found by trying batches
    (doubling, then bisecting) until one runs out of the GPU's memory; on a CPU, extrapolated to
    `--memory-gib` from the peaks measured at batch 1 and 2 (linear in the batch), since an
    out-of-memory CPU process is killed.

Measures: CPU and wall seconds (medians and spread over interleaved repetitions: A, B, C, A,
B, C, ...), tokens/s (the window's tokens per second of the step; generated tokens per second
of sampling), the step's matmul FLOPs (torch.utils.flop_counter, on the warm-up call) divided by
its median time as a share of this machine's measured matmul rate (the roofline), and peak
memory beyond the weights and the optimizer states: on a GPU `torch.cuda.max_memory_allocated`
minus what was allocated before the step; on a CPU the peak resident set size, sampled every
millisecond by a thread, minus the resident size before the step.

    nice -n 10 python benchmarks/paper_shapes.py                     # CPU defaults (below)
    python benchmarks/paper_shapes.py --device cuda --precision bf16 --batch 8 --sample-batch 64 \\
        --reps 5 --teacher-layers 0                                   # a GPU, the protocol's sizes

CPU defaults: one thread, batch 1 (of the protocol's 8: time, on a shared 2-core machine),
sampling batch 16 (of 64), fp32, and for `qwen` a teacher cut to `--teacher-layers 4` of its 28 layers (the full
teacher in float32 and the student's AdamW states exceed 12 GB); --teacher-layers 0 keeps every
layer. Results: benchmarks/results/paper_shapes.md (and .csv), or --out.
TRL is needed for the trl rows (`pip install trl`; not a kdbench dependency).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from kdbench.models import checkpoint_activations  # noqa: E402

# transformers config keys of the paper pairs (the checkpoints' config.json values that set shapes)
SHAPES = {
    "gpt2": {
        "teacher": {"model_type": "gpt2", "n_layer": 48, "n_embd": 1600, "n_head": 25, "vocab_size": 50257},
        "student": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257},
    },
    "qwen": {
        "teacher": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                    "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                    "tie_word_embeddings": True, "rope_theta": 1e6, "max_position_embeddings": 32768},
        "student": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                    "tie_word_embeddings": True, "rope_theta": 1e6, "max_position_embeddings": 32768},
    },
}
DEPTH_KEY = {"gpt2": "n_layer", "qwen2": "num_hidden_layers"}
LOSSES = ("kd", "jsd")
IMPLS = ("kdbench-plain", "kdbench-fused", "trl", "hf-loop")
PAD = 0


def build(config: dict, seed: int, layers: int | None = None):
    """A causal LM with random weights from transformers' config class for `config`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    if layers:
        cfg[DEPTH_KEY[cfg["model_type"]]] = layers
    conf = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    conf._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(conf)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --- memory ----------------------------------------------------------------------------------

class Peak:
    """Peak memory of a block beyond what was in use when it started, in bytes: CUDA's
    allocator statistics, or the resident set size sampled every millisecond (CPU)."""

    def __init__(self, dev: torch.device):
        self.dev, self.peak = dev, 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base, self.top, self.stop = self.rss(), 0, threading.Event()

        def watch():
            while not self.stop.is_set():
                self.top = max(self.top, self.rss())
                time.sleep(0.001)
        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.top = max(self.top, self.rss())
            self.stop.set()
            self.thread.join()
            self.peak = self.top - self.base


# --- timing ----------------------------------------------------------------------------------

def timed(fn, dev: torch.device) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, peak bytes beyond the start) of one call."""
    with Peak(dev) as peak:
        c, w = time.process_time(), time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        c, w = time.process_time() - c, time.perf_counter() - w
    return c, w, peak.peak


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(dev: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a 4096^3 matmul on `dev` in `dtype` (best of 5: wall time on a GPU, CPU time
    of this process on a CPU, where other jobs may share the cores)."""
    n = 4096
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, dev)[1 if dev.type == "cuda" else 0] for _ in range(5))
    return 2 * n ** 3 / best


# --- the batch and the step implementations ----------------------------------------------------

def make_batch(batch: int, window: int, prompt: int, vocab: int, dev: torch.device) -> dict:
    """`batch` rows of `window` random tokens; the loss on the `window - prompt` response tokens
    (mask/targets in kdbench's layout: position t predicts token t + 1)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (batch, window), generator=g)
    mask = torch.zeros((batch, window), dtype=torch.bool)
    mask[:, prompt - 1:window - 1] = True
    targets = torch.full_like(ids, PAD)
    targets[:, :-1] = ids[:, 1:]
    return {k: v.to(dev) for k, v in {"input_ids": ids, "mask": mask, "targets": targets,
                                      "attention_mask": torch.ones_like(ids)}.items()}


def _method(loss: str):
    from kdbench import method as M

    found = M.discover(ROOT / "methods")
    return found["kd"]() if loss == "kd" else found["gkd"](beta=0.5)


def step_fn(impl: str, loss: str, student, teacher, opt, batch: dict, precision: str):
    """One optimizer step of `impl` on `batch` (a closure)."""
    from kdbench.method import Progress
    from kdbench.models import autocast
    from kdbench.teacher import OnlineTeacher

    dev = batch["input_ids"].device
    params = [p for p in student.parameters()]

    def finish(total):
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if impl.startswith("kdbench"):
        from kdbench.train import _micro_step

        meth, online = _method(loss), OnlineTeacher(teacher, precision, dev)
        fused = impl == "kdbench-fused"
        micro = {k: batch[k] for k in ("input_ids", "mask", "targets")}

        def step():
            total, *_ = _micro_step(student, micro, precision, 1.0, meth, online, None, Progress(), fused)
            finish(total)
        return step

    beta = 0.0 if loss == "kd" else 0.5
    if impl == "trl":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        try:
            from trl.experimental.gkd import GKDTrainer
        except ImportError:
            from trl import GKDTrainer
        # labels: the token at t where t-1 carries kdbench's loss, -100 elsewhere
        labels = torch.where(torch.roll(batch["mask"], 1, 1), batch["input_ids"], -100)

        def step():
            with autocast(precision, dev):
                s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                with torch.no_grad():
                    t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                total = GKDTrainer.generalized_jsd_loss(student_logits=s[:, :-1], teacher_logits=t[:, :-1],
                                                        labels=labels[:, 1:], beta=beta)
            finish(total)
        return step

    mask = batch["mask"]

    def step():  # hf-loop
        with autocast(precision, dev):
            s = student(input_ids=batch["input_ids"]).logits[mask].float()
            with torch.no_grad():
                t = teacher(input_ids=batch["input_ids"]).logits[mask].float()
        log_q, log_p = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
        if beta == 0.0:
            per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
        else:
            log_m = torch.logsumexp(torch.stack([log_p + np.log(beta), log_q + np.log(1 - beta)]), 0)
            per_token = (beta * (log_p.exp() * (log_p - log_m)).sum(-1)
                         + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum(-1))
        finish(per_token.mean())
    return step


def step_rows(pair: str, args, dev, rate: float) -> tuple[list[dict], dict]:
    """Interleaved step measurements of every implementation and loss at --batch, and the
    peaks at batch 1 and 2 for the CPU extrapolation of the largest batch."""
    shapes = SHAPES[pair]
    t_layers = args.teacher_layers if args.teacher_layers is not None else (4 if pair == "qwen" and dev.type == "cpu" else 0)
    teacher = build(shapes["teacher"], 1, t_layers or None).to(dev).eval().requires_grad_(False)
    student = build(shapes["student"], 2).to(dev).train()
    checkpoint_activations(student, args.gradient_checkpointing)  # every implementation alike
    if dev.type == "cuda" and args.precision == "bf16":
        teacher = teacher.to(torch.bfloat16)  # a bf16 checkpoint, as loaded with torch_dtype auto
    V = shapes["student"]["vocab_size"]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, weight_decay=0.01, fused=True)
    info = {"teacher_params": n_params(teacher), "student_params": n_params(student),
            "teacher_layers": t_layers or shapes["teacher"].get("n_layer", shapes["teacher"].get("num_hidden_layers"))}
    # weights and AdamW states (float32 master weights, two moments): what the peak is measured beyond
    info["static_gib"] = (sum(p.numel() * p.element_size() for p in teacher.parameters())
                          + 3 * sum(p.numel() * 4 for p in student.parameters())) / 2**30
    impls = [i for i in args.impls if i != "trl" or _has_trl()]
    rows = []
    batch = make_batch(args.batch, args.window, args.prompt, V, dev)
    tokens = args.batch * args.window
    for loss in args.losses:
        fns = {i: step_fn(i, loss, student, teacher, opt, batch, args.precision) for i in impls}
        flops = {}
        for i, fn in fns.items():  # warm-up (AdamW's states are made here), with the FLOP count
            flops[i] = count_flops(fn)
        got = {i: [] for i in fns}
        for _ in range(args.reps):
            for i, fn in fns.items():
                got[i].append(timed(fn, dev))
                print(f"paper_shapes: {pair} step {loss} {i}: {got[i][-1]}", file=sys.stderr, flush=True)
        for i, t in got.items():
            rows.append(_row(pair, "step", i, loss, args.batch, t, tokens, flops[i], rate))
    if dev.type == "cpu" and args.fit:
        measured = {(r["impl"], r["loss"]): r for r in rows if r["batch"] == 1}
        for loss in [args.fit_loss]:
            for i in [i for i in impls if i in args.fit_impls]:
                peaks = {}
                for b in (1, 2):  # batch 1: the step measured above where there is one
                    if b == 1 and (i, loss) in measured:
                        peaks[b] = measured[(i, loss)]["peak_gib_median"] * 2**30
                        continue
                    small = make_batch(b, args.window, args.prompt, V, dev)
                    fn = step_fn(i, loss, student, teacher, opt, small, args.precision)
                    peaks[b] = timed(fn, dev)[2]
                rows.append({"pair": pair, "what": "largest batch", "impl": i, "loss": loss,
                             "peak_gib_b1": peaks[1] / 2**30, "peak_gib_b2": peaks[2] / 2**30,
                             **extrapolate(peaks[1], peaks[2], args.memory_gib, info["static_gib"])})
    elif dev.type == "cuda" and args.fit:
        for loss in [args.fit_loss]:
            for i in [i for i in impls if i in args.fit_impls]:
                fits = largest_batch(i, loss, student, teacher, opt, args, V, dev)
                rows.append({"pair": pair, "what": "largest batch", "impl": i, "loss": loss,
                             "memory_gib": torch.cuda.get_device_properties(dev).total_memory / 2**30,
                             "largest_batch": fits, "how": "tried (doubling, then bisection)"})
    del teacher, student, opt
    return [{**r, **info} for r in rows], info


def extrapolate(peak_b1: float, peak_b2: float, memory_gib: float, static_gib: float) -> dict:
    """The largest batch whose peak (bytes beyond the weights and optimizer states, `static_gib`;
    linear in the batch through batch 1 and 2) fits `memory_gib`; none where the peak hardly grows from batch 1
    to 2 (a fixed term, e.g. the gradients under gradient checkpointing, sets it there, and a
    line through the two says nothing about where the rows take over)."""
    per_row = peak_b2 - peak_b1
    out = {"gib_per_row": per_row / 2**30, "memory_gib": memory_gib}
    if per_row < 0.1 * peak_b1:
        return {**out, "largest_batch": None, "how": "not extrapolated: the peak grows by under 10% from batch 1 to 2"}
    return {**out, "largest_batch": int(((memory_gib - static_gib) * 2**30 - (peak_b1 - per_row)) // per_row),
            "how": "extrapolated from batch 1 and 2"}


def largest_batch(impl, loss, student, teacher, opt, args, V, dev, cap: int = 4096) -> int:
    """The largest batch whose step runs without CUDA running out of memory (up to `cap`)."""
    def fits(b):
        try:
            step_fn(impl, loss, student, teacher, opt, make_batch(b, args.window, args.prompt, V, dev), args.precision)()
            return True
        except torch.cuda.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            return False
        finally:
            torch.cuda.empty_cache()

    lo, hi = 0, 1
    while hi <= cap and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _has_trl() -> bool:
    try:
        import trl  # noqa: F401
        return True
    except ImportError:
        print("paper_shapes: TRL is not installed (pip install trl): no trl rows", file=sys.stderr)
        return False


# --- sampling --------------------------------------------------------------------------------

def sample_rows(pair: str, args, dev, rate: float) -> list[dict]:
    from kdbench.generate import sample_batch
    from kdbench.models import autocast

    student = build(SHAPES[pair]["student"], 3).to(dev).eval()
    V = SHAPES[pair]["student"]["vocab_size"]
    rng = np.random.default_rng(0)
    lengths = sorted(rng.integers(32, args.prompt + 1, args.sample_batch).tolist())
    prompts = [rng.integers(1, V, n).tolist() for n in lengths]
    eos = V - 1  # a random model draws it with probability about 1/V per token
    T = max(lengths)
    ids = torch.full((len(prompts), T), PAD)
    attn = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], attn[b, T - len(p):] = torch.tensor(p), 1
    ids, attn = ids.to(dev), attn.to(dev)

    @torch.no_grad()
    def kdbench():
        torch.manual_seed(0)
        with autocast(args.precision, dev):
            new = sample_batch(student, prompts, [args.new_tokens] * len(prompts), eos=eos, pad=PAD,
                               temperature=1.0, top_p=1.0, top_k=0)
        return sum(len(n) for n in new)

    @torch.no_grad()
    def generate():
        torch.manual_seed(0)
        with autocast(args.precision, dev):
            out = student.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_p=1.0,
                                   top_k=0, max_new_tokens=args.new_tokens, eos_token_id=eos, pad_token_id=PAD)
        return int((out[:, T:] != PAD).sum())

    fns = {"kdbench": kdbench, "hf-generate": generate}
    n_new = {name: fn() for name, fn in fns.items()}  # warm-up and the token counts
    got = {name: [] for name in fns}
    for _ in range(args.sample_reps):
        for name, fn in fns.items():
            got[name].append(timed(fn, dev))
            print(f"paper_shapes: {pair} sample {name}: {got[name][-1]}", file=sys.stderr, flush=True)
    return [_row(pair, "sample", name, "-", args.sample_batch, t, n_new[name], float("nan"), rate)
            for name, t in got.items()]


def _row(pair, what, impl, loss, batch, times, tokens, flops, rate) -> dict:
    cpu, wall, peak = (np.array([t[k] for t in times], dtype=float) for k in range(3))
    # on a GPU the CPU seconds of the process are not the work: rates use wall time there
    sec = wall if torch.cuda.is_available() else cpu
    med = float(np.median(sec))
    return {"pair": pair, "what": what, "impl": impl, "loss": loss, "batch": batch, "reps": len(times),
            "s_median": med, "s_min": float(sec.min()), "s_max": float(sec.max()),
            "wall_s_median": float(np.median(wall)), "tokens": tokens, "tokens_per_s": tokens / med,
            "peak_gib_median": float(np.median(peak)) / 2**30, "peak_gib_max": float(peak.max()) / 2**30,
            "tflop": flops / 1e12, "roofline_share": flops / med / rate}


# --- report ----------------------------------------------------------------------------------

def machine(dev: torch.device) -> str:
    from kdbench.models import device_name

    name = device_name(dev)
    return f"{name} ({torch.get_num_threads()} torch threads)" if dev.type == "cpu" else name


def write(df: pd.DataFrame, args, dev, rate: float, cmd: str) -> None:
    from kdbench import io

    out = Path(args.out)
    io.write_csv(out.with_suffix(".csv"), df)
    timer = "wall seconds" if dev.type == "cuda" else "CPU seconds of this process (time.process_time)"
    lines = [f"# The engine at the paper pairs' true shapes\n",
             f"Measured {datetime.date.today()} on **{machine(dev)}**, {args.precision}, torch {torch.__version__}; "
             f"command: `{cmd}`. Times are {timer}, median over {args.reps} interleaved repetitions (min and "
             "max beside it)."
             + (" The machine was shared with other engineers' jobs while this ran, so wall time measured them "
                "too; CPU time of this process is what the ratios compare, and they compare implementations "
                "measured in the same rounds." if dev.type == "cpu" else "")
             + (f" {args.note}" if args.note else "") + "\n",
             f"Matmul rate of this machine ({args.precision}, 4096^3): {rate / 1e12:.3f} TFLOP "
             + ("per second" if dev.type == "cuda" else "per CPU-second (the CPU time of all threads counted, as the "
                "step's)") + ". "
             "`roofline`: the step's matmul FLOPs (torch.utils.flop_counter) per median second, as a share "
             "of that rate. `peak GiB`: memory beyond the weights and AdamW states at the step's peak "
             "(gradients, activations, logits, the teacher's outputs)"
             + (": resident set size sampled every millisecond, minus the size before the step." if dev.type == "cpu"
                else ": torch.cuda.max_memory_allocated minus the allocation before the step.") + "\n"]
    for pair, g in df.groupby("pair", sort=False):
        lines.append(f"## {pair}: {SHAPES[pair]['teacher']['model_type']}, V = {SHAPES[pair]['student']['vocab_size']:,}\n")
        steps = g[g.what == "step"]
        if len(steps):
            info = steps.iloc[0]
            lines.append(f"Teacher {info['teacher_params'] / 1e9:.2f}B parameters ({int(info['teacher_layers'])} layers), "
                         f"student {info['student_params'] / 1e6:.0f}M.\n")
            lines.append(f"One optimizer step, online teacher, batch {args.batch} x {args.window} tokens "
                         f"({args.window - args.prompt} response tokens per row carry the loss); weights and "
                         f"AdamW states: {info['static_gib']:.1f} GiB"
                         + ("; the student with gradient checkpointing (`training.<budget>.gradient_checkpointing`"
                            ", kdbench.models.checkpoint_activations) in every implementation"
                            if args.gradient_checkpointing else "") + ".\n")
            for loss, s in steps.groupby("loss", sort=False):
                ref = s[s.impl == "kdbench-fused"]
                ref_s = float(ref["s_median"].iloc[0]) if len(ref) else np.nan
                ref_m = float(ref["peak_gib_median"].iloc[0]) if len(ref) else np.nan
                t = s.assign(**{"time / kdbench-fused": s["s_median"] / ref_s,
                                "peak / kdbench-fused": s["peak_gib_median"] / ref_m})
                lines.append(f"Loss `{loss}` ({'forward KL' if loss == 'kd' else 'generalised JSD, beta 0.5'}):\n")
                lines.append(t[["impl", "s_median", "s_min", "s_max", "tokens_per_s", "peak_gib_median",
                                "tflop", "roofline_share", "time / kdbench-fused", "peak / kdbench-fused"]]
                             .rename(columns={"s_median": "s (median)", "s_min": "min", "s_max": "max",
                                              "tokens_per_s": "tokens/s", "peak_gib_median": "peak GiB",
                                              "roofline_share": "roofline"})
                             .to_markdown(index=False, floatfmt=".3g") + "\n")
        fit = g[g.what == "largest batch"]
        if len(fit):
            cols = [c for c in ("impl", "loss", "peak_gib_b1", "peak_gib_b2", "gib_per_row", "memory_gib",
                                "largest_batch", "how") if c in fit]
            lines.append(f"Largest batch ({args.window}-token rows) whose step fits the memory, weights and "
                         "AdamW states included:\n")
            lines.append(fit[cols].to_markdown(index=False, floatfmt=".3g") + "\n")
        samp = g[g.what == "sample"]
        if len(samp):
            ref = float(samp[samp.impl == "hf-generate"]["s_median"].iloc[0])
            lines.append(f"Sampling with the student: batch {args.sample_batch}, prompts of 32 to {args.prompt} "
                         f"tokens, {args.new_tokens} new tokens per row (no row ends early), temperature 1; "
                         f"{args.sample_reps} interleaved repetitions.\n")
            lines.append(samp.assign(**{"speed-up over generate": ref / samp["s_median"]})
                         [["impl", "s_median", "s_min", "s_max", "tokens_per_s", "peak_gib_median",
                           "speed-up over generate"]]
                         .rename(columns={"s_median": "s (median)", "s_min": "min", "s_max": "max",
                                          "tokens_per_s": "tokens/s", "peak_gib_median": "peak GiB"})
                         .to_markdown(index=False, floatfmt=".3g") + "\n")
    io.write_text(out, "\n".join(lines))
    print("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads on a CPU (1: on a shared machine, a second OpenMP thread spins "
                         "while the first waits for a core, and that spinning counts as CPU time)")
    ap.add_argument("--batch", type=int, default=1, help="rows per step (the protocol's: 8)")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens per row (the protocol's cap)")
    ap.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    ap.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="the step's implementations")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="the student recomputes its layers in the backward pass, in every implementation")
    ap.add_argument("--teacher-layers", type=int, help="cut the teacher to this many layers (0: all)")
    ap.add_argument("--sample-batch", type=int, default=16, help="the protocol's: 64")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--sample-reps", type=int, default=3)
    ap.add_argument("--memory-gib", type=float, default=80.0, help="memory for the largest-batch extrapolation (CPU)")
    ap.add_argument("--fit-loss", choices=LOSSES, default="jsd", help="the loss of the largest-batch search")
    ap.add_argument("--fit-impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="implementations of the largest-batch search")
    ap.add_argument("--no-fit", dest="fit", action="store_false", help="skip the largest batch")
    ap.add_argument("--no-step", dest="step", action="store_false")
    ap.add_argument("--no-sample", dest="sample", action="store_false")
    ap.add_argument("--out", default=str(HERE / "results" / "paper_shapes.md"))
    ap.add_argument("--note", default="", help="a sentence on the conditions (e.g. what else ran on the machine)")
    ap.add_argument("--merge", nargs="*", default=[], help="CSVs of earlier parts to report with this run's rows")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and argv is None:
        # glibc then maps every block of 64 KiB or more on its own and unmaps it when freed, so the
        # resident size follows the live tensors (its default threshold grows up to 32 MiB and
        # keeps freed blocks below it in the heap, hiding reused memory from the peak)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    torch.set_num_threads(args.threads)
    cmd = "python benchmarks/paper_shapes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rate = matmul_rate(dev, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    rows = [pd.read_csv(f) for f in args.merge]  # earlier parts of the measurement (their CSVs)
    for pair in args.pairs:
        if args.step:
            rows.append(pd.DataFrame(step_rows(pair, args, dev, rate)[0]))
        if args.sample:
            rows.append(pd.DataFrame(sample_rows(pair, args, dev, rate)))
        pd.concat(rows).to_csv(Path(args.out).with_suffix(".partial.csv"), index=False)  # survives a kill
    write(pd.concat(rows, ignore_index=True), args, dev, rate, cmd)
    Path(args.out).with_suffix(".partial.csv").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
