"""DistiLLM-2 (methods/distillm2.py) and the data it trains on (train_on = "pairs"): the two
loss terms pinned by hand and in direction, an independent numpy computation of the loss and
its gradient, the batches of `kdbench.onpolicy.Pairs`, the engine passing `from_student`, and
the student_samples stage."""
import functools
import math

import numpy as np
import pytest
import torch

from kdbench import divergences as D
from kdbench import io
from kdbench import method as M
from kdbench.data import collate, encode
from kdbench.errors import UserError
from kdbench.onpolicy import Pairs
from kdbench.paths import Paths
from kdbench.train import train

METHODS = M.discover()
DL2 = METHODS["distillm2"]
P3, Q3 = [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]  # teacher p, student q of one token
ONE = torch.ones(1, 1, dtype=torch.bool)


def method(**params):
    return M.instantiate(DL2, params, "distillm2")


def run(meth, s, t, mask, from_student=None, fraction=0.3):
    progress = M.Progress(step=round(100 * fraction), total_steps=100)
    progress.values = meth.schedule(progress)
    return meth.loss(s, t, mask, progress, from_student=from_student)


def logits(*probs):
    return torch.log(torch.tensor([probs], dtype=torch.float64))


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def mix(w, a, b):
    return [w * x + (1 - w) * y for x, y in zip(a, b)]


# --- the loss ----------------------------------------------------------------------------------

def test_constants_are_the_references():
    m = method()
    assert (m.alpha, m.beta, m.gradual_beta, m.temperature) == (0.1, 1.0, False, 1.0)
    assert DL2.train_on == "pairs" and DL2.starts_from == "sft" and DL2.needs_teacher
    # no cross-entropy in the reference: kd_ratio 1 whatever distill.kd_ratio says
    assert m.schedule(M.Progress()) == {"kd_ratio": 1.0, "student_weight": 1.0}


def test_each_term_by_hand_on_its_own_response():
    s, t = logits(Q3).requires_grad_(), logits(P3)
    teacher_row = run(method(), s, t, ONE, from_student=torch.tensor([[False]]))
    student_row = run(method(), s, t, ONE, from_student=torch.tensor([[True]]))
    assert teacher_row.item() == pytest.approx(kl(P3, mix(0.1, P3, Q3)), rel=1e-9)  # KL(p ‖ 0.1p + 0.9q)
    assert student_row.item() == pytest.approx(kl(Q3, mix(0.1, Q3, P3)), rel=1e-9)  # KL(q ‖ 0.1q + 0.9p)
    assert run(method(), s, t, ONE).item() == teacher_row.item()  # no from_student: the teacher's rows


def test_on_teacher_responses_q_rises_towards_p_on_student_responses_it_is_pushed_down():
    s = logits(Q3).requires_grad_()
    t = logits(P3)
    (g_teacher,) = torch.autograd.grad(run(method(), s, t, ONE, torch.tensor([[False]])), s)
    (g_student,) = torch.autograd.grad(run(method(), s, t, ONE, torch.tensor([[True]])), s)
    # token 0: the teacher's likely token (p 0.7 > q 0.2); gradient descent raises its logit
    assert g_teacher[0, 0, 0] < 0
    # token 2: what the student over-produces (q 0.6 > p 0.1), e.g. its own sampled token;
    # on the student's response the loss pushes its likelihood down
    assert g_student[0, 0, 2] > 0
    # and on either response the value falls as q moves towards p
    for own in (False, True):
        values = [run(method(), logits([(1 - w) * a + w * b for a, b in zip(Q3, P3)]), t, ONE,
                      torch.tensor([[own]])).item() for w in (0.0, 0.3, 0.6, 0.9, 1.0)]
        assert all(a > b for a, b in zip(values, values[1:])) and values[-1] == pytest.approx(0, abs=1e-12)


def test_the_reverse_term_holds_the_students_share_of_the_mixture_constant():
    """Same value as skew reverse KL, another gradient: q_j (log(q_j/m_j) − Σ_v q_v log(q_v/m_v))
    with m = 0.1 q + 0.9 p taken as a constant."""
    s, t = logits(Q3).requires_grad_(), logits(P3)
    value = run(method(), s, t, ONE, torch.tensor([[True]]))
    (g,) = torch.autograd.grad(value, s)
    m = mix(0.1, Q3, P3)
    f = [math.log(q / mm) for q, mm in zip(Q3, m)]
    want = [q * (fj - kl(Q3, m)) for q, fj in zip(Q3, f)]
    np.testing.assert_allclose(g[0, 0].numpy(), want, rtol=1e-10)
    plain = D.skew_reverse_kl(s, t, ONE, alpha=0.1)
    (g_plain,) = torch.autograd.grad(plain, s)
    assert plain.item() == pytest.approx(value.item(), rel=1e-12)
    assert (g_plain - g).abs().max() > 1e-3


