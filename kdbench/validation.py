"""The per-epoch validation pass behind model selection (docs/protocol.md, "model selection").

After every epoch the engine calls `validator(...)(model)`, which returns
    val_loss     mean cross-entropy (nats/token) of the validation references, teacher-forced:
                 the same number for every method, so convergence is comparable across losses;
    val_rouge_l  Rouge-L (x100) of answers sampled with the evaluation protocol (one fixed seed):
                 the papers keep the epoch where this is highest.
"""
from __future__ import annotations

import torch

from kdbench.data import PROTOCOL, PromptFormat, collate, encode
from kdbench.fused import token_nll
from kdbench.metrics import rouge_l


def validator(tokenizer, records: list[dict], *, max_length: int, evaluation: dict, seed: int,
              batch_size: int = 64, desc: str = "validate", fmt: PromptFormat = PROTOCOL):
    """A callable model -> {"val_loss", "val_rouge_l"} over `records` (the validation split),
    prompts in format `fmt`."""
    from kdbench.generate import sample

    examples = encode(tokenizer, records, max_length, fmt=fmt)
    refs = [r["output"] for r in records]
    pad = tokenizer.pad_token_id

    @torch.no_grad()
    def run(model) -> dict[str, float]:
        model.eval()
        dev = next(model.parameters()).device
        total, n = 0.0, 0
        for s in range(0, len(examples), batch_size):
            batch = {k: v.to(dev) for k, v in collate(examples[s:s + batch_size], pad).items()}
            mask = batch["mask"]  # the response positions
            total += float(token_nll(model, batch["input_ids"], mask, batch["targets"][mask], "sum"))
            n += int(mask.sum())
        answers, _ = sample(model, tokenizer, records, seed=seed, temperature=evaluation["temperature"],
                            top_p=evaluation["top_p"], top_k=evaluation["top_k"], max_length=max_length,
                            max_new_tokens=evaluation["max_new_tokens"], batch_size=evaluation["batch_size"],
                            precision=evaluation["precision"], desc=desc, fmt=fmt)
        return {"val_loss": total / max(1, n), "val_rouge_l": rouge_l(answers, refs)}

    return run
