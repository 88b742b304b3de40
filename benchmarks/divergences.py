"""Time and peak memory of one forward + backward of the divergences, against baselines.

Compares `kdbench.divergences` (chunked, float32) with
  plain  a textbook PyTorch implementation over the whole (B, T, V) tensor, and
  trl    TRL's `generalized_jsd_loss` (GKDTrainer; beta = 0 is its forward-KL branch),
for forward KL and Jensen-Shannon (β = 0.1) at V = 4096 and V = 50257 with B·T = 8192 tokens
(B = 8, T = 1024, every token masked in), float32 logits on the CPU; at V = 50257 also with
2048 tokens (B = 2), where every implementation fits in memory. One torch thread by default.

Each (function, V, implementation) runs in a fresh Python process: the first call gives the
peak memory, as the growth of the process' maximum resident set size (ru_maxrss) over its
resident size just before the call (inputs already built; the student gradient the call
creates is included), and the following calls give the time (median).

The second part measures the student's output layer with the loss (inputs: hidden states
(tokens, H = 576, SmolLM2-135M's width) and the output layer W (V, H); the gradients of both):
`ours+head` forms the logits h W^T and calls `kdbench.divergences`, `fused` passes a
`kdbench.fused.ProjectedLogits` (the engine's large-vocabulary path, docs/engine.md), at
V = 4096 and V = 50257 with 8192 tokens. Its peak is also given as a multiple of one float32
(tokens, V) copy.

    python benchmarks/divergences.py               # both parts: benchmarks/results/divergences.{md,csv}
    python benchmarks/divergences.py --part fused  # one part; the other's rows and text are kept
    python benchmarks/divergences.py --part fused --functions jensen_shannon --vocabs 50257
                                                   # some configurations; the other rows are kept
    python benchmarks/divergences.py --quick       # V = 4096 only, fewer repeats

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
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
B, T = 8, 1024
BETA = 0.1
FUNCTIONS = ["forward_kl", "jensen_shannon"]
IMPLS = ["ours", "plain", "trl"]
HIDDEN = 576  # the output layer's input width in the fused part (SmolLM2-135M)
HEAD_IMPLS = ["ours+head", "fused"]
SECTIONS = {"logits": "## Divergences of given logits",
            "fused": "## Output layer + divergence: the fused large-vocabulary path"}


# --- worker (one configuration per process) ---------------------------------------------

def _implementation(impl: str, fn: str):
    import torch
    import torch.nn.functional as F

    if impl == "ours":
        from kdbench import divergences as D
        if fn == "forward_kl":
            return lambda s, t, m: D.forward_kl(s, t, m)
        return lambda s, t, m: D.jensen_shannon(s, t, m, beta=BETA)
    if impl in HEAD_IMPLS:  # (hidden (N, H), W (V, H)) in place of the student logits
        from kdbench import divergences as D
        from kdbench.fused import ProjectedLogits
        loss = (lambda s, t, m: D.forward_kl(s, t, m)) if fn == "forward_kl" else (
            lambda s, t, m: D.jensen_shannon(s, t, m, beta=BETA))
        if impl == "fused":
            return lambda hw, t, m: loss(ProjectedLogits(*hw, None, torch.float32), t, m)
        return lambda hw, t, m: loss(F.linear(*hw), t, m)
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


def worker(impl: str, fn: str, vocab: int, batch: int, repeats: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    call = _implementation(impl, fn)
    g = torch.Generator().manual_seed(0)
    if impl in HEAD_IMPLS:  # logits h W^T of standard deviation 2, as the logits of the other part
        hidden = torch.randn(batch * T, HIDDEN, generator=g).requires_grad_()
        weight = torch.randn(vocab, HIDDEN, generator=g).mul_(2 / HIDDEN ** 0.5).requires_grad_()
        student, params = (hidden, weight), [hidden, weight]
        teacher = torch.randn(batch * T, vocab, generator=g).mul_(2)
        mask = torch.ones(batch * T, dtype=torch.bool)
    else:
        student = torch.randn(batch, T, vocab, generator=g).mul_(2).requires_grad_()
        params = [student]
        teacher = torch.randn(batch, T, vocab, generator=g).mul_(2)
        mask = torch.ones(batch, T, dtype=torch.bool)

    load = "{:.1f}".format(os.getloadavg()[0])
    before = _rss_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    loss = call(student, teacher, mask)
    loss.backward()
    times = [(time.perf_counter() - start, time.process_time() - cpu)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    value = float(loss.detach())
    del loss
    for _ in range(repeats):
        for p in params:
            p.grad = None
        start, cpu = time.perf_counter(), time.process_time()
        call(student, teacher, mask).backward()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    timed = times[1:] or times  # the first call pays one-off costs; used only if alone
    return {"fn": fn, "vocab": vocab, "tokens": batch * T, "impl": impl,
            "hidden": HIDDEN if impl in HEAD_IMPLS else "",
            "ms_per_call": round(1e3 * median([w for w, _ in timed]), 1),
            "cpu_ms_per_call": round(1e3 * median([c for _, c in timed]), 1),
            "peak_extra_mb": round(peak / 2 ** 20), "value": value, "repeats": len(timed),
            "load": load, "threads": threads}


# --- driver ----------------------------------------------------------------------------

def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def run_one(impl, fn, vocab, batch, repeats, threads, cap_gb) -> dict:
    """One configuration in a fresh process whose address space is capped at `cap_gb`, so a
    configuration that needs more fails with an allocation error instead of starving the
    machine."""
    cap = int(cap_gb * 2 ** 30)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    cmd = [sys.executable, __file__, "--worker", impl, fn, str(vocab), str(batch), str(repeats),
           str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit)
    if out.returncode != 0:
        err = (out.stderr.strip().splitlines() or ["no output"])[-1]
        if "alloc" in err.lower() or "memory" in err.lower() or out.returncode < 0:
            err = f"out of memory under a {cap_gb:.0f} GB address-space cap"
        return {"fn": fn, "vocab": vocab, "tokens": batch * T, "impl": impl,
                "hidden": HIDDEN if impl in HEAD_IMPLS else "", "error": err[:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def versions() -> dict:
    import torch
    from kdbench.models import device_name

    info = {"torch": torch.__version__, "python": platform.python_version(),
            "cpu": device_name(torch.device("cpu")).removeprefix("cpu: ")}
    try:
        from importlib.metadata import version
        info["trl"] = version("trl")
    except Exception:
        info["trl"] = "not installed"
    return info


def _part(row: dict) -> str:
    return "fused" if str(row.get("hidden", "")) not in ("", "0") else "logits"


CSV_KEYS = ["fn", "vocab", "tokens", "impl", "hidden", "ms_per_call", "cpu_ms_per_call", "peak_extra_mb",
            "value", "repeats", "load", "threads", "error"]


def _key(row: dict) -> tuple:
    return row["fn"], int(row["vocab"]), int(row["tokens"]), row["impl"]


def _from_csv(row: dict) -> dict:
    """A row read back from divergences.csv, with its numbers as numbers."""
    out = {k: v for k, v in row.items() if v != ""}
    for k, cast in (("vocab", int), ("tokens", int), ("peak_extra_mb", int), ("repeats", int),
                    ("ms_per_call", float), ("cpu_ms_per_call", float), ("value", float)):
        if k in out:
            out[k] = cast(out[k])
    return out


def write(rows: list[dict], meta: dict) -> None:
    """benchmarks/results/divergences.csv (one row per configuration) and .md (with ratios).

    The rows of configurations this run did not measure are kept from the existing CSV, and
    the markdown section of a part with no new row keeps its existing text."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    old_csv, old_md = RESULTS / "divergences.csv", RESULTS / "divergences.md"
    new_keys = {_key(r) for r in rows}
    kept = []
    if old_csv.is_file():
        with open(old_csv, newline="") as f:
            kept = [_from_csv(r) for r in csv.DictReader(f) if _key(r) not in new_keys]
    order = {name: i for i, name in enumerate(FUNCTIONS + IMPLS + HEAD_IMPLS)}
    every = sorted(kept + rows, key=lambda r: (_part(r), r["vocab"], -r["tokens"], order[r["fn"]], order[r["impl"]]))
    tmp = RESULTS / "divergences.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_KEYS)
        w.writeheader()
        for r in every:
            w.writerow({k: r.get(k, "") for k in CSV_KEYS})
    tmp.replace(old_csv)

    old = _old_sections(old_md.read_text()) if old_md.is_file() else {}
    ran = {_part(r) for r in rows}
    lines = ["# Divergences: time and peak memory per call (forward + backward)", ""]
    for name, heading in SECTIONS.items():
        if name in ran:
            body = (_logits_section if name == "logits" else _fused_section)([r for r in every if _part(r) == name], meta)
        else:
            body = old.get(name, ["(not measured yet)", ""])
        while body and not body[-1]:
            body = body[:-1]
        lines += [heading, "", *body, ""]
    tmp = RESULTS / "divergences.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(old_md)


