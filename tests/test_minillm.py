"""MiniLLM (methods/minillm.py) and the engine's side of methods that own their rollouts
(kdbench/rollouts.py, `_Rollouts` in kdbench/train.py).

Closed-form pins of every piece (single-step term, importance weights, rewards, returns,
clipped surrogate), an independent numpy computation of the whole loss and its gradient on a
hand-made example of two rollouts of two steps each, the teacher-mixed sampler, the engine's
step accounting and a run resumed between two inner steps."""
import copy
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench import method as M
from kdbench.data import Encoded, collate, encode
from kdbench.generate import _mixed
from kdbench.rollouts import Rollouts
from kdbench.train import train

REPO = Path(__file__).resolve().parents[1]
METHODS = M.discover(REPO / "methods")
MINILLM = METHODS["minillm"]
mini = sys.modules[MINILLM.__module__]
BUDGET = {"epochs": 2, "batch_size": 3, "grad_accum": 2, "lr": 3e-3, "min_lr_ratio": 0.1, "warmup": 0.2,
          "weight_decay": 0.01, "grad_clip": 1.0, "loss_on": "response", "precision": "fp32", "bucket_window": 1}


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


# --- the pieces, closed form -------------------------------------------------------------

def test_single_step_term_is_reverse_kl():
    q, p = [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]
    s = torch.log(torch.tensor([q], dtype=torch.float64)).requires_grad_()
    t = torch.log(torch.tensor([p], dtype=torch.float64))
    loss = MINILLM().loss(s, t, torch.ones(1, dtype=torch.bool), M.Progress())
    assert loss.item() == pytest.approx(kl(q, p), rel=1e-9)  # KL(q ‖ p) = 0.1955...
    assert abs(loss.item() - kl(p, q)) > 0.01  # not the forward direction
    loss.backward()  # one gradient step on the student's logits lowers it
    after = MINILLM().loss(s.detach() - 0.5 * s.grad, t, torch.ones(1, dtype=torch.bool), M.Progress())
    assert after.item() < loss.item()


def test_importance_weights_and_rewards():
    log = lambda x: torch.log(torch.tensor(x, dtype=torch.float64))  # noqa: E731
    w = mini.importance_weights(log([0.5, 0.1]), log([0.1, 0.8]), 0.2)
    assert w.tolist() == pytest.approx([0.5 / (0.8 * 0.5 + 0.2 * 0.1), 0.1 / (0.8 * 0.1 + 0.2 * 0.8)], rel=1e-12)
    assert mini.importance_weights(log([0.5]), log([0.1]), 0.0).tolist() == [1.0]
    r = mini.token_rewards(log([0.5, 0.5]), log([0.1, 0.9]), 0.5, 100.0)
    assert r.tolist() == pytest.approx([2 * math.log(0.2), 2 * math.log(1.8)], rel=1e-12)
    assert mini.token_rewards(log([0.5]), log([0.1]), 1e-3, 100.0).tolist() == [-100.0]


def test_returns_discount_length_normalisation_and_start():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    ret = lambda **kw: mini.returns(rewards, mask, gamma=0.5, **kw).flatten().tolist()  # noqa: E731
    # G_t = Σ_{k ≥ t} γ^{k−t} r_k: 1 + 0.5·2 + 0.25·3, 2 + 0.5·3, 3
    assert ret(length_norm=False) == pytest.approx([2.75, 3.5, 3.0, 4.0, 0.0, 0.0])
    assert ret(length_norm=True) == pytest.approx([2.75 / 3, 3.5 / 2, 3.0, 4.0, 0.0, 0.0])
    # the paper's long-term part, G_{t+1}, over the tokens after t
    assert ret(length_norm=False, start="next") == pytest.approx([3.5, 3.0, 0.0, 0.0, 0.0, 0.0])
    assert ret(length_norm=True, start="next") == pytest.approx([1.75, 3.0, 0.0, 0.0, 0.0, 0.0])


def test_whiten_uses_the_sample_variance():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert mini.whiten(x).tolist() == pytest.approx(((x - 3.0) / math.sqrt(14 / 3 + 1e-8)).tolist())
    assert mini.whiten(torch.tensor([5.0])).tolist() == [0.0]