@pytest.mark.parametrize("beta", [1.0, 0.5, 1.5])
def test_the_terms_are_weighted_two_minus_beta_and_beta(beta):
    s, t = logits(Q3, [0.3, 0.3, 0.4]), logits(P3, [0.5, 0.25, 0.25])
    own = torch.tensor([[False, True]])
    pull = kl(P3, mix(0.1, P3, Q3))
    push = kl([0.3, 0.3, 0.4], mix(0.1, [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]))
    got = run(method(beta=beta), s, t, torch.ones(1, 2, dtype=torch.bool), own).item()
    assert got == pytest.approx((2 - beta) * pull + beta * push, rel=1e-9)


def test_gradual_beta_rises_from_one_to_one_and_a_half_over_the_first_half():
    m = method(gradual_beta=True)
    got = [m.schedule(M.Progress(step=k, total_steps=100))["student_weight"] for k in (0, 25, 50, 100)]
    assert got == pytest.approx([1.0, 1.25, 1.5, 1.5])


def numpy_distillm2(s, t, mask, own, alpha, beta):
    """Value and student-logit gradient of (2−β)·mean_T KL(p ‖ αp + (1−α)q) + β·mean_S KL(q ‖ α sg(q)
    + (1−α)p), T / S the masked tokens of the teacher's / the student's responses, in float64 with
    u_v = q_v ∂L/∂q_v and the softmax chain rule ∂L/∂z_j = u_j − q_j Σ_v u_v."""
    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(t), softmax(s)
    m1, m2 = alpha * p + (1 - alpha) * q, alpha * q + (1 - alpha) * p
    pull, push = (p * np.log(p / m1)).sum(-1), (q * np.log(q / m2)).sum(-1)
    u1 = -(1 - alpha) * p * q / m1
    u2 = q * np.log(q / m2)
    g1, g2 = u1 - q * u1.sum(-1, keepdims=True), u2 - q * u2.sum(-1, keepdims=True)
    T, S = mask & ~own, mask & own
    value = (2 - beta) * pull[T].mean() + beta * push[S].mean()
    grad = (2 - beta) * np.where(T[..., None], g1, 0) / T.sum() + beta * np.where(S[..., None], g2, 0) / S.sum()
    return value, grad


