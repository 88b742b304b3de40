"""Does an instruction-tuned teacher end its answers in the Alpaca prompt, and in its own chat
template?

    python benchmarks/prompt_format.py --path models/smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf

Loads a pretrained model as released (a folder or hub id, or a GGUF file inside it), samples
its answers to `--n` prompts of the synthetic suite's `id` test set with the protocol's
sampling (temperature 1, `--max-new-tokens`), once with each `data.prompt_format`, and scores
them as the evaluation does: Rouge-L, the share of answers that ran to the cap without the
format's end token (`capped`), trigram repetition, the answers that went on to write a new
"###" section, and the model's own NLL per token of its answers (kdbench/fluency.py).
Results: benchmarks/results/prompt_format_<name>.md (overwritten).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kdbench import models  # noqa: E402
from kdbench.data import ALPACA, CHAT, PromptFormat, render_prompt  # noqa: E402
from kdbench.fluency import answer_nll  # noqa: E402
from kdbench.generate import sample  # noqa: E402
from kdbench.metrics import repetition, rouge_l, words  # noqa: E402
from kdbench.synthetic import generate_split  # noqa: E402
from fluency_cost import cpu_model  # noqa: E402  (benchmarks/, this script's folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", required=True, help="model folder or hub id")
    ap.add_argument("--gguf-file", default=None)
    ap.add_argument("--n", type=int, default=60, help="test prompts")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=10, help="sampling seed")
    ap.add_argument("--name", default=None, help="results file suffix (default: the model's name)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = {"gguf_file": args.gguf_file}
    model = models.load_model(args.path, spec).eval()
    tok = models.load_tokenizer(args.path, args.gguf_file)
    records = generate_split("id", args.n, seed=5)
    refs = [r["output"] for r in records]
    rows, shown = [], []
    for kind in (ALPACA, CHAT):
        fmt = PromptFormat(kind)
        t0 = time.perf_counter()
        answers, st = sample(model, tok, records, seed=args.seed, max_length=512, max_new_tokens=args.max_new_tokens,
                             batch_size=args.n, precision="fp32", fmt=fmt)
        nll = answer_nll(model, tok, records, answers, max_length=512, fmt=fmt)
        rows.append(f"| {kind} | {rouge_l(answers, refs):.2f} | {1 - np.mean(st['ended']):.2f} | "
                    f"{np.mean([repetition(words(a)) for a in answers]):.3f} | "
                    f"{sum('###' in a for a in answers)} | {np.nanmean(nll):.2f} | {time.perf_counter() - t0:.0f} |")
        shown.append(f"**{kind}**, the prompt of the first record:\n\n```\n{render_prompt(tok, records[0], fmt)}```\n\n"
                     "its first three answers:\n\n" + "\n".join(f"- `{a[:160]!r}`" for a in answers[:3]))
    name = args.name or Path(args.gguf_file or args.path).stem
    out = REPO / "benchmarks" / "results" / f"prompt_format_{name}.md"
    out.write_text(f"""# The prompt format of an instruction-tuned model: {name}

Measured {datetime.date.today()} with `python benchmarks/prompt_format.py {' '.join(sys.argv[1:])}`
on {platform.machine()} ({cpu_model()}), one thread. The model as released, {args.n} prompts of the
synthetic `id` test set, temperature 1, at most {args.max_new_tokens} new tokens, sampling seed {args.seed}.

| prompt format | Rouge-L | capped | repetition | answers with "###" | own NLL (nats/token) | seconds |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

capped: the share of answers that ran to the cap without the format's end token (EOS for
alpaca, the template's end of turn for chat). The teacher gate (kdbench/gate.py) stops a
profile whose teacher caps more than 25% of its test answers.

{chr(10).join(chr(10) + s for s in shown)}
""")
    print(out.read_text())


if __name__ == "__main__":
    main()
