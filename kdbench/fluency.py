"""The fluency score beside Rouge-L: the teacher's mean per-token negative log-likelihood of an
answer given its prompt (`teacher_nll`, nats per token).

Rouge-L and the answer's shape (kdbench/metrics.py) miss word salad that neither loops nor
runs long: shuffled common words score Rouge-L like a short sensible answer. A language model
sees the difference at once: the teacher gives its own kind of answer a low NLL and salad a
high one. Every run is judged by the teacher it distils from (student seed k: teacher seed
k mod teacher_seeds; SFT's runs by the same teacher as the other methods of their seed; a
teacher run by itself), so the methods of one seed share one judge. The numbers are nats per
token of that teacher and tokenizer: comparable between the rows of one pair, not across
pairs.

The answer is scored as the text it is (after the end token, stop strings and stripping),
re-tokenised, after its prompt in the profile's format (cut to `data.max_prompt_tokens` as
generation cuts it); its own tokens count, the end token does not (an answer that ran to the
cap is not charged for the end it lacks; `capped` reports that). An empty answer has no
tokens and scores NaN; means skip it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.data import PROTOCOL, PromptFormat, collate, encode, end_token
from kdbench.models import autocast, rows_logits

#: float32 logits formed per batch: at most this many (answer tokens x vocabulary) entries,
#: 2^27 = 512 MB (a batch of ~880 answer tokens over a 152k vocabulary, all of them over 1k)
LOGIT_BUDGET = 1 << 27
#: (examples x longest sequence) positions per batch: on the default profile's teacher (2-core
#: EPYC, one thread) 1,200 answers took 3.8 s in batches of 2,048 positions, 4.0 s in batches
#: of 100 examples and 15.9 s in one batch (attention over long padded batches)
POSITION_BUDGET = 2048


@torch.no_grad()
def answer_nll(judge, tokenizer, records: list[dict], answers: list[str], *, max_length: int,
               max_prompt_tokens: int | None = None, precision: str = "fp32",
               fmt: PromptFormat = PROTOCOL) -> np.ndarray:
    """Per answer (answers[i] to records[i]): `judge`'s mean NLL of the answer's tokens, (N,),
    NaN for an empty answer."""
    out = np.full(len(answers), np.nan)
    if not answers:
        return out
    examples = encode(tokenizer, records, max_length, responses=answers, fmt=fmt,
                      max_prompt_tokens=max_prompt_tokens)
    end, pad = end_token(tokenizer, fmt), tokenizer.pad_token_id
    dev = next(judge.parameters()).device
    was_training = judge.training
    judge.eval()
    rows = max(1, LOGIT_BUDGET // judge.config.vocab_size)
    order = sorted(examples, key=lambda e: len(e.ids))  # the longest of a batch is its last
    start = 0
    while start < len(order):
        stop, n = start + 1, order[start].n_response
        while (stop < len(order) and n + order[stop].n_response <= rows
               and (stop + 1 - start) * len(order[stop].ids) <= POSITION_BUDGET):
            n += order[stop].n_response
            stop += 1
        chunk = order[start:stop]
        start = stop
        batch = collate(chunk, pad)
        mask = batch["mask"]
        for b, e in enumerate(chunk):
            if e.ids[-1] == end:  # position n-2 predicts the end token: not the answer's
                mask[b, len(e.ids) - 2] = False
        ids, mask = batch["input_ids"].to(dev), mask.to(dev)
        with autocast(precision, dev):
            logits = rows_logits(judge, ids, mask)  # (N, V) at the answer tokens, row-major
        nll = F.cross_entropy(logits.float(), batch["targets"].to(dev)[mask], reduction="none")
        per_row = mask.sum(1).tolist()
        for e, n_tok, part in zip(chunk, per_row, nll.split(per_row)):
            if n_tok:
                out[e.index] = float(part.mean())
    judge.train(was_training)
    return out
