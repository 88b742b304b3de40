"""kdbench.metrics.rouge_l against a direct rouge_score computation."""
import pytest
from rouge_score import rouge_scorer

from kdbench.metrics import rouge_l, rouge_l_per_example


def test_matches_rouge_score_max_over_references():
    preds = ["the cat sat on the mat", "red blue green", "", "running dogs"]
    refs = [["a cat sat on a mat", "the cat sat"], ["green blue red"], ["something"], ["run dog", "cats"]]
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    direct = [100 * max(sc.score(r, p)["rougeL"].fmeasure for r in rs) for p, rs in zip(preds, refs)]
    # equal, also when every text has been tokenised before (the scorer's cache)
    assert rouge_l_per_example(preds, refs) == direct and rouge_l_per_example(preds, refs) == direct
    assert rouge_l(preds, refs) == pytest.approx(sum(direct) / len(direct))
    assert direct[3] == pytest.approx(100.0)  # the stemmer maps running->run, dogs->dog


def test_identical_is_100_and_disjoint_is_0():
    assert rouge_l(["apple pear"], [["apple pear"]]) == pytest.approx(100.0)
    assert rouge_l(["apple pear"], [["fox"]]) == 0.0


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        rouge_l(["a"], [])
