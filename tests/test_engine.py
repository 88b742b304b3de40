"""The training engine: every method trains through it; accumulation is exact; the cache
equals the online teacher; a NaN loss stops with a clear message."""
import numpy as np
import pytest
import torch

from kdbench import method as M
from kdbench.data import collate, encode
from kdbench.errors import UserError
from kdbench.onpolicy import Pairs
from kdbench.rollouts import Rollouts
from kdbench.teacher import CachedTeacher, OnlineTeacher, build_cache
from kdbench.models import checkpoint_activations, is_checkpointing
from kdbench.train import lr_factor, train

BUDGET = {"epochs": 2, "batch_size": 8, "grad_accum": 1, "lr": 1e-3, "min_lr_ratio": 0.1, "warmup": 0.1,
          "weight_decay": 0.0, "grad_clip": 1.0, "loss_on": "response", "precision": "fp32", "bucket_window": 2}


@pytest.fixture(scope="module")
def examples(tokenizer, records):
    return encode(tokenizer, records[:24], max_length=512)


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 0.1, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("name", sorted(M.discover()))
def test_every_method_trains_through_the_engine(name, examples, tokenizer, make_model):
    cls = M.discover()[name]
    meth = cls()
    student, teacher = make_model(seed=1), make_model(seed=2, hidden_size=32)
    difficulty = np.random.default_rng(0).random(len(examples)) if cls.uses_difficulty else None
    before = [p.detach().clone() for p in student.parameters()]
    # a "pairs" method gets both responses per prompt (here the references twice)
    pairs = Pairs(examples, examples, pad_id=tokenizer.pad_token_id) if cls.train_on == "pairs" else None
    # a method that owns its rollouts samples and scores with the engine's Rollouts
    rollouts = (Rollouts(student, teacher, corpus=examples, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                         max_length=512, max_new_tokens=5, precision="fp32", seed=0)
                if cls.train_on == "rollouts" else None)
    res = train(student, examples, {**BUDGET, "epochs": 3}, seed=0, pad_id=tokenizer.pad_token_id,
                method=meth, teacher=OnlineTeacher(teacher, "fp32", torch.device("cpu")),
                kd_ratio=1.0 if cls.needs_teacher else 0.0, difficulty=difficulty, on_policy=pairs,
                rollouts=rollouts)
    assert np.isfinite(res.trace["loss"]).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert len(res.epochs) == 3 and res.stats["train_examples"] == res.epochs["n_examples"].sum()
    if cls.needs_teacher:
        assert (res.trace["distill"] != 0).any()
    else:
        assert (res.trace["distill"] == 0).all() and (res.trace["kd_ratio"] == 0).all()
    for key in meth.schedule(M.Progress()):  # scheduled values are logged every step
        assert key in res.trace.columns
    if difficulty is not None:
        assert set(res.bin_loss["bin"]) <= {1, 2, 3, 4, 5} and len(res.bin_loss)


def test_accumulation_equals_one_big_batch(examples, tokenizer, make_model, monkeypatch):
    # plain SGD so the update is proportional to the gradient (Adam's first step is its sign)
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, lr, **_: torch.optim.SGD(groups, lr=lr))
    sub = examples[:8]
    budget = {**BUDGET, "epochs": 1, "grad_clip": 0.0, "warmup": 0.0, "bucket_window": 1}
    a, b = make_model(seed=3), make_model(seed=3)
    train(a, sub, {**budget, "batch_size": 8, "grad_accum": 1}, seed=0, pad_id=tokenizer.pad_token_id)
    train(b, sub, {**budget, "batch_size": 4, "grad_accum": 2}, seed=0, pad_id=tokenizer.pad_token_id)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_fused_adamw_trains_as_the_default_adamw(examples, tokenizer, make_model, monkeypatch):
    # the engine takes PyTorch's fused AdamW on a CPU; its updates may differ from the
    # default (foreach) implementation's in the last float32 bits only
    made = []
    adamw = torch.optim.AdamW

    def spy(groups, lr, **kw):
        made.append(kw.get("fused"))
        return adamw(groups, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    a, b = make_model(seed=3), make_model(seed=3)
    train(a, examples, BUDGET, seed=0, pad_id=tokenizer.pad_token_id)
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, lr, **_: adamw(groups, lr=lr))
    train(b, examples, BUDGET, seed=0, pad_id=tokenizer.pad_token_id)
    assert made == [True]
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)


def _saved_bytes(model, ids) -> int:
    """Bytes autograd keeps for the backward pass of one training-mode forward."""
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        model(input_ids=ids, use_cache=False).logits.sum()
    return sum(kept)