def test_clipped_surrogate_is_pessimistic():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    weight = torch.tensor([1.5, 1.0, 1.5, 0.5])  # ρ = w at the sampling policy
    log_q = torch.zeros(4, requires_grad=True)
    loss = mini.clipped_surrogate(log_q, torch.zeros(4), weight, adv, 0.2)
    # max(−Aρ, −A clip(ρ)): −1.2 (clipped), −1.0, 1.5 (unclipped: the larger), 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 1.5 + 0.8) / 4)
    loss.backward()  # no gradient where the clipped value is taken
    assert log_q.grad.tolist() == pytest.approx([0.0, -1.0 / 4, 1.5 / 4, 0.0])


# --- the whole loss on a hand-made example, against numpy ----------------------------------

S0 = np.array([[2.0, 0.0, -1.0], [0.5, 0.0, -0.5], [0.0, 1.0, 0.0], [-1.0, 1.5, 0.5]])  # student logits
P = np.array([[-1.0, 1.0, 0.5], [0.0, -1.0, 2.0], [0.2, 0.8, 0.0], [1.5, -1.5, 1.0]])   # teacher logits
LM_S = np.array([[0.3, -0.2, 0.1], [1.0, 0.0, -1.0]])  # logits at two pre-training tokens
LM_P = np.array([[0.0, 0.5, -0.5], [-0.4, 0.2, 0.9]])
ANSWERS = [[0, 2], [1, 1]]  # two rollouts, two steps each: the sampled tokens y = 0, 2, 1, 1
PROMPT = [2]


class HandEnv:
    """A Rollouts stand-in: two one-token prompts answered with ANSWERS; the student's and the
    teacher's logits at the four answer positions (row-major) are the tables above, and a
    two-token pre-training batch has its own."""

    dev = torch.device("cpu")

    def __init__(self):
        self.S = torch.tensor(S0, requires_grad=True)
        self.lm = collate([Encoded([0, 1, 2], 1, 0)], pad_id=0, loss_on="all")  # targets 1, 2
        self.lm_S = torch.tensor(LM_S, requires_grad=True)
        self.mix = None

    def sample(self, prompts, teacher_mix=0.0):
        self.mix = teacher_mix
        return [list(a) for a in ANSWERS]

    def batch(self, examples, loss_on="response"):
        return collate(examples, pad_id=0, loss_on=loss_on)

    def student(self, batch, train=True):
        out = self.lm_S if batch["input_ids"].shape == self.lm["input_ids"].shape else self.S
        return out if train else out.detach().clone()

    def teacher(self, batch):
        return torch.tensor(LM_P if batch["input_ids"].shape == self.lm["input_ids"].shape else P)

    def corpus_batch(self, n):
        return self.lm


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def numpy_minillm(S, *, alpha=0.2, gamma=0.95, scaling=0.5, clip=0.2, start="current", single_step=True,
                  lm_coef=0.0, kd=0.5):
    """MiniLLM's loss and its gradient with respect to the four rows of student logits S (the
    sampling policy's are S0), written out from the formulas."""
    y, rows = np.array([t for a in ANSWERS for t in a]), np.arange(4)
    lq0, lp = _log_softmax(S0)[rows, y], _log_softmax(P)[rows, y]
    w = np.exp(lq0) / ((1 - alpha) * np.exp(lq0) + alpha * np.exp(lp))
    r = np.clip((lp - lq0) / scaling, -100, 100)
    if start == "current":  # rollout b's tokens 2b, 2b+1: G over 2 and 1 tokens
        G = np.array([(r[0] + gamma * r[1]) / 2, r[1], (r[2] + gamma * r[3]) / 2, r[3]])
    else:  # G_{t+1} over the 1 and 0 tokens after t
        G = np.array([r[1], 0.0, r[3], 0.0])
    A = (G - G.mean()) / np.sqrt(G.var(ddof=1) + 1e-8)
    log_q = _log_softmax(S)
    q = np.exp(log_q)
    rho = w * np.exp(log_q[rows, y] - lq0)
    unclipped, clipped = -A * rho, -A * np.clip(rho, 1 - clip, 1 + clip)
    loss = np.maximum(unclipped, clipped).mean()
    onehot = np.eye(3)[y]
    grad = np.where((unclipped >= clipped)[:, None], unclipped[:, None] * (onehot - q), 0.0) / 4
    if single_step:  # token mean of KL(q ‖ p) and its gradient q ⊙ (log q − log p − KL)
        log_p = _log_softmax(P)
        kl_rows = (q * (log_q - log_p)).sum(-1)
        loss += kl_rows.mean()
        grad += q * (log_q - log_p - kl_rows[:, None]) / 4
    if lm_coef:  # (1 − κ) CE + κ KL(p ‖ q) on the pre-training rows (targets 1, 2)
        ls, lt = _log_softmax(LM_S), _log_softmax(LM_P)
        ce = -ls[[0, 1], [1, 2]].mean()
        loss += lm_coef * ((1 - kd) * ce + kd * (np.exp(lt) * (lt - ls)).sum(-1).mean())
    return loss, grad, unclipped < clipped