@pytest.mark.parametrize("alpha,beta", [(0.1, 1.0), (0.3, 0.6)])
def test_loss_and_gradient_match_an_independent_numpy_computation(alpha, beta):
    g = np.random.default_rng(2)
    s_np, t_np = 2 * g.standard_normal((4, 6, 13)), 2 * g.standard_normal((4, 6, 13))
    mask = g.random((4, 6)) > 0.25
    own = np.zeros((4, 6), dtype=bool)
    own[2:] = True  # a pairs batch: the teacher's responses, then the student's
    mask[0, 0] = mask[3, 0] = True
    s = torch.tensor(s_np, requires_grad=True)
    value = run(method(alpha=alpha, beta=beta), s, torch.tensor(t_np), torch.tensor(mask), torch.tensor(own))
    value.backward()
    want, grad = numpy_distillm2(s_np, t_np, mask, own, alpha, beta)
    assert value.item() == pytest.approx(want, rel=1e-10)
    np.testing.assert_allclose(s.grad.numpy(), grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("params,word", [({"alpha": 1.5}, "alpha"), ({"beta": 2.5}, "beta"),
                                         ({"gradual_beta": "yes"}, "gradual_beta"),
                                         ({"temperature": -1.0}, "temperature")])
def test_bad_parameters_are_refused_in_one_sentence(params, word):
    with pytest.raises(UserError, match=f"method 'distillm2'.*{word} must be"):
        method(**params)


# --- the data: both responses in every batch ------------------------------------------------

@pytest.fixture(scope="module")
def pair_examples(tokenizer, records):
    rec = records[:10]
    teacher = encode(tokenizer, rec, 512, responses=[r["output"][0] for r in rec])
    student = encode(tokenizer, rec, 512, responses=[r["output"][0][::-1][:20] for r in rec])
    return teacher, student


def test_pairs_rebuild_every_batch_as_the_teachers_then_the_students_responses(pair_examples, tokenizer):
    teacher, student = pair_examples
    pairs = Pairs(teacher, student, pad_id=tokenizer.pad_token_id)
    idx = [3, 0, 7]
    window, row = pairs.window([collate([teacher[i] for i in idx], tokenizer.pad_token_id)], M.Progress(), None)
    assert row == {} and len(window) == 1
    b = window[0]
    pad = tokenizer.pad_token_id
    rows = [tuple(r[r != pad].tolist()) for r in b["input_ids"]]
    assert rows == [tuple(teacher[i].ids) for i in idx] + [tuple(student[i].ids) for i in idx]
    assert b["index"].tolist() == idx + idx
    assert b["from_student"].shape == b["mask"].shape
    assert b["from_student"][:3].sum() == 0 and b["from_student"][3:].all()
    # the loss positions of each half are that half's response tokens
    assert int(b["mask"][3:].sum()) == sum(student[i].n_response for i in idx)
    assert int(b["mask"][:3].sum()) == sum(teacher[i].n_response for i in idx)
    assert pairs.state_dict() == {}


class Recorder:
    """An online stand-in teacher: fixed random logits per token id, remembering what it scored."""

    def __init__(self, vocab):
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
        self.seen = []

    def __call__(self, batch):
        self.seen.append(batch["input_ids"].clone())
        return self.table[batch["input_ids"][batch["mask"]]]


def test_the_engine_trains_on_both_responses_and_passes_from_student(pair_examples, tokenizer, make_model):
    teacher_ex, student_ex = pair_examples
    meth = method()
    calls = []
    loss = meth.loss
    meth.loss = lambda s, t, mask, p, from_student=None: (calls.append((len(mask), from_student.clone())),
                                                           loss(s, t, mask, p, from_student=from_student))[1]
    student = make_model(seed=1)
    before = [p.detach().clone() for p in student.parameters()]
    budget = {"epochs": 1, "batch_size": 5, "grad_accum": 1, "lr": 1e-3, "min_lr_ratio": 0.1, "warmup": 0.0,
              "weight_decay": 0.0, "grad_clip": 1.0, "loss_on": "response", "precision": "fp32", "bucket_window": 1}
    online = Recorder(student.config.vocab_size)
    res = train(student, teacher_ex, budget, seed=0, pad_id=tokenizer.pad_token_id, method=meth, teacher=online,
                kd_ratio=0.5, on_policy=Pairs(teacher_ex, student_ex, pad_id=tokenizer.pad_token_id))
    assert len(calls) == 2 and all(n == len(own) and own.any() and (~own).any() for n, own in calls)
    assert (res.trace["kd_ratio"] == 1.0).all()  # the method's, not the profile's 0.5
    assert res.stats["train_examples"] == 10  # prompts, not sequences
    fed = {tuple(r[r != tokenizer.pad_token_id].tolist()) for batch in online.seen for r in batch}
    assert {tuple(e.ids) for e in teacher_ex + student_ex} <= fed
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


# --- the stage and the DAG ----------------------------------------------------------------------

def test_student_samples_answers_every_training_prompt_from_the_methods_start(tmp_path):
    from kdbench import stages as S
    from kdbench.data import load_records
    from kdbench_cli import prepare_tree, tiny_profile

    cfg = prepare_tree(tmp_path, tiny_profile(tmp_path, methods={"include": ["distillm2"]}),
                       stages=("prepare_data", "train_tokenizer", "init_student"))
    P = Paths(cfg)
    S.student_samples(cfg, "tiny", "pretrained", 0)
    out = P.student_samples("tiny", "pretrained", 0)
    rows = io.read_jsonl(out)
    assert [r["id"] for r in rows] == [r["id"] for r in load_records(P.data("train"))]
    stats = io.read_json(Paths.samples_stats(out))
    assert stats["n"] == len(rows) and stats["gen_wall_s"] > 0 and stats["gen_tokens"] >= len(rows)
    with pytest.raises(UserError, match="unknown start 'init'"):
        S.student_samples(cfg, "tiny", "init", 0)


def test_the_dag_samples_the_student_only_for_pairs_methods(tmp_path):
    import re
    import subprocess
    import sys

    from kdbench_cli import REPO, env, tiny_profile, write_profile

    jobs = {}
    for methods in (["kd", "seqkd", "gkd"], ["distillm2"]):
        cfg = tiny_profile(tmp_path, methods={"include": methods}, training_seeds=2)
        path = write_profile(tmp_path, cfg, f"{methods[0]}.yaml")
        out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory",
                              str(tmp_path), "--configfile", str(path), "--cores", "1"],
                             capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        jobs[methods[0]] = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout[out.stdout.index("Job stats:"):], re.M))
        if methods == ["distillm2"]:  # each seed's run reads its own student's answers, from the SFT start
            assert re.search(r"rule distill:\n\s+input:[^\n]*student_samples/sft/seed0\.jsonl", out.stdout)
    assert "student_samples" not in jobs["kd"]
    assert jobs["distillm2"]["student_samples"] == "2" and jobs["distillm2"]["teacher_samples"] == "1"


def test_runtime_table_shows_the_pre_generation_time_apart_from_training():
    from kdbench import tables as T
    from test_tables import make_runs

    runs = make_runs()
    pregen = {"cpd": [4.0, 5.0, 6.0]}  # seconds sampling before training, per seed
    runs["pregen_wall_s"] = [pregen.get(m, [0, 0, 0])[s] for m, s in zip(runs["method"], runs["seed"])]
    df = T.runtime_table(runs)
    assert df.loc["cpd", "pregen_wall_s_mean"] == pytest.approx(5.0)
    assert df.loc["kd", "pregen_wall_s_mean"] == 0.0
    assert df.loc["cpd", "train_wall_s_mean"] == pytest.approx(88.0)  # not added to the train time
    f = T.format_table(df, "md").set_index("method")
    assert f.loc["cpd", "pre-gen time (s)"] == "5.00" and "Pre-gen time" in " ".join(df.attrs["footnote"])
    runs["pregen_wall_s"] = 0.0  # nothing sampled before training: no column
    assert "pregen_wall_s_mean" not in T.runtime_table(runs).columns