def _old_sections(text: str) -> dict[str, list[str]]:
    """The body lines of each section of an existing divergences.md (a file written before the
    sections existed is all "logits")."""
    lines = text.splitlines()[1:]  # without the title
    heads = {h: n for n, h in SECTIONS.items()}
    out, name = {}, "logits"
    for line in lines:
        if line in heads:
            name = heads[line]
            continue
        out.setdefault(name, []).append(line)
    for body in out.values():
        while body and not body[0]:
            del body[0]
    return out


def _ratio(a, b, key):
    return f"{a[key] / b[key]:.2f}" if a.get(key) and b.get(key) else "n/a"


def _ratios(a, b) -> list[str]:
    """a / b of wall time, CPU time and peak memory: the ratio cells of both tables."""
    return [_ratio(a, b, k) for k in ("ms_per_call", "cpu_ms_per_call", "peak_extra_mb")]


def _copy_mb(vocab: int, tokens: int) -> float:
    """MB of one float32 (tokens, V) copy of the logits."""
    return tokens * vocab * 4 / 2 ** 20


def _generated(meta: dict) -> str:
    return (f"Generated by `python benchmarks/divergences.py --part {meta['part']}` on {meta['date']}: "
            f"torch {meta['torch']}, trl {meta['trl']}, Python {meta['python']}, {meta['threads']} torch "
            f"thread(s) ({meta['cpu']}), each configuration in a fresh process with its address space capped "
            f"at {meta['cap_gb']:.0f} GB (less if the machine had less free memory); 1-minute load average "
            f"{meta['load_start']} at the start, {meta['load_end']} at the end, on {os.cpu_count()} cores.")