@pytest.mark.parametrize("params", [{}, {"return_from": "next", "single_step": False},
                                    {"lm_coef": 1.0, "teacher_mix": 0.5}])
def test_loss_and_gradient_equal_an_independent_computation(params):
    method = M.instantiate(MINILLM, {"lm_coef": 0.0, **params}, "minillm")
    env = HandEnv()
    prompts = [Encoded(PROMPT + [0], 1, 0), Encoded(PROMPT + [0], 1, 1)]  # the window: one micro-batch
    progress = M.Progress()
    method.rollout([prompts], env, progress)
    assert env.mix == method.teacher_mix
    kw = {"alpha": method.teacher_mix, "start": method.return_from, "single_step": method.single_step,
          "lm_coef": method.lm_coef}
    for inner, S in ((0, S0), (1, S0 + np.array([[0.3, -0.2, 0.0], [0.0, 0.4, -0.4], [0.1, 0.0, 0.2], [0.0, -0.3, 0.1]]))):
        env.S = torch.tensor(S, requires_grad=True)  # the weights after `inner` updates
        (term,) = method.rollout_losses(inner, env, progress)
        want, grad, clipped = numpy_minillm(S, **kw)
        assert term.weight == 1.0 and term.tokens == 4
        assert term.loss.item() == pytest.approx(want, rel=1e-10)
        term.loss.backward()
        np.testing.assert_allclose(env.S.grad.numpy(), grad, rtol=1e-9, atol=1e-12)
        if not params:  # the example exercises both sides of the clip
            assert clipped.any() and not clipped.all()


# --- teacher-mixed sampling ------------------------------------------------------------------

def test_mixed_sampling_distribution():
    zs, zt = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[-1.0, 1.0, 3.0, 9.0]])  # teacher has an extra logit
    q, p = zs.softmax(-1), zt[:, :3].softmax(-1)
    assert _mixed(zs, zt, alpha=0.2).exp()[0].tolist() == pytest.approx((0.8 * q + 0.2 * p)[0].tolist())
    assert _mixed(zs, zt, alpha=0.0).exp()[0].tolist() == pytest.approx(q[0].tolist())


def test_sampler_draws_from_the_mixture(make_model, tokenizer):
    """The first answer token's frequency under (1 − α) q + α p, with a teacher that puts most
    of its mass on one token the student finds unlikely."""
    student, teacher = make_model(seed=1), make_model(seed=2, hidden_size=32)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(100.0)  # a peaked teacher
    env = Rollouts(student, teacher, corpus=[], pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                   max_length=64, max_new_tokens=1, precision="fp32", seed=0)
    prompt = [5, 9, 17]
    with torch.no_grad():
        q = student(torch.tensor([prompt])).logits[0, -1].softmax(-1)
        p = teacher(torch.tensor([prompt])).logits[0, -1].softmax(-1)
    top = int(p.argmax())
    assert p[top] > 0.5 and q[top] < 0.05
    torch.manual_seed(0)
    for alpha in (0.0, 0.5):
        drawn = np.array([a[0] for _ in range(5) for a in env.sample([prompt] * 400, teacher_mix=alpha)])
        want = float((1 - alpha) * q[top] + alpha * p[top])
        assert abs((drawn == top).mean() - want) < 4 * math.sqrt(want * (1 - want) / len(drawn)) + 1e-9
    assert student.training  # the sampler restores the training mode


# --- the engine ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def examples(tokenizer, records):
    return encode(tokenizer, records[:12], max_length=512)  # 4 batches of 3: 2 windows per epoch


class _Crash(Exception):
    pass


class CrashingMiniLLM(MINILLM):
    crash_at = None

    def rollout_losses(self, inner, env, progress):
        if progress.step == self.crash_at:
            raise _Crash
        yield from super().rollout_losses(inner, env, progress)


def _run(make_model, tokenizer, examples, ckpt=None, crash_at=None, **params):
    student, teacher = make_model(seed=1), make_model(seed=2, hidden_size=32)
    method = CrashingMiniLLM(**{"ppo_epochs": 2, "max_new_tokens": 4, **params})
    method.crash_at = crash_at
    env = Rollouts(student, teacher, corpus=examples, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                   max_length=512, max_new_tokens=4, precision="fp32", seed=3)
    res = train(student, examples, BUDGET, seed=7, pad_id=tokenizer.pad_token_id, method=method, rollouts=env,
                checkpoint=ckpt)
    return student, method, env, res


