"""Scores that expose degenerate answers (kdbench.metrics.answer_shape): the sampler's
per-answer EOS flag, a planted babbling model flagged by the evaluate stage, and the columns in
the runtime table."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdbench import config as C
from kdbench import io, models, stages
from kdbench import tables as T
from kdbench.metrics import answer_shape, repetition
from kdbench.paths import Paths

ROOT = Path(__file__).resolve().parents[1]


def test_answer_shape_closed_form():
    df = answer_shape(["The cat, the cat; the cat!", "", "one two"],
                      [["a b", "a b c d"], "x y z", ["p q r s t u"]], [False, True, None])
    assert df["answer_words"].tolist() == [6, 0, 2]
    assert df["reference_words"].tolist() == [3.0, 3.0, 6.0]  # mean over an example's references
    assert df["capped"].tolist()[:2] == [1.0, 0.0] and math.isnan(df["capped"][2])
    # "the cat the cat the cat": trigrams (the cat the), (cat the cat) twice each: 1 - 2/4
    assert df["repetition"].tolist() == [0.5, 0.0, 0.0]
    assert repetition(list("abcabc")) == pytest.approx(1 - 3 / 4) and repetition(["a", "a"]) == 0.0


def _plant(model, eos: int, ends: bool):
    """Make `model` always (ends) or never (not ends) choose EOS, whatever the sampler: a hook
    on the output layer, which every path to the logits goes through."""
    def planted(module, inputs, logits):
        logits[..., eos] = 1e4 if ends else -1e4
        return logits

    model.get_output_embeddings().register_forward_hook(planted)
    return model


@pytest.mark.parametrize("ends", [True, False])
def test_sampler_reports_per_answer_whether_it_ended_at_eos(records, tokenizer, make_model, ends):
    from kdbench.generate import sample

    model = _plant(make_model(), tokenizer.eos_token_id, ends)
    answers, stats = sample(model, tokenizer, records[:5], seed=1, max_new_tokens=6, batch_size=2)
    assert stats["ended"] == [ends] * 5
    if ends:
        assert answers == [""] * 5


def test_score_flags_a_babbling_model(records, tokenizer, make_model, tmp_path, monkeypatch):
    """evaluate on a run whose model never ends (babbles to the cap) and on one that
    always ends at once: capped is 1 and 0, per answer (scores.csv) and per run (metrics.json)."""
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw.update(results_dir=str(tmp_path), methods_dir=str(ROOT / "methods"))
    raw["data"]["benchmarks"] = {"id": "id"}
    raw["evaluation"].update(seeds=[10], max_new_tokens=12)
    cfg = C.validate(raw)
    P = Paths(cfg)
    io.write_jsonl(P.data("id"), records[:6])
    for variant in ("babbler", "stopper"):
        run = Path(P.run_dir("tiny", "kd", variant, 0))
        models.save(make_model(), tokenizer, run / "model")
        io.write_json(run / "train.json", {})
    models.save(make_model(seed=1), tokenizer, P.teacher_model("tiny", 0))  # judges the fluency
    load = models.load_model
    monkeypatch.setattr(models, "load_model", lambda path, spec=None: _plant(
        load(path, spec), tokenizer.eos_token_id, ends="stopper" in str(path)))
    shape = {}
    for variant in ("babbler", "stopper"):
        stages.evaluate(cfg, "tiny", "kd", variant, 0)
        run = Path(P.run_dir("tiny", "kd", variant, 0))
        shape[variant] = io.read_json(run / "metrics.json")["benchmarks"]["id"]
        per_answer = pd.read_csv(run / "scores.csv")
        assert {"answer_words", "reference_words", "capped", "repetition", "teacher_nll"} <= set(per_answer.columns)
        assert per_answer["capped"].tolist() == [1.0 if variant == "babbler" else 0.0] * 6
        # the stopper's answers are empty: no tokens to judge
        assert per_answer["teacher_nll"].notna().all() if variant == "babbler" else per_answer["teacher_nll"].isna().all()
    assert shape["babbler"]["capped"] == 1.0 and shape["babbler"]["answer_words"] > 0
    assert shape["stopper"]["capped"] == 0.0 and shape["stopper"]["length_ratio"] == 0.0
    assert shape["babbler"]["length_ratio"] > shape["stopper"]["length_ratio"]


def test_runtime_table_shows_the_answer_shape():
    sys.path.insert(0, str(Path(__file__).parent))
    from test_plots import fake_tables

    t = fake_tables(["teacher", "kd", "srkl"], n_seeds=2, benchmarks=("synth",), n_examples=3,
                    n_epochs=1, steps_per_epoch=1, train_size=10, ablation_variants=False)
    df = T.runtime_table(t["runs"])
    assert df.loc["srkl", "capped_mean"] == pytest.approx(0.9) and df.loc["kd", "capped_mean"] == pytest.approx(0.05)
    assert df.loc["srkl", "length_ratio_mean"] == pytest.approx(4.0)
    shown = T.format_table(df)
    assert {"answer/ref", "capped", "repeat"} <= set(shown.columns)
    assert shown.set_index("method").loc["srkl", "capped"] == "0.90 ± 0.00"
    old = T.runtime_table(t["runs"].drop(columns=["length_ratio", "capped", "repetition"]))
    assert "capped_mean" not in old.columns  # runs scored before the columns existed