def _logits_section(rows: list[dict], meta: dict) -> list[str]:
    def ours_of(r):
        return next((o for o in rows if o["impl"] == "ours" and
                     (o["fn"], o["vocab"], o["tokens"]) == (r["fn"], r["vocab"], r["tokens"])), {})

    lines = [
        _generated(meta),
        "",
        f"- Inputs: float32 logits (B, T={T}, V), every token masked in; the student requires a "
        f"gradient, the teacher is constant. JS uses β = {BETA}.",
        "- ours: `kdbench.divergences`; plain: a textbook PyTorch expression over the whole "
        "tensor (forward KL: `kl_div(log_softmax, log_softmax, log_target=True)`; JS: "
        "probabilities, m = β p + (1−β) q); trl: `GKDTrainer.generalized_jsd_loss` with labels "
        "(beta = 0 is its forward-KL branch).",
        "- Time: median over the calls after the first (wall and process CPU time). The machine "
        "is shared, so wall times are noisy. With 2 threads on a busy machine every parallel "
        "operation waits for the second thread to be scheduled, which penalises code made of many "
        "mid-sized operations (the chunked one) more than code made of a few huge ones; one thread "
        "measures the work itself (`--threads 2` to compare).",
        "- Peak: growth of the process' maximum resident set during the first call; it includes "
        "the (B, T, V) student gradient itself, i.e. one float32 copy of the logits "
        f"({_copy_mb(4096, 8192):.0f} MB at V=4096, {_copy_mb(50257, 8192):.0f} MB at V=50257 "
        f"with 8192 tokens, {_copy_mb(50257, 2048):.0f} MB with 2048).",
        "- Ratios are ours / implementation: below 1 means ours is faster or smaller.",
        "",
        "| function | V | tokens | impl | wall ms | CPU ms | peak extra MB | value | "
        "wall ours/impl | CPU ours/impl | peak ours/impl |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['fn']} | {r['vocab']} | {r['tokens']} | {r['impl']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | | | |")
            continue
        o = ours_of(r)
        cells = ["—"] * 3 if r["impl"] == "ours" else _ratios(o, r)
        lines.append(f"{head} {r['ms_per_call']:.0f} | {r['cpu_ms_per_call']:.0f} | "
                     f"{r['peak_extra_mb']} | {r['value']:.6f} | " + " | ".join(cells) + " |")
    return lines + [""]


