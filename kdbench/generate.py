"""Batched sampling with a KV cache, following the instruction-KD protocol: temperature 1,
top_p 1, top_k 0 (pure sampling), prompt plus answer at most max_length tokens, answers cut
at the prompt format's end token (EOS, or a chat template's end of turn:
`kdbench.data.end_token`), then at the first of the format's stop strings, and stripped; a
prompt longer than `max_prompt_tokens` is cut to its first `max_prompt_tokens` tokens and
kept (the protocol keeps long test prompts). One seed per pass over a test set; results depend
only on the seed, the model and the batch composition (prompts are batched in a fixed,
length-sorted order).

The number of new tokens of an answer never depends on the batch it is in: at most
`max_new_tokens` (when null: max_length minus the longest prompt of `records`), and never
past max_length for its own prompt.

The loop is our own rather than `transformers`' `generate`: one forward per new token on a
static KV cache (kdbench/decode.py), the output layer applied to the last position only, and the same
sampling rules as `generate` (temperature, then top-k, then top-p, then a draw from the
filtered distribution with the global torch generator; inverse-CDF rather than
`torch.multinomial`, so the same distribution but not the same tokens for a seed). It skips
`generate`'s per-step machinery (logits processors, stopping criteria, input preparation),
which is most of the time for small models.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from kdbench.data import PROTOCOL, PromptFormat, encode_prompts, end_token
from kdbench.decode import decoder
from kdbench.models import autocast


@torch.no_grad()
def sample(model, tokenizer, records: list[dict], *, seed: int, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, max_length: int = 512, max_new_tokens: int | None = None,
           max_prompt_tokens: int | None = None, batch_size: int = 64, precision: str = "auto",
           desc: str = "generate", fmt: PromptFormat = PROTOCOL) -> tuple[list[str], dict]:
    """Answers (in record order, prompts in format `fmt`) and {"gen_tokens", "gen_wall_s",
    "ended", "stop"}; ended[i] is True when answer i stopped at the end token or a stop
    string, False when it ran into the length cap (max_new_tokens or max_length) without
    either; stop[i] is the stop string that cut it (None: none did)."""
    dev = next(model.parameters()).device
    prompts = [p[:max_prompt_tokens] for p in encode_prompts(tokenizer, records, fmt)]
    order = np.argsort([len(p) for p in prompts], kind="stable")
    answers: list[str] = [""] * len(records)
    ended = [False] * len(records)
    stops: list[str | None] = [None] * len(records)
    n_tokens, t0 = 0, time.perf_counter()
    eos, pad = end_token(tokenizer, fmt), tokenizer.pad_token_id
    cap = new_token_cap(prompts, max_length, max_new_tokens)
    torch.manual_seed(seed)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", file=sys.stderr, mininterval=5.0):
        idx = order[s:s + batch_size]
        limits = [min(cap, max_length - len(prompts[i])) for i in idx]
        if max(limits) <= 0:
            continue
        with autocast(precision, dev):
            new = sample_batch(model, [prompts[i] for i in idx], limits, eos=eos, pad=pad,
                               temperature=temperature, top_p=top_p, top_k=top_k)
        for b, i in enumerate(idx):
            n_tokens += len(new[b]) + 1
            text, stops[i] = fmt.cut(tokenizer.decode(new[b], skip_special_tokens=True))
            answers[i] = text.strip()
            # shorter than its cap: it stopped at the end token; or a stop string ended it
            ended[i] = len(new[b]) < limits[b] or stops[i] is not None
    return answers, {"gen_tokens": n_tokens, "gen_wall_s": time.perf_counter() - t0, "ended": ended,
                     "stop": stops}


def new_token_cap(prompts: list[list[int]], max_length: int, max_new_tokens: int | None) -> int:
    """New tokens allowed per answer: max_new_tokens, or (null) what max_length leaves after
    the longest prompt. Either way the same for every batch."""
    if max_new_tokens is not None:
        return int(max_new_tokens)
    return max_length - max((len(p) for p in prompts), default=0)


def sample_batch(model, prompts: list[list[int]], limits: list[int], *, eos: int, pad: int,
                 temperature: float, top_p: float, top_k: int) -> list[list[int]]:
    """New tokens of each prompt, cut before EOS; row b gets at most limits[b] tokens
    (EOS included). Prompts are left-padded so that each ends at the last column."""
    dev = next(model.parameters()).device
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, T), pad, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)
        attn[b, T - len(p):] = 1
    steps = max(limits)
    # the keys of every step are a prefix of one preallocated (B, T + steps) validity mask
    valid = torch.cat([attn.bool(), torch.ones((B, steps), dtype=torch.bool)], dim=1).to(dev)
    ids, limit = ids.to(dev), torch.tensor(limits, device=dev)
    out = torch.full((B, steps), pad, dtype=torch.long, device=dev)
    done = limit <= 0
    # positions count real tokens only, as in `generate` (padding gets position 1)
    prompt_attn = attn.to(dev)
    pos = (prompt_attn.cumsum(-1) - 1).masked_fill_(prompt_attn == 0, 1)
    dec = decoder(model, valid)
    logits = dec(ids, pos)
    last_pos = pos[:, -1:]
    active = torch.arange(B, device=dev)  # the rows of `out` still sampling, in the decoder's order
    for step in range(steps):
        token = _draw(logits.float(), temperature, top_p, top_k)
        token = token.masked_fill_(done, pad)
        out[active, step] = token
        done = done | (token == eos) | (limit <= step + 1)
        n_done = int(done.sum())
        if n_done == len(done):
            break
        if 4 * n_done >= len(done):  # a quarter of the rows have finished: stop computing them
            rows = (~done).nonzero().squeeze(1)
            dec.keep(rows)
            active, token, last_pos, limit, done = active[rows], token[rows], last_pos[rows], limit[rows], done[rows]
        last_pos = last_pos + 1
        logits = dec(token[:, None], last_pos)
    rows = out.tolist()
    return [r[:r.index(eos)] if eos in r else r[:lim] for r, lim in zip(rows, limits)]


def _draw(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """One token per row from (B, V) logits: temperature, top-k, top-p (nucleus), then a
    multinomial draw; the same filters in the same order as `transformers`' sampling."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - top_p
        drop[:, -1] = False  # keep at least the most likely token
        logits = logits.masked_fill(drop.scatter(1, sorted_idx, drop), -float("inf"))
    # inverse-CDF draw: the same distribution as torch.multinomial, 25x faster on the CPU
    # at (100, 1024); the uniform is scaled by the row total so rounding cannot overshoot
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand((cdf.shape[0], 1), device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)


@torch.no_grad()
def sample_ids(model, prompts: list[list[int]], *, eos_id: int, pad_id: int, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               precision: str = "auto") -> list[list[int]]:
    """One batch of prompts (token ids) -> each prompt's sampled continuation, at most
    `max_new_tokens` tokens, ending with its EOS where one was drawn (on-policy training learns
    to stop). The same loop as `sample`; uses the global torch RNG."""
    dev = next(model.parameters()).device
    limits = [max_new_tokens] * len(prompts)
    with autocast(precision, dev):
        news = sample_batch(model, prompts, limits, eos=eos_id, pad=pad_id,
                            temperature=temperature, top_p=top_p, top_k=top_k)
    return [new + [eos_id] if len(new) < limit else new for new, limit in zip(news, limits)]