def test_engine_runs_inner_steps_over_each_windows_rollouts(make_model, tokenizer, examples):
    sampled = []

    class Counting(CrashingMiniLLM):
        def rollout(self, window, env, progress):
            sampled.append((progress.step, [len(b) for b in window]))
            super().rollout(window, env, progress)

    student, teacher = make_model(seed=1), make_model(seed=2, hidden_size=32)
    env = Rollouts(student, teacher, corpus=examples, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                   max_length=512, max_new_tokens=4, precision="fp32", seed=3)
    res = train(student, examples, BUDGET, seed=7, pad_id=tokenizer.pad_token_id,
                method=Counting(ppo_epochs=2, max_new_tokens=4), rollouts=env)
    # 2 epochs x 2 windows (of 2 micro-batches of 3 prompts) x 2 inner steps
    assert res.stats["train_steps"] == 8 and [s for s, _ in sampled] == [0, 2, 4, 6]
    assert all(sizes == [3, 3] for _, sizes in sampled)
    tr = res.trace
    assert (tr["gen_s"] > 0).tolist() == [True, False] * 4
    assert res.stats["train_gen_s"] == pytest.approx(tr["gen_s"].sum())
    # a window's prompts count once (on its first inner step), as the epochs' n_examples do
    assert tr["examples"].tolist() == [6 * (k // 2 + 1) for k in range(8)]
    assert res.stats["train_examples"] == res.epochs["n_examples"].sum() == 24
    assert (tr["kd_ratio"] == 1.0).all() and (tr["loss"] == tr["distill"]).all()
    assert {"pg", "single_step", "pt", "reward"} <= set(tr.columns) and (tr["pt"] > 0).all()
    assert res.epochs["n_tokens"].sum() == tr["tokens"].iloc[-1]


@pytest.mark.parametrize("crash_at", [3, 5])  # between a window's two inner steps; epoch 1's first window
def test_run_resumed_between_inner_steps_equals_an_uninterrupted_one(crash_at, make_model, tokenizer, examples,
                                                                     tmp_path):
    from kdbench.resume import Checkpoint

    ref, _, ref_env, ref_res = _run(make_model, tokenizer, examples)
    with pytest.raises(_Crash):
        _run(make_model, tokenizer, examples, Checkpoint(tmp_path / "run.pt", 0, key="k"), crash_at=crash_at)
    saved = torch.load(tmp_path / "run.pt", weights_only=True)  # plain tensors and containers only
    assert saved["loop"]["step"] == crash_at and saved["method"]["store"]
    got, _, env, res = _run(make_model, tokenizer, examples, Checkpoint(tmp_path / "run.pt", 0, key="k"))
    for (name, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), name
    assert env.state_dict() == ref_env.state_dict()
    cols = ["step", "epoch", "loss", "ce", "distill", "pg", "single_step", "pt", "reward", "lr", "tokens", "examples"]
    assert res.trace[cols].equals(ref_res.trace[cols])


def test_the_templates_rollout_example_trains(make_model, tokenizer, examples):
    """The commented example in methods/template_method.py, run as written."""
    import importlib.util

    path = REPO / "methods" / "template_method.py"
    spec = importlib.util.spec_from_file_location("template_for_test", path)
    template = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template)
    text = path.read_text()
    lines = text[text.index("#     train_on, inner_steps"):].splitlines()
    body = "\n".join("    " + re.sub(r"^\s*# {5}", "", line) for line in lines if line.strip().startswith("#"))
    ns = {"Base": template.Method, "Encoded": Encoded, "Term": M.Term, "torch": torch}
    exec(f"class Rolling(Base):\n{body}\n", ns)
    student, teacher = make_model(seed=1), make_model(seed=2, hidden_size=32)
    before = copy.deepcopy(student.state_dict())
    env = Rollouts(student, teacher, corpus=examples, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                   max_length=512, max_new_tokens=4, precision="fp32", seed=3)
    res = train(student, examples, BUDGET, seed=7, pad_id=tokenizer.pad_token_id, method=ns["Rolling"](), rollouts=env)
    assert res.stats["train_steps"] == 8 and np.isfinite(res.trace["loss"]).all()
    assert any(not torch.equal(a, b) for a, b in zip(before.values(), student.state_dict().values()))
