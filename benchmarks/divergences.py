"""Time and peak memory of one forward + backward of the divergences, against baselines.

Compares `kdbench.divergences` (chunked, float32) with
  plain  a textbook PyTorch implementation over the whole (B, T, V) tensor, and
  trl    TRL's `generalized_jsd_loss` (GKDTrainer; beta = 0 is its forward-KL branch),
for forward KL and Jensen-Shannon (β = 0.1) at V = 4096 and V = 50257 with B·T = 8192 tokens
(B = 8, T = 1024, every token masked in), float32 logits on the CPU.

Each (function, V, implementation) runs in a fresh Python process: the first call gives the
peak memory, as the growth of the process' maximum resident set size (ru_maxrss) over its
resident size just before the call (inputs already built; the student gradient the call
creates is included), and the following calls give the time (median).

    python benchmarks/divergences.py            # writes benchmarks/results/divergences.{md,csv}
    python benchmarks/divergences.py --quick    # V = 4096 only, fewer repeats

`trl` is needed for the trl rows only (`pip install trl`; it is not a kdbench dependency).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
B, T = 8, 1024
BETA = 0.1
FUNCTIONS = ["forward_kl", "jensen_shannon"]
IMPLS = ["ours", "plain", "trl"]


# --- worker (one configuration per process) ---------------------------------------------

def _implementation(impl: str, fn: str):
    import torch
    import torch.nn.functional as F

    if impl == "ours":
        from kdbench import divergences as D
        if fn == "forward_kl":
            return lambda s, t, m: D.forward_kl(s, t, m)
        return lambda s, t, m: D.jensen_shannon(s, t, m, beta=BETA)
    if impl == "plain":
        if fn == "forward_kl":
            return lambda s, t, m: F.kl_div(torch.log_softmax(s, -1), torch.log_softmax(t, -1),
                                            reduction="none", log_target=True).sum(-1)[m].mean()

        def plain_js(s, t, m):
            lq, lp = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
            p, q = lp.exp(), lq.exp()
            lm = torch.log(BETA * p + (1 - BETA) * q)
            return (BETA * (p * (lp - lm)).sum(-1) + (1 - BETA) * (q * (lq - lm)).sum(-1))[m].mean()
        return plain_js
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        from trl import GKDTrainer  # older TRL releases
    beta = 0.0 if fn == "forward_kl" else BETA

    def trl_loss(s, t, m):
        labels = torch.where(m, 0, -100)
        return GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta)
    return trl_loss


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(impl: str, fn: str, vocab: int, repeats: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    call = _implementation(impl, fn)
    g = torch.Generator().manual_seed(0)
    student = torch.randn(B, T, vocab, generator=g).mul_(2).requires_grad_()
    teacher = torch.randn(B, T, vocab, generator=g).mul_(2)
    mask = torch.ones(B, T, dtype=torch.bool)

    before = _rss_bytes()
    start = time.perf_counter()
    loss = call(student, teacher, mask)
    loss.backward()
    first_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    value = float(loss)
    del loss
    times = []
    for _ in range(repeats):
        student.grad = None
        start = time.perf_counter()
        call(student, teacher, mask).backward()
        times.append(time.perf_counter() - start)
    return {"fn": fn, "vocab": vocab, "tokens": B * T, "impl": impl,
            "ms_per_call": round(1e3 * statistics.median(times or [first_s]), 1),
            "peak_extra_mb": round(peak / 2 ** 20), "value": value, "repeats": max(1, repeats)}


# --- driver ----------------------------------------------------------------------------

def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def run_one(impl, fn, vocab, repeats, threads) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, fn, str(vocab), str(repeats), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        err = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"fn": fn, "vocab": vocab, "tokens": B * T, "impl": impl, "error": err}
    return json.loads(out.stdout.strip().splitlines()[-1])


def versions() -> dict:
    import torch
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine()}
    try:
        from importlib.metadata import version
        info["trl"] = version("trl")
    except Exception:
        info["trl"] = "not installed"
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def write(rows: list[dict], meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = ["fn", "vocab", "tokens", "impl", "ms_per_call", "peak_extra_mb", "value", "repeats",
            "error"]
    tmp = RESULTS / "divergences.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    tmp.replace(RESULTS / "divergences.csv")

    def get(fn, vocab, impl):
        return next((r for r in rows if (r["fn"], r["vocab"], r["impl"]) == (fn, vocab, impl)), {})

    def ratio(a, b, key):
        return f"{a[key] / b[key]:.2f}" if key in a and key in b and b[key] else "n/a"

    lines = [
        "# Divergences: time and peak memory per call (forward + backward)",
        "",
        f"Generated by `python benchmarks/divergences.py` on {meta['date']}; torch {meta['torch']}, "
        f"trl {meta['trl']}, Python {meta['python']}, {meta['threads']} CPU threads ({meta['cpu']}).",
        f"{B * T} tokens (B={B}, T={T}, all masked in), float32 logits, student requires grad, "
        f"teacher constant. JS uses β = {BETA}; TRL's forward KL is `generalized_jsd_loss(beta=0)`.",
        "Time: median over the repeats after the first call. Peak memory: growth of the maximum "
        "resident set over the resident set before the first call, in a fresh process; it includes "
        "the (B, T, V) student gradient, one float32 copy of the logits "
        f"({B * T * 4096 * 4 / 2**20:.0f} MB at V=4096, {B * T * 50257 * 4 / 2**20:.0f} MB at V=50257).",
        "",
        "| function | V | impl | ms / call | peak extra MB | value | time ours/impl | memory ours/impl |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = get(r["fn"], r["vocab"], "ours")
        if "error" in r:
            lines.append(f"| {r['fn']} | {r['vocab']} | {r['impl']} | error: {r['error']} | | | | |")
            continue
        t_ratio = "—" if r["impl"] == "ours" else ratio(ours, r, "ms_per_call")
        m_ratio = "—" if r["impl"] == "ours" else ratio(ours, r, "peak_extra_mb")
        lines.append(f"| {r['fn']} | {r['vocab']} | {r['impl']} | {r['ms_per_call']:.0f} | "
                     f"{r['peak_extra_mb']} | {r['value']:.6f} | {t_ratio} | {m_ratio} |")
    lines.append("")
    tmp = RESULTS / "divergences.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(RESULTS / "divergences.md")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="V=4096 only, 2 repeats")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=5, metavar=("IMPL", "FN", "V", "REPEATS", "THREADS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        impl, fn, vocab, repeats, threads = args.worker
        print(json.dumps(worker(impl, fn, int(vocab), int(repeats), int(threads))))
        return
    plan = [(4096, 2 if args.quick else 5)] + ([] if args.quick else [(50257, 2)])
    rows = []
    for vocab, repeats in plan:
        for fn in FUNCTIONS:
            for impl in IMPLS:
                need_mb = 13 * B * T * vocab * 4 / 2 ** 20  # inputs + a generous peak
                if _available_mb() < need_mb:
                    row = {"fn": fn, "vocab": vocab, "tokens": B * T, "impl": impl,
                           "error": f"skipped: less than {need_mb / 1024:.0f} GB memory available"}
                else:
                    row = run_one(impl, fn, vocab, repeats, args.threads)
                print(json.dumps(row), flush=True)
                rows.append(row)
    meta = versions() | {"threads": args.threads,
                         "date": datetime.date.today().isoformat()}
    write(rows, meta)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
