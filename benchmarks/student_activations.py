"""What the GPT-2 base student's forward keeps for backward at the paper's shapes (1 x 512 tokens,
train mode, random weights, fp32 on the CPU): GPT-2's `gelu_new` (transformers' default for GPT-2,
a chain of elementwise ops) against `gelu_pytorch_tanh` (the same function in one op), with
GPT-2's dropout (0.1) and without. The memory is the resident set size at the end of the forward
beyond its start (benchmarks/paper_shapes.py's `Peak`); results in
benchmarks/results/student_activations.md (written by hand from the printout).

    MALLOC_MMAP_THRESHOLD_=65536 taskset -c 1 python benchmarks/student_activations.py
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_shapes import Peak  # noqa: E402


def run(act: str, dropout: bool) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    off = {} if dropout else {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    conf = AutoConfig.for_model("gpt2", n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                                activation_function=act, **off)
    conf._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(conf).train()
    ids = torch.randint(1, 50257, (1, 512))
    with Peak(torch.device("cpu")) as peak:
        t = time.process_time()
        h = model.transformer(input_ids=ids, use_cache=False).last_hidden_state
    saved = peak.peak
    h.sum().backward()
    t = time.process_time() - t
    print(f"{act:18s} dropout={dropout}: saved by forward {saved / 2**30:.3f} GiB, forward+backward {t:.1f} CPU-s",
          flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for act in ("gelu_new", "gelu_pytorch_tanh"):
        for dropout in (True, False):
            run(act, dropout)
