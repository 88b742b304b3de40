"""`difficulty.max_new_tokens`: the pocl scorer's answers are as long as the longest training
reference by default (never longer than the evaluation cap), or the key's value."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdbench import config as C
from kdbench import difficulty
from kdbench.data import encode


ROOT = Path(__file__).resolve().parents[1]


def _cfg(difficulty_cap=None, eval_cap=None):
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["methods_dir"] = str(ROOT / "methods")
    raw["difficulty"].update(batch_size=8, max_new_tokens=difficulty_cap)
    raw["evaluation"]["max_new_tokens"] = eval_cap
    return C.validate(raw)


@pytest.mark.parametrize("difficulty_cap,eval_cap,expected", [
    (None, None, "longest"), (None, 5, 5), (None, 10_000, "longest"), (7, None, 7), (7, 3, 7)])
def test_scoring_answers_default_to_the_longest_reference(records, tokenizer, make_model, monkeypatch,
                                                          difficulty_cap, eval_cap, expected):
    cfg = _cfg(difficulty_cap, eval_cap)
    recs = records[:12]
    # the longest reference, counted independently: its tokens plus EOS
    longest = max(len(tokenizer(r["output"][0], add_special_tokens=False)["input_ids"]) + 1 for r in recs)
    seen = {}

    def fake_sample(model, tok, rs, **kw):
        seen["max_new_tokens"] = kw["max_new_tokens"]
        return ["x"] * len(rs), {"gen_tokens": 0, "gen_wall_s": 0.0}

    monkeypatch.setattr("kdbench.generate.sample", fake_sample)
    table = difficulty.score(make_model(), tokenizer, recs, cfg, seed=0)
    assert seen["max_new_tokens"] == (longest if expected == "longest" else expected)
    assert difficulty.answer_budget(encode(tokenizer, recs, 256), cfg) == seen["max_new_tokens"]
    assert len(table) == 12 and table["difficulty"].between(0, 1).all()
