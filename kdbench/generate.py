"""Batched sampling with a KV cache, following the instruction-KD protocol: temperature 1,
top_p 1, top_k 0 (pure sampling), prompt plus answer at most max_length tokens, answers cut
at EOS and stripped. One seed per pass over a benchmark; results depend only on the seed,
the model and the batch composition (prompts are batched in a fixed, length-sorted order)."""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from kdbench.data import encode_prompt
from kdbench.models import autocast


@torch.no_grad()
def sample(model, tokenizer, records: list[dict], *, seed: int, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, max_length: int = 512, max_new_tokens: int | None = None,
           batch_size: int = 64, precision: str = "auto", desc: str = "generate") -> tuple[list[str], dict]:
    """Answers (in record order) and {"gen_tokens", "gen_wall_s", "ended"}; ended[i] is True
    when answer i stopped at EOS, False when it ran into the length cap (max_new_tokens or
    max_length) without one."""
    dev = next(model.parameters()).device
    prompts = [encode_prompt(tokenizer, r) for r in records]
    order = np.argsort([len(p) for p in prompts], kind="stable")
    answers: list[str] = [""] * len(records)
    ended = [False] * len(records)
    n_tokens, t0 = 0, time.perf_counter()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(seed)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", file=sys.stderr, mininterval=5.0):
        idx = order[s:s + batch_size]
        T = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for b, i in enumerate(idx):  # left padding: every prompt ends at the last column
            ids[b, T - len(prompts[i]):] = torch.tensor(prompts[i])
            attn[b, T - len(prompts[i]):] = 1
        budget = max_length - T
        if max_new_tokens is not None:
            budget = min(budget, max_new_tokens)
        if budget <= 0:
            continue
        with autocast(precision, dev):
            out = model.generate(input_ids=ids.to(dev), attention_mask=attn.to(dev), do_sample=True,
                                 temperature=temperature, top_p=top_p, top_k=top_k,
                                 max_new_tokens=budget, eos_token_id=eos, pad_token_id=pad)
        for b, i in enumerate(idx):
            new = out[b, T:].tolist()
            if eos in new:
                new = new[:new.index(eos)]
                ended[i] = True
            n_tokens += len(new) + 1
            answers[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    return answers, {"gen_tokens": n_tokens, "gen_wall_s": time.perf_counter() - t0, "ended": ended}
