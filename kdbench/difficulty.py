"""The per-example difficulty profile, computed once per pair from the initial student.

Scorers (config `difficulty.scorer`):
  pocl                — POCL's recipe: two rankings of the training set, the student's per-token
                        NLL on the reference (lower is easier) and the Rouge-L of its own
                        near-greedy answer (higher is easier; sampled at `difficulty.temperature`,
                        POCL's 0.01), fused by reciprocal rank:
                        score = 1/(rank_rouge + k) + 1/(rank_nll + k), k = 60; higher is easier.
  student_nll         — the NLL alone.
  teacher_student_kl  — per-token KL(p_teacher || q_student) on the reference.
The NLL is the mean over the reference's tokens without its EOS, as POCL scores it
(`difficulty.nll_eos: true` counts the EOS too); docs/protocol.md lists both settings.
`difficulty` (higher is harder) is the fused score mapped to [0, 1] (max - score) / (max - min),
or the raw NLL / KL: the uniform-difficulty curriculum only needs an order and an affine scale.

The student's answers for the Rouge-L ranking are at most `difficulty.max_new_tokens` new
tokens; by default as long as the longest training reference (its tokens plus EOS), and
never longer than the evaluation's cap: an answer is compared with its reference, so tokens
past the longest reference can only repeat the ranking the earlier ones already give, and
an untrained student that never stops would otherwise cost the full evaluation length on
every prompt.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import sys

from tqdm import tqdm

from kdbench.data import PromptFormat, collate, encode, end_token
from kdbench.fused import token_nll, use_fused
from kdbench.metrics import rouge_l_per_example
from kdbench.models import autocast


def rrf(rank_a: np.ndarray, rank_b: np.ndarray, k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion of two 1-based rankings (1 = easiest); higher = easier."""
    return 1.0 / (rank_a + k) + 1.0 / (rank_b + k)


@torch.no_grad()
def per_example_nll(model, examples, pad_id: int, batch_size: int, precision: str, teacher=None,
                    eos_id: int | None = None, desc: str = "difficulty: NLL") -> np.ndarray:
    """Mean token NLL of the reference response (or mean token KL(teacher || model) if a teacher
    is given), per example, (N,). With `eos_id`, a final EOS is left out of the mean (a response
    that is only EOS then scores 0)."""
    dev = next(model.parameters()).device
    out = np.zeros(len(examples))
    order = np.argsort([len(e.ids) for e in examples], kind="stable")
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", file=sys.stderr, mininterval=5.0):
        chunk = [examples[i] for i in order[s:s + batch_size]]
        batch = collate(chunk, pad_id)
        if eos_id is not None:
            for b, e in enumerate(chunk):
                if e.ids[-1] == eos_id:  # position n-2 predicts the EOS
                    batch["mask"][b, len(e.ids) - 2] = False
        batch = {k: v.to(dev) for k, v in batch.items()}
        m = batch["mask"]
        if teacher is None and use_fused("auto", model, model.config.vocab_size):
            # large vocabulary: the NLL of the masked rows, chunk by chunk (kdbench.fused.token_nll),
            # instead of the (B, T, V) log-probabilities (6.6 GB at GPT-2's V for 64 Dolly examples)
            with autocast(precision, dev):
                rows = token_nll(model, batch["input_ids"], m, batch["targets"][m])
            sums = torch.zeros(len(chunk), device=dev).index_add_(0, m.nonzero()[:, 0], rows)
        else:
            with autocast(precision, dev):
                logits = model(input_ids=batch["input_ids"]).logits
            logq = torch.log_softmax(logits.float(), -1)
            if teacher is None:
                tok = -logq.gather(-1, batch["targets"].unsqueeze(-1)).squeeze(-1)
            else:
                with autocast(precision, dev):
                    t_logits = teacher(input_ids=batch["input_ids"]).logits
                logp = torch.log_softmax(t_logits.float()[..., :logq.shape[-1]], -1)
                tok = (logp.exp() * (logp - logq)).sum(-1)
            sums = (tok * m.float()).sum(1)
        per = (sums / m.float().sum(1).clamp(min=1)).cpu().numpy()
        for j, e in enumerate(chunk):
            out[e.index] = per[j]
    return out


def _rank(values: np.ndarray, ascending: bool) -> np.ndarray:
    """1-based average ranks (ties share the mean rank)."""
    return pd.Series(values).rank(method="average", ascending=ascending).to_numpy()


def answer_budget(examples, cfg: dict) -> int:
    """New tokens the student may write per scoring answer (see the module docstring)."""
    cap = cfg["evaluation"]["max_new_tokens"]
    longest = max((e.n_response for e in examples), default=1)
    return cfg["difficulty"]["max_new_tokens"] or min(longest, cap if cap is not None else longest)


def score(student, tokenizer, records: list[dict], cfg: dict, teacher=None, seed: int = 0) -> pd.DataFrame:
    from kdbench.generate import sample

    d = cfg["difficulty"]
    precision = cfg["evaluation"]["precision"]
    fmt = PromptFormat.of(cfg)
    examples = encode(tokenizer, records, cfg["data"]["max_length"], fmt=fmt)
    nll = per_example_nll(student, examples, tokenizer.pad_token_id, d["batch_size"], precision,
                          eos_id=None if d["nll_eos"] else end_token(tokenizer, fmt))
    table = pd.DataFrame({"example_index": np.arange(len(records)), "example_id": [r["id"] for r in records],
                          "task": [r.get("task") for r in records], "level": [r.get("difficulty") for r in records],
                          "nll": nll})
    if d["scorer"] == "pocl":
        budget = answer_budget(examples, cfg)
        answers, _ = sample(student, tokenizer, records, seed=seed, temperature=d["temperature"],
                            max_length=cfg["data"]["max_length"], max_new_tokens=budget,
                            batch_size=d["batch_size"], precision=precision, fmt=fmt,
                            desc=f"difficulty: student answers (<= {budget} new tokens)")
        table["rouge_l"] = rouge_l_per_example(answers, [r["output"] for r in records])
        table["rank_nll"] = _rank(nll, ascending=True)
        table["rank_rouge"] = _rank(table["rouge_l"].to_numpy(), ascending=False)
        s = rrf(table["rank_rouge"].to_numpy(), table["rank_nll"].to_numpy(), d["rrf_k"])
        table["score"] = s
        span = s.max() - s.min()
        table["difficulty"] = (s.max() - s) / span if span > 0 else 0.0
    elif d["scorer"] == "student_nll":
        table["difficulty"] = nll
    else:
        table["kl"] = per_example_nll(student, examples, tokenizer.pad_token_id, d["batch_size"], precision, teacher,
                                      desc="difficulty: KL")
        table["difficulty"] = table["kl"]
    return table