def _fused_section(rows: list[dict], meta: dict) -> list[str]:
    def plain_of(r):
        return next((o for o in rows if o["impl"] == "ours+head" and
                     (o["fn"], o["vocab"], o["tokens"]) == (r["fn"], r["vocab"], r["tokens"])), {})

    lines = [
        _generated(meta),
        "",
        f"- Inputs: hidden states (tokens, H={HIDDEN}) and the output layer W (V, H), both requiring "
        "a gradient, with logits h W^T of standard deviation 2; float32 teacher logits (tokens, V), "
        f"every token masked in. JS uses β = {BETA}.",
        "- ours+head: the logits formed (`F.linear`), then `kdbench.divergences` (the engine's plain "
        "path); fused: `kdbench.fused.ProjectedLogits` into the same divergence (the engine's path "
        "for large vocabularies, `distill.fused`): the output layer and the loss chunk by chunk, the "
        "gradients for h and W made in the forward pass.",
        "- Time and peak as above (at V=50257 the time of the one call made); both include the output "
        "layer's matmuls (forward, and the two of the gradient), and the peak includes the gradients "
        "of h and W. `× copy` is the peak over one float32 (tokens, V) copy of the logits.",
        "- Ratios are fused / ours+head: below 1 means the fused path is faster or smaller. `load`: "
        "the 1-minute load average when the configuration started (rows may come from several runs "
        "with `--functions`/`--vocabs`); on a loaded machine compare CPU times, not wall times.",
        "",
        "| function | V | tokens | impl | load | wall ms | CPU ms | peak extra MB | × copy | value | "
        "wall fused/plain | CPU fused/plain | peak fused/plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['fn']} | {r['vocab']} | {r['tokens']} | {r['impl']} | {r.get('load', '')} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | | | | |")
            continue
        cells = ["—"] * 3 if r["impl"] == "ours+head" else _ratios(r, plain_of(r))
        lines.append(f"{head} {r['ms_per_call']:.0f} | {r['cpu_ms_per_call']:.0f} | {r['peak_extra_mb']} | "
                     f"{r['peak_extra_mb'] / _copy_mb(r['vocab'], r['tokens']):.2f} | {r['value']:.6f} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="V=4096 only, 2 repeats")
    ap.add_argument("--part", choices=["all", *SECTIONS], default="all",
                    help="logits: the divergences of given logits; fused: output layer + divergence, "
                         "plain and fused; all: both (default)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads per configuration (default 1: on a shared "
                         "machine a second thread mostly measures the scheduler)")
    ap.add_argument("--max-gb", type=float, default=16.0,
                    help="address-space cap of each configuration's process (default 16)")
    ap.add_argument("--functions", nargs="+", choices=FUNCTIONS, default=FUNCTIONS,
                    help="measure these functions only (the other rows are kept)")
    ap.add_argument("--vocabs", nargs="+", type=int, help="measure these vocabulary sizes only")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        impl, fn, vocab, batch, repeats, threads = args.worker
        print(json.dumps(worker(impl, fn, int(vocab), int(batch), int(repeats), int(threads))))
        return
    # (function, V, batch, repeats after the first call, implementation): 8192 tokens as asked;
    # at V=50257 also 2048 tokens, so every implementation has a row that fits in memory. The
    # fused part starts with its V=50257 rows, the ones it is about.
    plan = []
    if args.part in ("all", "logits"):
        sizes = [(4096, B, 1 if args.quick else 3)] + ([] if args.quick else [(50257, B, 1), (50257, 2, 1)])
        plan += [(fn, v, b, r, impl) for v, b, r in sizes for fn in FUNCTIONS for impl in IMPLS]
    if args.part in ("all", "fused"):
        # forward KL at V=50257 first (the figure the path is about), then V=4096, then JS at 50257;
        # one call per configuration at V=50257 (each takes seconds of matmuls)
        fused = ([] if args.quick else [("forward_kl", 50257, 0)])
        fused += [(fn, 4096, 1 if args.quick else 3) for fn in FUNCTIONS]
        fused += [] if args.quick else [("jensen_shannon", 50257, 0)]
        plan += [(fn, v, B, r, impl) for fn, v, r in fused for impl in HEAD_IMPLS[::-1]]
    plan = [c for c in plan if c[0] in args.functions and (args.vocabs is None or c[1] in args.vocabs)]
    meta = versions() | {"threads": args.threads, "cap_gb": args.max_gb, "part": args.part,
                         "load_start": "{:.1f}".format(os.getloadavg()[0]),
                         "date": datetime.date.today().isoformat()}
    rows = []
    for fn, vocab, batch, repeats, impl in plan:
        cap = min(args.max_gb, _available_mb() / 1024 - 3)  # leave the others room
        row = run_one(impl, fn, vocab, batch, repeats, args.threads, cap)
        print(json.dumps(row), flush=True)
        rows.append(row)
        # the files after every configuration, so that an interrupted run keeps what it measured
        write(rows, meta | {"load_end": "{:.1f}".format(os.getloadavg()[0])})


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
