"""Rouge-L as the instruction-KD protocol computes it (docs/protocol.md): rouge_score's
RougeScorer(["rougeL"], use_stemmer=True), F-measure, maximum over an example's references,
mean over examples, x100."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_per_example(predictions: list[str], references: list[list[str]]) -> list[float]:
    """Per example: max over references of the Rouge-L F-measure, x100."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    sc = _scorer()
    out = []
    for pred, refs in zip(predictions, references):
        if isinstance(refs, str):
            refs = [refs]
        if not refs:
            raise ValueError("an example has no reference")
        out.append(100.0 * max(sc.score(ref, pred)["rougeL"].fmeasure for ref in refs))
    return out


def rouge_l(predictions: list[str], references: list[list[str]]) -> float:
    """Mean over examples of the best-reference Rouge-L F-measure, x100."""
    scores = rouge_l_per_example(predictions, references)
    return sum(scores) / len(scores) if scores else 0.0
