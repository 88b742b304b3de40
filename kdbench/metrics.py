"""Rouge-L as the instruction-KD protocol computes it (docs/protocol.md): rouge_score's
RougeScorer(["rougeL"], use_stemmer=True), F-measure, maximum over an example's references,
mean over examples, x100; and the shape of each answer (`answer_shape`), which exposes the
degenerate answers Rouge-L can reward.

Why these shape scores: Rouge-L's F-measure can favour a student that writes long word salad
over one that writes short, sensible answers, because recall grows with length. Three
numbers per answer, none needing a model, make that visible: its length in words against
the reference's, whether it ran into the generation cap without EOS (a student that never
learned to stop), and the share of its word trigrams that repeat an earlier one (loops).
Words are Rouge-L's own tokens (lower-cased alphanumeric runs), so lengths compare across
tokenizers and pairs. Word salad that neither loops nor runs long is caught by the fluency
score, the teacher's per-token NLL of the answer (kdbench/fluency.py: it needs the teacher,
and compares within a pair only), and a Rouge-L won without language by the trivial
baselines of the main table (kdbench/baselines.py).
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer, tokenizers

    class Memo(tokenizers.Tokenizer):
        """rouge_score's own tokenizer (lower case, alphanumeric runs, Porter stemmer), each
        text tokenised once per process: references are scored at every validation epoch, and
        stemming is most of Rouge-L's time (about 60 ms per 200 answers, against 8 ms cached)."""

        def __init__(self):
            self.inner = tokenizers.DefaultTokenizer(use_stemmer=True)

        @functools.lru_cache(maxsize=1 << 17)
        def tokenize(self, text):
            return self.inner.tokenize(text)

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=Memo())


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


def words(text: str) -> list[str]:
    """Rouge-L's tokens of `text`: lower-cased runs of letters and digits (no stemming)."""
    from rouge_score import tokenize

    return tokenize.tokenize(text, None)


def repetition(tokens: list[str], n: int = 3) -> float:
    """Share of the n-grams of `tokens` that repeat an earlier one: 1 - distinct/total, in
    [0, 1); 0 when there are fewer than n tokens."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def answer_shape(answers: list[str], references: list[list[str]], ended: list) -> "pd.DataFrame":
    """Per answer: answer_words, reference_words (mean over the example's references), capped
    (1.0 if the answer hit the length cap without EOS, 0.0 if it ended at EOS, NaN if not
    recorded: `ended` holds True, False or None/NaN) and repetition (trigrams)."""
    import pandas as pd

    rows = []
    for text, refs, end in zip(answers, references, ended, strict=True):
        refs = [refs] if isinstance(refs, str) else refs
        toks = words(text)
        rows.append({"answer_words": len(toks),
                     "reference_words": sum(len(words(r)) for r in refs) / len(refs),
                     "capped": float(not end) if end in (True, False) else float("nan"),
                     "repetition": repetition(toks)})
    return pd.DataFrame(rows, columns=["answer_words", "reference_words", "capped", "repetition"])

