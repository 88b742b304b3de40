"""The fused large-vocabulary path (kdbench/fused.py): the same values and gradients as the
plain path (logits formed, then the chunked divergences), masks and τ² included, for every
divergence, every method and the engine's step; errors for the uses it cannot serve."""
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench import divergences as D
from kdbench import method as M
from kdbench.data import collate, encode
from kdbench.errors import UserError
from kdbench.fused import AUTO_MIN_VOCAB, ProjectedLogits, cross_entropy, use_fused
from kdbench.teacher import OnlineTeacher

B, T, H, V = 2, 5, 6, 11


def _inputs(dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_() if bias else None
    teacher = 2 * torch.randn(B, T, V, generator=g, dtype=dtype)
    mask = torch.rand(B, T, generator=g) < 0.6
    mask[0, 0] = True
    return hidden, weight, b, teacher, mask


def _grads(value, tensors):
    return torch.autograd.grad(value, [t for t in tensors if t is not None])


DIVERGENCES = {
    "forward_kl": D.forward_kl, "reverse_kl": D.reverse_kl, "total_variation": D.total_variation,
    "skew_forward_kl": functools.partial(D.skew_forward_kl, alpha=0.3),
    "skew_reverse_kl": functools.partial(D.skew_reverse_kl, alpha=0.3),
    "jensen_shannon": functools.partial(D.jensen_shannon, beta=0.4),
}


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_values_and_gradients_equal_the_plain_path(name, tau, monkeypatch):
    monkeypatch.setattr(D, "CHUNK_ELEMENTS", 2 * V)  # 2 rows per chunk: several chunks, a ragged last one
    hidden, weight, bias, teacher, mask = _inputs()
    fn = DIVERGENCES[name]
    plain_logits = F.linear(hidden, weight, bias)
    plain = fn(plain_logits, teacher, mask, temperature=tau)
    fused = fn(ProjectedLogits(hidden, weight, bias, hidden.dtype), teacher, mask, temperature=tau)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(fused, (hidden, weight, bias)), _grads(plain, (hidden, weight, bias))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_forward_kl_against_the_textbook_formula_with_tau_squared():
    """Independent of kdbench.divergences: τ² · mean over masked tokens of KL(p_τ ‖ q_τ)."""
    hidden, weight, bias, teacher, mask = _inputs(seed=1)
    tau = 3.0
    value = D.forward_kl(ProjectedLogits(hidden, weight, bias, hidden.dtype), teacher, mask, temperature=tau)
    s = F.linear(hidden, weight, bias)[mask] / tau
    log_p, log_q = torch.log_softmax(teacher[mask] / tau, -1), torch.log_softmax(s, -1)
    ref = tau ** 2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(value, (hidden, weight, bias)), _grads(ref, (hidden, weight, bias))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_masked_out_rows_neither_count_nor_get_a_gradient():
    hidden, weight, bias, teacher, mask = _inputs(seed=2)
    student = ProjectedLogits(hidden, weight, bias, hidden.dtype)
    value = D.jensen_shannon(student, teacher, mask, beta=0.5)
    other = teacher.clone()
    other[~mask] = 50 * torch.randn(int((~mask).sum()), V, dtype=other.dtype)  # rows outside the mask
    assert D.jensen_shannon(student, other, mask, beta=0.5).item() == pytest.approx(value.item(), rel=1e-12)
    (g_hidden,) = torch.autograd.grad(value, hidden)
    assert g_hidden[~mask].abs().max() == 0 and g_hidden[mask].abs().max() > 0
    empty = D.forward_kl(student, teacher, torch.zeros(B, T, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


@pytest.mark.parametrize("name", sorted(n for n, c in M.discover().items() if c.needs_teacher))
def test_every_method_gives_the_plain_paths_loss_and_gradients(name, monkeypatch):
    """Each method's own loss (custom kernels, autograd kernels, two calls per step) on
    projected rows, against the same method on the formed logits; fresh instances, since some
    methods update their state in `loss`."""
    monkeypatch.setattr(D, "CHUNK_ELEMENTS", 3 * V)
    hidden, weight, bias, teacher, _ = _inputs(seed=3)
    hidden, teacher = hidden.detach().reshape(-1, H).requires_grad_(), teacher.reshape(-1, V)
    mask = torch.ones(B * T, dtype=torch.bool)  # what the engine passes
    # and, to a "pairs" method, which rows are the student's own response
    extra = {"from_student": torch.arange(B * T) % 2 == 1} if M.discover()[name].train_on == "pairs" else {}
    results = []
    for fused in (False, True):
        meth = M.discover()[name]()
        progress = M.Progress(step=3, total_steps=10, epoch=1, n_epochs=3)
        progress.values = dict(meth.schedule(progress))
        student = (ProjectedLogits(hidden, weight, bias, hidden.dtype) if fused
                   else F.linear(hidden, weight, bias))
        value = meth.loss(student, teacher, mask, progress, **extra)
        results.append((value, _grads(value, (hidden, weight, bias)), meth.state_dict()))
    (v0, g0, s0), (v1, g1, s1) = results
    torch.testing.assert_close(v1, v0, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(s1, s0)  # nested state (dicts, lists, tensors) compared alike


def test_cross_entropy_equals_torch():
    hidden, weight, bias, _, _ = _inputs(seed=4)
    targets = torch.randint(0, V, (B * T,), generator=torch.Generator().manual_seed(0))
    flat = hidden.reshape(-1, H)
    mean, per_token = cross_entropy(ProjectedLogits(flat, weight, bias, flat.dtype), targets)
    ref = F.cross_entropy(F.linear(flat, weight, bias), targets, reduction="none")
    torch.testing.assert_close(per_token, ref.detach(), rtol=1e-12, atol=1e-12)
    assert not per_token.requires_grad
    for a, b in zip(_grads(mean, (hidden, weight, bias)), _grads(ref.mean(), (hidden, weight, bias))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    no_grad, _ = cross_entropy(ProjectedLogits(flat, weight, bias, flat.dtype), targets, grad=False)
    assert not no_grad.requires_grad and no_grad.item() == pytest.approx(mean.item(), rel=1e-12)


def test_bf16_projection_matches_the_plain_bf16_logits():
    """Under autocast the projection runs in bf16, as the plain path's output layer would."""
    hidden, weight, bias, teacher, mask = _inputs(dtype=torch.float32, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head = torch.nn.Linear(H, V)
        head.weight, head.bias = torch.nn.Parameter(weight.detach()), torch.nn.Parameter(bias.detach())
        student = ProjectedLogits.of(head, hidden)
        plain_logits = head(hidden)
    assert student.dtype == torch.bfloat16 == plain_logits.dtype
    plain = D.reverse_kl(plain_logits, teacher, mask)
    fused = D.reverse_kl(student, teacher, mask)
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)  # the same bf16 logits, float32 losses
    for a, b in zip(_grads(fused, (hidden, head.weight)), _grads(plain, (hidden, head.weight))):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)  # bf16 gradient matmuls, chunked vs whole


# --- through a tiny model: the engine's step ------------------------------------------------

@pytest.mark.parametrize("ratio", [0.7, 1.0])
def test_engine_step_equals_the_plain_step(ratio, tokenizer, records, make_model, monkeypatch):
    from kdbench.train import _micro_step

    monkeypatch.setattr(D, "CHUNK_ELEMENTS", 7 * 500)  # several chunks of rows
    examples = encode(tokenizer, records[:5], max_length=512)
    batch = collate(examples, tokenizer.pad_token_id)
    student, t_model = make_model(seed=6), make_model(seed=7, hidden_size=32)
    teacher = OnlineTeacher(t_model, "fp32", torch.device("cpu"))
    out = {}
    for fused in (False, True):
        meth = M.discover()["skl"](temperature=2.0)
        loss, ce, distill, tok_ce = _micro_step(student, batch, "fp32", ratio, meth, teacher, None,
                                                M.Progress(), fused)
        loss.backward()
        out[fused] = (loss.detach(), ce.detach(), distill, tok_ce.detach(),
                      [p.grad.clone() for p in student.parameters()])
        student.zero_grad()
    for a, b in zip(out[True][:4], out[False][:4]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(out[True][4], out[False][4]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


# --- the switch and its errors --------------------------------------------------------------

def test_auto_switches_on_at_the_threshold_and_true_needs_a_plain_head(make_model):
    model = make_model()
    assert not use_fused("auto", model, AUTO_MIN_VOCAB - 1) and use_fused("auto", model, AUTO_MIN_VOCAB)
    assert use_fused(True, model, 10) and not use_fused(False, model, 10 ** 6)
    model.config.model_type = "gemma2"  # soft-capped logits: not the output layer alone
    assert not use_fused("auto", model, 10 ** 6)
    with pytest.raises(UserError, match="distill.fused: true needs a student whose logits are its output "
                                        "layer.*'gemma2'.*set distill.fused to auto or false"):
        use_fused(True, model, 10 ** 6)


@pytest.mark.parametrize("name", ["default", "smoke"])
def test_the_embedded_profiles_stay_on_the_plain_path(name):
    """Their scratch tokenizers are far below the threshold, so `auto` keeps today's path."""
    from kdbench import config as C

    cfg = C.load(f"config/{name}.yaml")
    assert cfg["distill"]["fused"] == "auto" and cfg["tokenizer"]["vocab_size"] < AUTO_MIN_VOCAB


def test_a_loss_that_uses_the_logits_directly_stops_with_one_sentence():
    hidden, weight, bias, teacher, mask = _inputs()
    student = ProjectedLogits(hidden, weight, bias, hidden.dtype)
    fix = "write the loss with kdbench.divergences.*or set distill.fused: false"
    with pytest.raises(UserError, match=r"used `\.softmax` of the student logits.*" + fix):
        student.softmax(-1)
    with pytest.raises(UserError, match=r"used `log_softmax` of the student logits.*" + fix):
        torch.log_softmax(student, -1)
    with pytest.raises(UserError, match="per_token needs the student logits.*set distill.fused: false"):
        D.per_token(D._forward_kl_rows, student, teacher, mask)
    assert D.zero(student).item() == 0.0


@pytest.mark.slow  # the first stages, then two distillation runs
def test_the_distill_stage_takes_the_path_the_switch_picks(tmp_path):
    """`distill.fused` reaches the engine through the stage: the run records the path it took,
    and the fused run's trace equals the plain one's (auto keeps the tiny vocabulary plain)."""
    import shutil

    import pandas as pd

    from kdbench import io
    from kdbench import stages as S
    from kdbench.paths import RUN_FILES, Paths
    from kdbench_cli import prepare_tree, tiny_profile

    base = prepare_tree(tmp_path, tiny_profile(tmp_path))
    traces = {}
    for setting, expected in (("auto", False), (True, True)):
        cfg = {**base, "distill": {**base["distill"], "fused": setting}}
        S.distill(cfg, "tiny", "kd", "default", 0)
        run = Path(Paths(cfg).run_dir("tiny", "kd", "default", 0))
        assert io.read_json(run / RUN_FILES["train"])["fused"] is expected
        traces[expected] = pd.read_csv(run / RUN_FILES["trace"])
        shutil.rmtree(run)
    for col in ("loss", "ce", "distill"):
        assert traces[True][col].to_numpy() == pytest.approx(traces[False][col].to_numpy(), rel=1e-4, abs=1e-6)


# --- the no-gradient cross-entropy of validation and difficulty scoring (fused.token_nll) -------

def _reference_nll(model, examples):
    """Per response token, one example at a time (no padding), from the model's full logits."""
    out = []
    for e in examples:
        logits = model(input_ids=torch.tensor([e.ids])).logits[0].double()
        out.append(F.cross_entropy(logits[e.n_prompt - 1:-1], torch.tensor(e.ids[e.n_prompt:]), reduction="none"))
    return out


@pytest.mark.parametrize("large", [False, True])
def test_token_nll_is_the_cross_entropy_of_the_full_logits(large, tokenizer, records, make_model, monkeypatch):
    """Below AUTO_MIN_VOCAB the (N, V) rows are formed; from it on the output layer runs chunk by
    chunk (several chunks here); the values are the same either way."""
    from kdbench.fused import token_nll

    monkeypatch.setattr(D, "CHUNK_ELEMENTS", 3 * AUTO_MIN_VOCAB)  # 3 rows per chunk
    model = make_model(seed=3, **({"vocab_size": AUTO_MIN_VOCAB} if large else {}))
    assert use_fused("auto", model, model.config.vocab_size) == large
    examples = encode(tokenizer, records[:4], max_length=512)
    batch = collate(examples, tokenizer.pad_token_id)
    mask = batch["mask"]
    got = token_nll(model, batch["input_ids"], mask, batch["targets"][mask])
    ref = torch.cat(_reference_nll(model, examples)).float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    total = token_nll(model, batch["input_ids"], mask, batch["targets"][mask], "sum")
    assert total.item() == pytest.approx(ref.sum().item(), rel=1e-5) and not got.requires_grad


@pytest.mark.parametrize("large", [False, True])
def test_difficulty_nll_and_distillm_validation_loss_keep_their_values(large, tokenizer, records, make_model,
                                                                       monkeypatch):
    """per_example_nll (difficulty) and onpolicy.validation_loss (DistiLLM) take the chunked
    cross-entropy at large vocabularies: the same per-example means and token mean."""
    from kdbench.difficulty import per_example_nll
    from kdbench.onpolicy import validation_loss

    monkeypatch.setattr(D, "CHUNK_ELEMENTS", 3 * AUTO_MIN_VOCAB)
    model = make_model(seed=4, **({"vocab_size": AUTO_MIN_VOCAB} if large else {}))
    examples = encode(tokenizer, records[:5], max_length=512)
    ref = _reference_nll(model, examples)
    nll = per_example_nll(model, examples, tokenizer.pad_token_id, 2, "fp32")
    np.testing.assert_allclose(nll, [r.mean().item() for r in ref], rtol=1e-5)
    got = validation_loss(model, examples, tokenizer.pad_token_id, "fp32", batch_size=2)
    assert got == pytest.approx(torch.cat(ref).mean().item(), rel=1e-5)


def test_backward_hands_on_the_gradients_made_in_forward_once():
    """The gradients made in forward are scaled in place and handed on (no second (V, H) copy
    at the step's peak), so a second backward through the same graph is refused, by name."""
    hidden, weight, bias, teacher, mask = _inputs()
    loss = D.forward_kl(ProjectedLogits(hidden, weight, bias, hidden.dtype), teacher, mask)
    reference = _grads(D.forward_kl(F.linear(hidden, weight, bias), teacher, mask), (hidden, weight, bias))
    loss.backward(retain_graph=True)
    for t, want in zip((hidden, weight, bias), reference):
        torch.testing.assert_close(t.grad, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="backward runs once"):
        loss.backward()
