"""The protocol choices of docs/protocol.md that are not pinned elsewhere: long benchmark
prompts are cut and kept, the difficulty NLL leaves out the EOS, SeqKD runs the teacher on its
own samples, per-method budgets, and every config key the document names exists."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench import config as C
from kdbench import method as M
from kdbench.data import encode, encode_prompts
from kdbench.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _cfg(**over):
    raw = {"pairs": {"p": {"teacher": {"config": {"model_type": "llama"}},
                           "student": {"config": {"model_type": "llama"}}}},
           "data": {"benchmarks": {"id": "id"}}, "tokenizer": {"train": True},
           "methods_dir": str(REPO / "methods"), **over}
    return C.validate(raw)


def test_a_long_benchmark_prompt_is_cut_to_its_first_tokens_and_answered(tokenizer, make_model, records):
    from kdbench.generate import sample

    long = {**records[0], "id": "long", "instruction": " ".join(["word"] * 300)}
    prompt, = encode_prompts(tokenizer, [long])
    assert len(prompt) > 300
    model = make_model()
    seen = []  # the token ids of every forward pass, as the input embedding reads them
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        answers, stats = sample(model, tokenizer, [long], seed=0, max_length=300, max_new_tokens=4,
                                max_prompt_tokens=256, batch_size=1)
    finally:
        hook.remove()
    assert seen[0][0].tolist() == prompt[:256]  # the first pass reads the whole prompt (MiniLLM's prompt[:prompt_length])
    assert stats["gen_tokens"] >= 1 and isinstance(answers[0], str)


def test_difficulty_nll_without_the_eos(tokenizer, make_model, records):
    from kdbench.data import collate
    from kdbench.difficulty import per_example_nll

    model = make_model().eval()
    examples = encode(tokenizer, records[:6], max_length=512)
    eos = tokenizer.eos_token_id
    assert all(e.ids[-1] == eos for e in examples)
    with_eos = per_example_nll(model, examples, tokenizer.pad_token_id, 4, "fp32")
    without = per_example_nll(model, examples, tokenizer.pad_token_id, 4, "fp32", eos_id=eos)
    # independent: token NLLs of each example's response, by hand from the model's logits
    for e, w, wo in zip(examples, with_eos, without):
        batch = collate([e], tokenizer.pad_token_id)
        with torch.no_grad():
            logq = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[0].double(), -1)
        targets = e.ids[e.n_prompt:]
        nll = [-logq[e.n_prompt - 1 + j, t].item() for j, t in enumerate(targets)]
        assert w == pytest.approx(np.mean(nll), rel=1e-5)
        assert wo == pytest.approx(np.mean(nll[:-1]), rel=1e-5)  # the last target is the EOS


def test_difficulty_defaults_are_pocls():
    d = _cfg()["difficulty"]
    assert (d["temperature"], d["nll_eos"]) == (0.01, False)


def test_seqkd_runs_the_teacher_online_even_with_the_cache():
    methods = M.discover(REPO / "methods")
    cached = _cfg(distill={"cache_teacher": True})
    assert C.uses_teacher_cache(cached, methods["kd"])
    assert not C.uses_teacher_cache(cached, methods["seqkd"])  # the cache holds reference sequences
    assert not C.uses_teacher_cache(cached, methods["sft"])
    assert not C.uses_teacher_cache(_cfg(distill={"cache_teacher": False}), methods["kd"])
    assert "C.uses_teacher_cache(CFG, cls)" in (REPO / "workflows" / "runs.smk").read_text()


def test_seqkd_trains_with_the_teacher_on_teacher_samples(tokenizer, make_model, records):
    from kdbench.teacher import OnlineTeacher
    from kdbench.train import train

    samples = [r["output"][0][::-1] for r in records[:8]]  # stand-in teacher answers
    examples = encode(tokenizer, records[:8], 512, responses=samples)
    calls = []
    online = OnlineTeacher(make_model(seed=2), "fp32", torch.device("cpu"))
    teacher = lambda batch: calls.append(batch["input_ids"]) or online(batch)  # noqa: E731
    budget = {"epochs": 1, "batch_size": 4, "grad_accum": 1, "lr": 1e-3, "min_lr_ratio": 0.1, "warmup": 0.0,
              "weight_decay": 0.0, "grad_clip": 1.0, "loss_on": "response", "precision": "fp32",
              "bucket_window": 1}
    res = train(make_model(seed=1), examples, budget, seed=0, pad_id=tokenizer.pad_token_id,
                method=M.instantiate(M.discover(REPO / "methods")["seqkd"], {}), teacher=teacher, kd_ratio=1.0)
    assert len(calls) == 2 and (res.trace["distill"] > 0).all()
    # the teacher sees the sampled answers, not the references
    fed = {tuple(row[row != tokenizer.pad_token_id].tolist()) for batch in calls for row in batch}
    assert {tuple(e.ids) for e in examples} <= fed


def test_per_method_budget_overrides_the_student_budget():
    cfg = _cfg(training={"student": {"batch_size": 8, "lr": 5e-4},
                         "per_method": {"sft": {"batch_size": 8, "grad_accum": 4}}})
    sft, kd = C.student_budget(cfg, "sft"), C.student_budget(cfg, "kd")
    assert (sft["batch_size"] * sft["grad_accum"], sft["lr"]) == (32, 5e-4)
    assert (kd["batch_size"] * kd["grad_accum"], kd == cfg["training"]["student"]) == (8, True)
    with pytest.raises(UserError, match="no_such_method"):
        _cfg(training={"per_method": {"no_such_method": {"lr": 1.0}}})
    with pytest.raises(UserError, match="per_method.sft"):
        _cfg(training={"per_method": {"sft": {"batch_size": 0}}})


def test_every_config_key_in_docs_protocol_exists():
    """docs/protocol.md names each choice's config key in backticks; each must be in the schema
    (or be a method parameter, written method.param)."""
    text = (REPO / "docs" / "protocol.md").read_text()
    schema = C.schema()
    methods = M.discover(REPO / "methods")
    keys = set(re.findall(r"`((?:data|evaluation|training|distill|difficulty|methods)\.[a-z_.]+)`", text))
    keys |= {k for k in re.findall(r"`([a-z_]+\.[a-z_]+)`", text) if k.split(".")[0] in methods}
    assert len(keys) >= 15
    for key in sorted(keys):
        head, *rest = key.split(".")
        if head in methods:
            assert rest[0] in M.defaults(methods[head]), key
            continue
        node = schema["properties"][head]
        for part in rest:
            if "$ref" in node:
                node = schema["$defs"][node["$ref"].split("/")[-1]]
            if part in ("student", "teacher") and head == "training":
                node = schema["$defs"]["budget"]
                continue
            assert part in node.get("properties", {}), f"{key}: no `{part}` in the schema"
            node = node["properties"][part]