def test_gradient_checkpointing_trains_as_the_plain_step_and_keeps_less(examples, tokenizer, make_model):
    """`gradient_checkpointing: true` recomputes the layers in the backward pass with the same
    dropout masks: the same weights after training, fewer bytes saved by a forward, and the
    model handed back without it (sampling and saving see a plain model)."""
    over = {"attention_dropout": 0.1, "num_hidden_layers": 2}
    a, b = make_model(seed=3, **over), make_model(seed=3, **over)
    train(a, examples, BUDGET, seed=0, pad_id=tokenizer.pad_token_id)
    train(b, examples, {**BUDGET, "gradient_checkpointing": True}, seed=0, pad_id=tokenizer.pad_token_id)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)
    assert not is_checkpointing(b)
    ids = torch.randint(4, 100, (2, 48))
    plain = _saved_bytes(make_model(seed=3, **over).train(), ids)
    ckpt = make_model(seed=3, **over).train()
    checkpoint_activations(ckpt, True)
    assert _saved_bytes(ckpt, ids) < 0.5 * plain


def test_cache_equals_online_teacher(examples, tokenizer, make_model, tmp_path):
    teacher = make_model(seed=4).eval()
    build_cache(teacher, examples, tokenizer.pad_token_id, tmp_path / "cache", "fp32", torch.device("cpu"), batch_size=7)
    cached = CachedTeacher(tmp_path / "cache", examples)
    online = OnlineTeacher(teacher, "fp32", torch.device("cpu"))
    batch = collate([examples[i] for i in (5, 0, 17)], tokenizer.pad_token_id)
    m = batch["mask"]
    rows = cached(batch)
    assert rows.shape == (int(m.sum()), teacher.config.vocab_size)
    # the cache stores bf16: compare at bf16 resolution with the full-sequence logits at the
    # positions that carry the loss
    torch.testing.assert_close(rows.float(), teacher(input_ids=batch["input_ids"]).logits[m], atol=0.05, rtol=0.02)
    torch.testing.assert_close(online(batch), teacher(input_ids=batch["input_ids"]).logits[m])


class _NaN(M.Method):
    def loss(self, student_logits, teacher_logits, mask, progress):
        return student_logits.sum() * float("nan")


def test_nan_loss_stops_with_one_sentence(examples, tokenizer, make_model):
    teacher = OnlineTeacher(make_model(seed=5), "fp32", torch.device("cpu"))
    # the method's own term is NaN while the student's cross-entropy is finite: the method is named
    with pytest.raises(UserError, match="method 'test_engine' returned a distillation loss of nan"):
        train(make_model(), examples, BUDGET, seed=0, pad_id=tokenizer.pad_token_id, method=_NaN(),
              teacher=teacher, kd_ratio=1.0)


def test_fast_step_equals_the_full_logits_computation(examples, tokenizer, make_model):
    """The engine's step (logits only at the loss positions, closed-form KL gradient) gives the
    losses and gradients of the textbook computation over the full (B, T, V) logits."""
    import torch.nn.functional as F

    from kdbench.train import _micro_step

    student, t_model = make_model(seed=6), make_model(seed=7, hidden_size=32)
    batch = collate(examples[:5], tokenizer.pad_token_id)
    teacher = OnlineTeacher(t_model, "fp32", torch.device("cpu"))
    kd = M.discover()["kd"](temperature=2.0)
    loss, ce, distill, _ = _micro_step(student, batch, "fp32", 0.7, kd, teacher, None, M.Progress())
    loss.backward()
    fast = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    m = batch["mask"]
    s = student(input_ids=batch["input_ids"]).logits
    t = t_model(input_ids=batch["input_ids"]).logits.detach()
    ref_ce = F.cross_entropy(s[m], batch["targets"][m])
    log_q, log_p = torch.log_softmax(s[m] / 2, -1), torch.log_softmax(t[m] / 2, -1)
    ref_kl = 4 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    ref = 0.3 * ref_ce + 0.7 * ref_kl
    ref.backward()
    torch.testing.assert_close(ce, ref_ce.detach())
    torch.testing.assert_close(distill, ref_kl.detach())
    torch.testing.assert_close(loss.detach(), ref.detach())
    for a, p in zip(fast, student.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-4)


