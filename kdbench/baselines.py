"""Trivial baselines: answers that need no model, scored exactly like the methods' answers
(`kdbench.metrics.rouge_l_per_example`, best over an example's references), so a table shows
when Rouge-L is being won without language.

    input copied        the record's input, as it is (empty for a prompt without one)
    instruction copied  the instruction, as it is
    frequent words      one fixed answer for every prompt: the most frequent words of the training
                        references (Rouge-L's tokens, most frequent first), as many as the mean
                        training reference has words

Each is one deterministic answer per test example, so it has no seeds: the main table shows
its mean, no ± and no test (`kdbench.tables.with_baselines`).
"""
from __future__ import annotations

import itertools
from collections import Counter

import pandas as pd

from kdbench.metrics import answer_shape, rouge_l_per_example, words

#: baseline name (baselines.csv) -> row label of the tables
LABELS = {"copy_input": "trivial: input copied", "copy_instruction": "trivial: instruction copied",
          "frequent_words": "trivial: frequent words"}


def frequent_words(train: list[dict]) -> str:
    """The most frequent words of the training references (each record's first), most frequent
    first (ties in order of first appearance), as many as the mean reference has words
    (rounded, at least one; the list repeats when the references know fewer words)."""
    refs = [words(r["output"][0]) for r in train]
    length = max(1, round(sum(map(len, refs)) / max(1, len(refs))))
    ranked = [w for w, _ in Counter(itertools.chain.from_iterable(refs)).most_common()]
    return " ".join(itertools.islice(itertools.cycle(ranked), length)) if ranked else ""


def answers(name: str, records: list[dict], bag: str) -> list[str]:
    """Baseline `name`'s answer to every record (`bag`: the frequent-words answer)."""
    if name == "copy_input":
        return [r.get("input") or "" for r in records]
    if name == "copy_instruction":
        return [r["instruction"] for r in records]
    return [bag] * len(records)


def score(train: list[dict], test_sets: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per baseline and test set: baseline, benchmark, rouge_l (mean over examples,
    x100), n_examples, answer_words, length_ratio (as in runs.csv)."""
    bag = frequent_words(train)
    rows = []
    for bench, records in test_sets.items():
        refs = [r["output"] for r in records]
        for name in LABELS:
            texts = answers(name, records, bag)
            shape = answer_shape(texts, refs, [True] * len(texts))
            rows.append({"baseline": name, "benchmark": bench,
                         "rouge_l": sum(rouge_l_per_example(texts, refs)) / len(texts),
                         "n_examples": len(texts), "answer_words": float(shape["answer_words"].mean()),
                         "length_ratio": float(shape["answer_words"].mean() / max(shape["reference_words"].mean(), 1e-9))})
    return pd.DataFrame(rows)
