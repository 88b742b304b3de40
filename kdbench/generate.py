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
    """Answers (in record order) and {"gen_tokens", "gen_wall_s"}."""
    prompts = [encode_prompt(tokenizer, r) for r in records]
    order = np.argsort([len(p) for p in prompts], kind="stable")
    answers: list[str] = [""] * len(records)
    n_tokens, t0 = 0, time.perf_counter()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(seed)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", file=sys.stderr, mininterval=5.0):
        idx = order[s:s + batch_size]
        budget = max_length - max(len(prompts[i]) for i in idx)
        if max_new_tokens is not None:
            budget = min(budget, max_new_tokens)
        if budget <= 0:
            continue
        news = sample_ids(model, [prompts[i] for i in idx], eos_id=eos, pad_id=pad, max_new_tokens=budget,
                          temperature=temperature, top_p=top_p, top_k=top_k, precision=precision)
        for i, new in zip(idx, news):
            text = new[:-1] if new[-1:] == [eos] else new
            n_tokens += len(text) + 1
            answers[i] = tokenizer.decode(text, skip_special_tokens=True).strip()
    return answers, {"gen_tokens": n_tokens, "gen_wall_s": time.perf_counter() - t0}


@torch.no_grad()
def sample_ids(model, prompts: list[list[int]], *, eos_id: int, pad_id: int, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               precision: str = "auto") -> list[list[int]]:
    """One batch of prompts (token ids) -> each prompt's sampled continuation, at most
    `max_new_tokens` tokens, cut after its first EOS (the EOS is kept). Prompts are left padded
    so that every one ends at the last column. Uses the global torch RNG."""
    dev = next(model.parameters()).device
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)
        attn[b, T - len(p):] = 1
    with autocast(precision, dev):
        out = model.generate(input_ids=ids.to(dev), attention_mask=attn.to(dev), do_sample=True,
                             temperature=temperature, top_p=top_p, top_k=top_k,
                             max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id)
    news = []
    for b in range(len(prompts)):
        new = out[b, T:].tolist()
        news.append(new[:new.index(eos_id) + 1] if eos_id in new else new)
    return news