def test_kd_ratio_one_leaves_the_ce_out_of_the_graph_bitwise(examples, tokenizer, make_model):
    """At kd_ratio 1 the CE is computed for the trace only: the gradients are bitwise those of
    the same step with the CE (weight 0) still in the graph."""
    import torch.nn.functional as F

    from kdbench.models import rows_logits
    from kdbench.train import _micro_step

    student, t_model = make_model(seed=6), make_model(seed=7, hidden_size=32)
    batch = collate(examples[:5], tokenizer.pad_token_id)
    teacher = OnlineTeacher(t_model, "fp32", torch.device("cpu"))
    kd, m = M.discover()["kd"](temperature=2.0), batch["mask"]
    loss, ce, _, _ = _micro_step(student, batch, "fp32", 1.0, kd, teacher, None, M.Progress())
    assert not ce.requires_grad and ce > 0
    loss.backward()
    fast = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    s = rows_logits(student, batch["input_ids"], m)
    full = F.cross_entropy(s.float(), batch["targets"][m]) * 0 + 1.0 * kd.loss(
        s, teacher(batch), torch.ones(len(s), dtype=torch.bool), M.Progress())
    full.backward()
    assert torch.equal(loss.detach(), full.detach())
    for a, p in zip(fast, student.parameters()):
        assert torch.equal(a, p.grad)


# --- model selection ---------------------------------------------------------------------

def _scripted_validator(scores):
    """A validate callback that returns the given Rouge-L per epoch and records the weights it saw."""
    seen = []

    def run(model):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        i = len(seen) - 1
        return {"val_loss": 2.0 - 0.1 * i, "val_rouge_l": scores[i]}
    return run, seen


@pytest.mark.parametrize("selection, expected", [("best", 1), ("last", 3)])
def test_selection_keeps_the_best_or_the_last_epoch(selection, expected, examples, tokenizer, make_model):
    model = make_model(seed=6)
    validate, seen = _scripted_validator([10.0, 30.0, 30.0, 20.0])  # tie at epochs 1, 2: the earlier wins
    res = train(model, examples, {**BUDGET, "epochs": 4, "selection": selection}, seed=0,
                pad_id=tokenizer.pad_token_id, validate=validate)
    assert res.stats["selected_epoch"] == expected and res.stats["selection"] == selection
    assert list(res.epochs["val_rouge_l"]) == [10.0, 30.0, 30.0, 20.0]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, seen[expected][k], rtol=0, atol=0)
    assert res.stats["val_rouge_l_selected"] == [10.0, 30.0, 30.0, 20.0][expected]


def test_validator_scores_teacher_forced_loss_and_sampled_rouge(records, tokenizer, make_model):
    """val_loss: the mean token cross-entropy of the references from the full (B, T, V)
    logits; val_rouge_l: Rouge-L of the answers `sample` draws with the validation seed."""
    import torch.nn.functional as F

    from kdbench.generate import sample
    from kdbench.metrics import rouge_l
    from kdbench.validation import validator

    model, recs = make_model(seed=8).eval(), records[:7]
    evaluation = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 6, "batch_size": 4,
                  "precision": "fp32"}
    got = validator(tokenizer, recs, max_length=512, evaluation=evaluation, seed=3, batch_size=3)(model)
    batch = collate(encode(tokenizer, recs, max_length=512), tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits[batch["mask"]]
    want = float(F.cross_entropy(logits, batch["targets"][batch["mask"]]))
    answers, _ = sample(model, tokenizer, recs, seed=3, max_length=512, max_new_tokens=6, batch_size=4,
                        precision="fp32")
    assert got["val_loss"] == pytest.approx(want, rel=1e-6)
    assert got["val_rouge_l"] == rouge_l(answers, [r["output"] for r in recs])


def test_validation_loss_change_over_the_last_fifth():
    import pandas as pd

    from kdbench.train import val_loss_change

    ep = pd.DataFrame({"val_loss": [4.0, 3.0, 2.5, 2.0, 2.0, 1.9, 1.9, 1.8, 1.8, 1.71]})
    # 10 equal epochs: 80% of the steps end with epoch 7 (index 7, loss 1.8) -> (1.71 - 1.8) / 1.8
    assert val_loss_change(ep, [5] * 10) == pytest.approx(-0.05)
    # the mark follows steps, not epochs: long early epochs put 80% of the steps after epoch 3
    # (ends at 10, 20, 30, 40, 50, 51, ..., 55 of 55 steps; 40/55 = 0.73 is the last <= 0.8)
    assert val_loss_change(ep, [10] * 5 + [1] * 5) == pytest.approx((1.71 - 2.0) / 2.0)
    assert val_loss_change(pd.DataFrame({"x": [1]}), [1]) is None
