"""methods/cpd.py (and its curriculum baselines pocl, curriculum_kd), driven as the engine does.

The engine calls `epoch_indices(epoch, ctx)` once per epoch, then for every step sets
`progress.values = method.schedule(progress)` before `method.loss(...)`.
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench import curriculum as C
from kdbench import divergences as D
from kdbench.errors import UserError
from kdbench.method import EpochContext, Progress, get, instantiate, slug

METHODS = Path(__file__).resolve().parent.parent / "methods"
CPD = sys.modules[get("cpd", METHODS).__module__]  # methods/cpd.py: its readings and helpers


def make(name="cpd", **params):
    cls = get(name, METHODS)
    return instantiate(cls, params, name)


def run_schedule(method, n_epochs, epoch_steps):
    """(epoch, step, values) for every step of a run whose epochs have the given lengths."""
    total = sum(epoch_steps)
    out, step = [], 0
    for e, n in enumerate(epoch_steps):
        for s in range(n):
            p = Progress(epoch=e, n_epochs=n_epochs, step=step, total_steps=total,
                         epoch_step=s, epoch_steps=n)
            out.append((e, step, method.schedule(p)))
            step += 1
    return out


def loss_at(method, progress, s, t, mask):
    progress.values = method.schedule(progress)
    return method.loss(s, t, mask, progress)


# --- schedules --------------------------------------------------------------------------

def test_epoch_schedule_endpoints_and_values():
    m = make()
    vals = [m.schedule(Progress(epoch=e, n_epochs=5)) for e in range(5)]
    # α = 0.9 − 0.8 π, τ = 1 + π with π = e/4
    np.testing.assert_allclose([v["alpha"] for v in vals], [0.9, 0.7, 0.5, 0.3, 0.1])
    np.testing.assert_allclose([v["temperature"] for v in vals], [1.0, 1.25, 1.5, 1.75, 2.0])
    np.testing.assert_allclose([v["curriculum_progress"] for v in vals], [0, .25, .5, .75, 1])
    # constant within an epoch, whatever the step
    assert m.schedule(Progress(epoch=2, n_epochs=5, epoch_step=7, epoch_steps=9))["alpha"] == \
        pytest.approx(0.5)


def test_step_schedule_interpolates_within_epochs():
    m = make(granularity="step")
    trace = run_schedule(m, 3, [2, 4, 5])
    pis = [v["curriculum_progress"] for _, _, v in trace]
    # epoch 0: (0 + s/2)/2; epoch 1: (1 + s/4)/2; epoch 2: clipped to 1
    np.testing.assert_allclose(pis, [0, .25, .5, .625, .75, .875, 1, 1, 1, 1, 1])
    assert trace[0][2]["alpha"] == pytest.approx(0.9) and trace[0][2]["temperature"] == 1.0
    assert trace[-1][2]["alpha"] == pytest.approx(0.1) and trace[-1][2]["temperature"] == 2.0
    # one epoch: π is the fraction of the epoch done
    assert m.curriculum_progress(Progress(epoch=0, n_epochs=1, epoch_step=3, epoch_steps=4)) == 0.75


@pytest.mark.parametrize("granularity", ["epoch", "step"])
def test_schedules_are_monotone(granularity):
    m = make(granularity=granularity)
    trace = run_schedule(m, 6, [3, 5, 8, 10, 13, 17])      # curriculum epochs grow
    a = np.array([v["alpha"] for _, _, v in trace])
    t = np.array([v["temperature"] for _, _, v in trace])
    assert np.all(np.diff(a) <= 1e-12) and np.all(np.diff(t) >= -1e-12)
    assert a[0] == pytest.approx(0.9) and a[-1] == pytest.approx(0.1)
    assert t[0] == pytest.approx(1.0) and t[-1] == pytest.approx(2.0)
    assert np.all((a >= 0.1 - 1e-12) & (a <= 0.9 + 1e-12))


# --- ablation variants -------------------------------------------------------------------

def ctx_for(d, n_epochs=4, seed=3):
    return EpochContext(n_examples=len(d), n_epochs=n_epochs, seed=seed, difficulty=np.asarray(d))


D20 = np.random.default_rng(11).permutation(20).astype(float)    # distinct difficulties 0..19


def test_full_variant_uses_uniform_subsets_shuffled_within_epoch():
    m = make()
    assert type(m).uses_difficulty and m.uses_difficulty and slug({}, type(m)) == "default"
    ctx = ctx_for(D20, n_epochs=4)
    expected = C.uniform_difficulty_subsets(C.percentile(D20), 4, 0.6)
    for e in range(4):
        idx = m.epoch_indices(e, ctx)
        assert idx.dtype == np.int64
        assert sorted(idx.tolist()) == sorted(expected[e].tolist())
    # d = permutation of 0..19 (percentile (d)/19): μ_start = 5.5/19, μ_all = 9.5/19, targets
    # (5.5, 6.83, 8.17, 9.5)/19 → prefix mean (k−1)/38 reaches them at k = 12, 15, 18, 20
    assert [len(m.epoch_indices(e, ctx)) for e in range(4)] == [12, 15, 18, 20]
    assert set(D20[m.epoch_indices(0, ctx)].tolist()) == set(range(12))
    # the aggressive point: raw scale, start fraction 0.2 (d is uniform here: same as 0.2 on
    # the percentile scale): μ_start = 1.5 → k = 4, 10, 15, 20
    aggressive = make(scale="raw", start_fraction=0.2)
    assert [len(aggressive.epoch_indices(e, ctx)) for e in range(4)] == [4, 10, 15, 20]
    # shuffled within the epoch, deterministically
    assert np.array_equal(m.epoch_indices(1, ctx), m.epoch_indices(1, ctx))
    assert not np.array_equal(m.epoch_indices(3, ctx), expected[3])
    assert np.array_equal(make(shuffle=False).epoch_indices(3, ctx), expected[3])


def test_no_curriculum_trains_on_all_data_with_the_epoch_schedule():
    m = make(curriculum="none")
    assert m.uses_difficulty is False                       # the DAG may skip scoring
    assert m.epoch_indices(0, EpochContext(n_examples=5, n_epochs=3, seed=0)) is None
    # granularity epoch: π = e/(E−1), whatever the step
    v = m.schedule(Progress(epoch=1, n_epochs=3, step=5, total_steps=12))
    assert v["curriculum_progress"] == 0.5 and v["alpha"] == pytest.approx(0.5)


def test_pure_target_schedule_trains_on_all_data_and_follows_step_fraction():
    m = make(curriculum="none", granularity="step")
    assert m.uses_difficulty is False
    assert m.epoch_indices(0, EpochContext(n_examples=5, n_epochs=3, seed=0)) is None
    v = m.schedule(Progress(epoch=0, n_epochs=3, step=3, total_steps=12))
    assert v["curriculum_progress"] == 0.25
    assert v["alpha"] == pytest.approx(0.7) and v["temperature"] == pytest.approx(1.25)
    v = m.schedule(Progress(epoch=2, n_epochs=3, step=12, total_steps=12))
    assert v["alpha"] == pytest.approx(0.1) and v["temperature"] == pytest.approx(2.0)


def test_no_mixing_schedule_and_no_temperature_schedule():
    fixed_alpha = make(alpha_start=0.1)
    fixed_tau = make(tau_end=1.0)
    for e in range(4):
        p = Progress(epoch=e, n_epochs=4)
        assert fixed_alpha.schedule(p)["alpha"] == pytest.approx(0.1)
        assert fixed_tau.schedule(p)["temperature"] == 1.0
    assert fixed_alpha.schedule(Progress(epoch=0, n_epochs=4))["temperature"] == 1.0
    assert fixed_tau.schedule(Progress(epoch=0, n_epochs=4))["alpha"] == pytest.approx(0.9)
    assert slug({"alpha_start": 0.1}, type(fixed_alpha)) == "alpha_start-0.1"


def test_stages_variant_uses_pocl_stages():
    m = make(curriculum="stages", shuffle=False)
    ctx = ctx_for(D20, n_epochs=4)
    assert [len(m.epoch_indices(e, ctx)) for e in range(4)] == [5, 10, 15, 20]
    assert set(D20[m.epoch_indices(0, ctx)].tolist()) == {0, 1, 2, 3, 4}


def test_hard_first_gives_the_hardest_examples_first():
    m = make(order="hard_first")
    ctx = ctx_for(D20, n_epochs=4)
    assert set(D20[m.epoch_indices(0, ctx)].tolist()) == set(range(8, 20))
    assert len(m.epoch_indices(3, ctx)) == 20


def test_shuffled_difficulty_keeps_sizes_and_depends_on_seed():
    m = make(order="shuffled")
    d = np.random.default_rng(2).random(60)
    sizes = [len(x) for x in C.uniform_difficulty_subsets(C.percentile(d), 4, 0.6)]
    a = [m.epoch_indices(e, ctx_for(d, 4, seed=1)) for e in range(4)]
    assert [len(x) for x in a] == sizes
    first_easy = set(C.uniform_difficulty_subsets(d, 4, 0.6)[0].tolist())
    assert set(a[0].tolist()) != first_easy
    b = m.epoch_indices(0, ctx_for(d, 4, seed=2))
    assert set(b.tolist()) != set(a[0].tolist())


def test_missing_difficulty_raises_user_error():
    ctx = EpochContext(n_examples=5, n_epochs=3, seed=0, difficulty=None)
    for name in ("cpd", "pocl", "curriculum_kd"):
        with pytest.raises(UserError, match="score_difficulty"):
            make(name).epoch_indices(0, ctx)
    with pytest.raises(UserError, match="entries but the training set has"):
        make().epoch_indices(0, EpochContext(n_examples=5, n_epochs=3, seed=0,
                                             difficulty=np.zeros(4)))


def test_bad_parameters_raise_user_errors():
    for bad in ({"alpha_end": 0.0}, {"alpha_end": -0.1}, {"tau_end": 0.0},
                {"granularity": "batch"}, {"curriculum": "spiral"}, {"order": "random"},
                {"start_fraction": 0.0}, {"n_stages": 0}, {"beta": 1}):
        with pytest.raises(UserError):
            make(**bad)


# --- loss -------------------------------------------------------------------------------

def manual_skew(s, t, mask, alpha, tau):
    """τ² KL(p ‖ α p + (1−α) q), token mean, in float64 without kdbench.divergences."""
    p = torch.softmax(t.double() / tau, -1)
    q = torch.softmax(s.double() / tau, -1)
    m = alpha * p + (1 - alpha) * q
    kl = (p * (p.log() - m.log())).sum(-1)
    return (kl[mask].mean() * tau ** 2).item()


def test_default_loss_is_forward_kl_to_the_scheduled_interpolation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g) * 2
    mask = torch.tensor([[True, True, False], [True, False, True]])
    m = make()
    assert m.target == "interpolated"
    for e, (alpha, tau) in enumerate([(0.9, 1.0), (0.5, 1.5), (0.1, 2.0)]):
        p = Progress(epoch=e, n_epochs=3)
        got = loss_at(m, p, s, t, mask)
        assert got.dtype == torch.float32 and got.dim() == 0
        assert got.item() == pytest.approx(manual_target(s, t, mask, alpha, tau, "interpolated"), rel=1e-5)


def extreme_logits(B=2, T=3, V=16):
    """Student certain of token 0 (logits ±1e4), teacher confident on token 1."""
    s = torch.full((B, T, V), -1e4)
    s[..., 0] = 1e4
    t = torch.zeros(B, T, V)
    t[..., 1] = 8.0
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 2] = False
    return s, t, mask


def logit_grad(fn, s, *args, **kw):
    s = s.clone().requires_grad_(True)
    fn(s, *args, **kw).backward()
    return s.grad


def test_skl_logit_gradient_is_bounded_by_tau_one_minus_alpha():
    # Per token, ∂L/∂z_j = −τ(1−α)(r_j − q_j Σ r), r = p q / (α p + (1−α) q) ≤ α q + (1−α) p,
    # so |∂L/∂z_j| ≤ τ(1−α); the token mean divides by the number of masked tokens n.
    m = make(target="skl")
    g = torch.Generator().manual_seed(1)
    cases = [extreme_logits()]
    for scale in (1.0, 30.0, 1e3):
        s = torch.randn(2, 3, 16, generator=g) * scale
        cases.append((s, torch.randn(2, 3, 16, generator=g) * scale, torch.ones(2, 3, dtype=torch.bool)))
    for s, t, mask in cases:
        n = int(mask.sum())
        for e in range(5):
            p = Progress(epoch=e, n_epochs=5)
            v = m.schedule(p)
            p.values = v
            grad = logit_grad(lambda x: m.loss(x, t, mask, p), s)
            assert torch.isfinite(grad).all()
            assert grad.abs().max().item() <= v["temperature"] * (1 - v["alpha"]) / n * (1 + 1e-5)


def test_student_confidently_wrong_fkl_pushes_skl_saturates():
    # Both are bounded at the logit level (forward KL by τ|q − p| ≤ τ); in this case forward
    # KL's gradient is close to its bound τ/n while skl's vanishes: q is one-hot on token 0, so
    # r = p q / m is nonzero only at 0 where q_0 Σ r = r_0, and the loss sits at its ceiling
    # τ² log(1/(α + (1−α) q_1)) ≈ τ² log(1/α) with zero slope.
    m = make(target="skl")
    s, t, mask = extreme_logits()
    n = int(mask.sum())
    for e, (alpha, tau) in enumerate([(0.9, 1.0), (0.1, 2.0)]):
        p = Progress(epoch=e, n_epochs=2)
        p.values = m.schedule(p)
        cpd = logit_grad(lambda x: m.loss(x, t, mask, p), s).abs().max().item()
        fkl = logit_grad(D.forward_kl, s, t, mask, temperature=tau).abs().max().item()
        assert fkl > 0.9 * tau / n
        assert cpd < 1e-3 * fkl
        # closed form: q = one-hot(0), p_0 = 1/(e^{8/τ} + 15); m_0 = α p_0 + 1 − α and
        # m_v = α p_v elsewhere, so KL = p_0 log(p_0/m_0) + (1 − p_0) log(1/α)
        p0 = 1 / (math.exp(8.0 / tau) + 15)
        ceiling = tau ** 2 * (p0 * math.log(p0 / (alpha * p0 + 1 - alpha))
                              + (1 - p0) * math.log(1 / alpha))
        assert m.loss(s, t, mask, p).item() == pytest.approx(ceiling, rel=1e-5)


def test_probability_gradient_fkl_unbounded_skl_bounded():
    # With respect to the student's probabilities q (student logits = log q, τ = 1), forward
    # KL's gradient is −p_v/q_v (+1 from the normalisation) and grows like 1/q_v on the token
    # the teacher likes; the skew's is −(1−α)(p_v/m_v − Σ r) with m_v ≥ α p_v, so it stays
    # below (1−α)/α whatever q. (With respect to log q forward KL's is −p_v, bounded, so
    # the probabilities are where the difference shows.)
    m = make(target="skl", tau_end=1.0)                     # τ = 1 at every π
    V = 8
    t = torch.zeros(1, 1, V)
    t[..., 1] = 10.0                                        # teacher puts ~all mass on token 1
    mask = torch.ones(1, 1, dtype=torch.bool)
    fkl_grads = []
    for eps in (1e-2, 1e-4, 1e-6):
        q = torch.full((1, 1, V), (1 - eps) / (V - 1))
        q[..., 1] = eps
        q.requires_grad_(True)
        D.forward_kl(q.log(), t, mask).backward()
        fkl_grads.append(q.grad.abs().max().item())
        for e in range(2):                                  # α = 0.9 and α = 0.1
            p = Progress(epoch=e, n_epochs=2)
            p.values = m.schedule(p)
            alpha = p.values["alpha"]
            qq = q.detach().clone().requires_grad_(True)
            m.loss(qq.log(), t, mask, p).backward()
            assert qq.grad.abs().max().item() <= (1 - alpha) / alpha * (1 + 1e-4)
    p1 = math.exp(10) / (math.exp(10) + V - 1)
    np.testing.assert_allclose(fkl_grads, [p1 / e - 1 for e in (1e-2, 1e-4, 1e-6)], rtol=1e-3)
    assert fkl_grads[-1] > 1e5 * (1 - 0.9) / 0.9


# --- the abstract's claims as properties ---------------------------------------------------
# One test per claim that constrains the method. Each runs on the default and on the readings
# that meet the abstract (READINGS_OK); test_the_properties_can_fail shows each one failing
# where it should: the old default (skl) fails (b) and (c), srkl too, the curriculum's
# controls fail (a) and (f).

READINGS_OK = ("mixture", "interpolated")


def test_the_default_is_a_reading_that_meets_the_abstract():
    assert make().target in READINGS_OK


def profiles(n=500, seed=0):
    """Difficulty profiles of different shapes, (n,) each: uniform, convex (most examples near
    the top, like a rescaled rank fusion), reciprocal-rank fusion as POCL scores it, bimodal,
    and five tied levels."""
    rng = np.random.default_rng(seed)
    r1, r2 = rng.permutation(n), rng.permutation(n)
    return {"uniform": rng.random(n), "convex": 1 - np.exp(-8 * rng.random(n)),
            "rrf": -(1 / (r1 + 61) + 1 / (r2 + 61)),
            "bimodal": np.concatenate([rng.normal(0, .1, n // 2), rng.normal(1, .1, n - n // 2)]),
            "ties": rng.integers(0, 5, n).astype(float)}


def epochs_of(m, d, n_epochs, seed=0):
    """The examples of every epoch, as the engine asks for them (None: all data)."""
    ctx = ctx_for(d, n_epochs, seed)
    return [m.epoch_indices(e, ctx) for e in range(n_epochs)]


def uniform_steps_error(m, d, n_epochs):
    """How far the epochs' mean difficulties (on the method's scale) are from equal steps,
    in units of the discreteness allowed: the shortest prefix reaching μ_e overshoots it by at
    most range/|subset|, so two consecutive means may be 2·range/min|subset| off the mean step."""
    x = C.on_scale(d, m.scale)
    subsets = epochs_of(m, d, n_epochs)
    steps = np.diff(C.subset_means(x, subsets))
    allowed = 2 * (x.max() - x.min()) / min(len(s) for s in subsets)
    return float(np.abs(steps - steps.mean()).max() / allowed), steps


@pytest.mark.parametrize("scale", ["percentile", "raw"])
@pytest.mark.parametrize("n_epochs", [2, 5, 20])
def test_a_mean_difficulty_rises_uniformly(scale, n_epochs):
    m = make(scale=scale)
    for name, d in profiles().items():
        err, steps = uniform_steps_error(m, d, n_epochs)
        assert np.all(steps > 0), name
        assert err <= 1.0, name


def broad_student(T=8, V=1024, seed=0):
    """Student logits with a small random spread (q near uniform) and a peaked teacher (N(0, 2²)
    logits, +12 on one random token per row: 0.9 of its mass there on average), float64 (1, T, V)."""
    g = torch.Generator().manual_seed(seed)
    s = 0.1 * torch.randn(1, T, V, generator=g, dtype=torch.float64)
    t = 2 * torch.randn(1, T, V, generator=g, dtype=torch.float64)
    t[0, torch.arange(T), torch.randint(V, (T,), generator=g)] += 12
    return s, t


def random_pair(T=6, V=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(1, T, V, generator=g, dtype=torch.float64),
            3 * torch.randn(1, T, V, generator=g, dtype=torch.float64))


def grad_at(m, progress, s, t, mask=None):
    """∂L/∂z_S (same shape as s) of the method's loss at this progress, and the schedule."""
    progress.values = m.schedule(progress)
    mask = torch.ones(s.shape[:-1], dtype=torch.bool) if mask is None else mask
    return logit_grad(lambda x: m.loss(x, t, mask, progress), s), progress.values


def pulled_towards(m, progress, s, t):
    """Per token (N, V): the distribution the step pulls the student towards, and p, q, α.

    A forward-KL pull at temperature τ towards a distribution r held fixed has the logit
    gradient τ (q − r) (÷ n tokens in the token mean), so r = q − n·∂L/∂z / τ. For a loss of
    another form this r is not a mixture (nor, in general, a distribution)."""
    grad, v = grad_at(m, progress, s, t)
    tau, n = v["temperature"], s.shape[0] * s.shape[1]
    q, p = torch.softmax(s / tau, -1), torch.softmax(t / tau, -1)
    r = q - n * grad / tau
    return r.flatten(0, 1), p.flatten(0, 1), q.flatten(0, 1), v["alpha"]


def distance_to_mixtures(r, p, q, alpha):
    """Largest ℓ1 distance over tokens from r to the nearer of the two teacher/student mixtures
    with the teacher's weight α: in probabilities, α p + (1−α) q, and in logits, ∝ p^α q^(1−α)."""
    arithmetic = alpha * p + (1 - alpha) * q
    geometric = torch.softmax(alpha * p.log() + (1 - alpha) * q.log(), -1)
    return min(float((r - mix).abs().sum(-1).max()) for mix in (arithmetic, geometric))


@pytest.mark.parametrize("target", READINGS_OK)
def test_b_the_mixing_coefficient_is_in_the_target(target):
    m = make(target=target)
    for s, t in (broad_student(), random_pair()):
        for e in range(5):
            r, p, q, alpha = pulled_towards(m, Progress(epoch=e, n_epochs=5), s, t)
            assert distance_to_mixtures(r, p, q, alpha) < 1e-9


def start_vs_kd(m, s, t):
    """Per token at π = 0: cosine of the method's logit gradient with kd's (forward KL at
    τ = 1) and the ratio of their norms, (N,) each."""
    grad, _ = grad_at(m, Progress(epoch=0, n_epochs=20), s, t)
    kd = logit_grad(D.forward_kl, s, t, torch.ones(s.shape[:-1], dtype=torch.bool))
    grad, kd = grad.flatten(0, 1), kd.flatten(0, 1)
    cos = (grad * kd).sum(-1) / (grad.norm(dim=-1) * kd.norm(dim=-1))
    return cos, grad.norm(dim=-1) / kd.norm(dim=-1)


@pytest.mark.parametrize("target", READINGS_OK)
def test_c_teacher_dominated_at_the_start(target):
    s, t = broad_student()
    assert torch.softmax(t, -1).max(-1).values.min() > 0.5        # the teacher is peaked
    cos, ratio = start_vs_kd(make(target=target), s, t)
    assert cos.min() >= 0.9 and ratio.min() >= 0.5


@pytest.mark.parametrize("target", READINGS_OK)
def test_d_student_informed_at_the_end(target):
    m = make(target=target)
    last = Progress(epoch=19, n_epochs=20)
    for s, t in (broad_student(), random_pair()):
        r, p, q, alpha = pulled_towards(m, last, s, t)
        assert 1 - alpha >= 0.5                                  # the student's weight in r
        assert distance_to_mixtures(r, p, q, alpha) < 1e-9      # ... and r is that mixture


def adversarial(dtype):
    """Logits that stress a gradient bound, (B, T, V) student and teacher: magnitudes 1e4, a
    student certain of the wrong token, a padded vocabulary (−inf in both), a broad student."""
    g = torch.Generator().manual_seed(3)
    huge = (1e4 * torch.randn(2, 3, 16, generator=g), 1e4 * torch.randn(2, 3, 16, generator=g))
    wrong = extreme_logits()[:2]
    pad_s, pad_t = 5 * torch.randn(1, 4, 16, generator=g), torch.zeros(1, 4, 16)
    pad_t[..., 3] = 30.0
    pad_s[..., 12:] = pad_t[..., 12:] = -math.inf
    broad = broad_student(V=64)
    return [(s.to(dtype), t.to(dtype)) for s, t in (huge, wrong, (pad_s, pad_t), broad)]


GRADIENT_BOUND = {  # Σ_j |∂L/∂z_j| per token (methods/cpd.py, "Gradients")
    "mixture": lambda alpha, tau: 2 * tau * alpha,
    "interpolated": lambda alpha, tau: 2 * tau,
    "skl": lambda alpha, tau: 2 * tau * (1 - alpha),
}


@pytest.mark.parametrize("target", [*READINGS_OK, "skl"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_e_gradients_within_their_closed_form_bound(target, dtype):
    m = make(target=target)
    tight = 0.0
    for s, t in adversarial(dtype):
        n = s.shape[0] * s.shape[1]
        for e in range(5):
            grad, v = grad_at(m, Progress(epoch=e, n_epochs=5), s, t)
            assert torch.isfinite(grad).all()
            per_token = n * grad.double().abs().sum(-1)
            bound = GRADIENT_BOUND[target](v["alpha"], v["temperature"])
            assert per_token.max().item() <= bound * (1 + 1e-2 if dtype == torch.bfloat16 else 1 + 1e-6)
            tight = max(tight, per_token.max().item() / bound)
    if target != "skl":  # a bound that some of these logits nearly reach
        assert tight > 0.9


@pytest.mark.parametrize("n_epochs", [2, 5, 20])
def test_f_at_least_ten_percent_fewer_examples_than_kd(n_epochs):
    for name, d in profiles().items():
        for m in (make(), make(scale="raw")):
            seen = sum(len(x) for x in epochs_of(m, d, n_epochs))
            assert seen <= 0.9 * len(d) * n_epochs, name


def test_the_properties_can_fail():
    s, t = broad_student()
    # (b) and (c): the old default, skew KL with the mixture on the student's side, pulls
    # towards p whatever α and starts with a gradient about 1/1,000 of kd's, nearly orthogonal
    # to it; skew reverse KL starts weak too
    for target, max_cos, max_ratio in (("skl", 0.3, 0.01), ("srkl", 0.9, 0.05)):
        m = make(target=target)
        cos, ratio = start_vs_kd(m, s, t)
        assert cos.mean() < max_cos and ratio.max() < max_ratio, target
        r, p, q, alpha = pulled_towards(m, Progress(epoch=0, n_epochs=20), s, t)
        assert distance_to_mixtures(r, p, q, alpha) > 0.5, target
    # (d): a schedule that stays teacher-dominated
    r, p, q, alpha = pulled_towards(make(alpha_end=0.9), Progress(epoch=19, n_epochs=20), s, t)
    assert 1 - alpha < 0.5
    # (a): POCL's stages hold the subset for two epochs, then jump
    d = profiles()["uniform"]
    assert uniform_steps_error(make(curriculum="stages"), d, 8)[0] > 1
    # (f): without a curriculum every epoch sees all the data
    assert all(x is None for x in epochs_of(make(curriculum="none"), d, 5))
    # (e): forward KL at the end's α and τ breaks the mixture's bound on a confidently wrong student
    s_wrong, t_wrong, mask = extreme_logits()
    kd = int(mask.sum()) * logit_grad(D.forward_kl, s_wrong, t_wrong, mask, temperature=2.0)
    assert kd.abs().sum(-1).max().item() > GRADIENT_BOUND["mixture"](0.1, 2.0)


# --- the curriculum baselines -----------------------------------------------------------

def test_pocl_stage_schedule_and_data():
    m = make("pocl")
    assert type(m).uses_difficulty
    vals = [m.schedule(Progress(epoch=e, n_epochs=8)) for e in range(8)]
    np.testing.assert_allclose([v["stage"] for v in vals], [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_allclose([v["temperature"] for v in vals[::2]], [1, 4 / 3, 5 / 3, 2])
    np.testing.assert_allclose([v["kd_ratio"] for v in vals[::2]], [0.7, 0.8, 0.9, 1.0])
    ctx = ctx_for(D20, n_epochs=8)
    assert [len(m.epoch_indices(e, ctx)) for e in range(8)] == [5, 5, 10, 10, 15, 15, 20, 20]
    assert set(D20[m.epoch_indices(2, ctx)].tolist()) == set(range(10))
    # loss: forward KL at the stage temperature
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(1, 4, 5, generator=g), torch.randn(1, 4, 5, generator=g)
    mask = torch.ones(1, 4, dtype=torch.bool)
    p = Progress(epoch=7, n_epochs=8)
    assert loss_at(m, p, s, t, mask).item() == pytest.approx(
        D.forward_kl(s, t, mask, temperature=2.0).item())
    assert loss_at(m, p, s, t, mask).item() == pytest.approx(manual_skew(s, t, mask, 0.0, 2.0), rel=1e-5)


def test_curriculum_kd_uses_cpd_subsets_with_plain_forward_kl():
    m = make("curriculum_kd")
    ctx = ctx_for(D20, n_epochs=4)
    assert [len(m.epoch_indices(e, ctx)) for e in range(4)] == [12, 15, 18, 20]
    cpd = make()
    assert all(set(m.epoch_indices(e, ctx).tolist()) == set(cpd.epoch_indices(e, ctx).tolist())
               for e in range(4))
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(1, 4, 5, generator=g), torch.randn(1, 4, 5, generator=g)
    mask = torch.ones(1, 4, dtype=torch.bool)
    for e in range(4):
        assert loss_at(m, Progress(epoch=e, n_epochs=4), s, t, mask).item() == pytest.approx(
            manual_skew(s, t, mask, 0.0, 1.0), rel=1e-5)


# --- the target's readings ----------------------------------------------------------------

def manual_target(s, t, mask, alpha, tau, target):
    """τ² × token mean of each reading, in float64, straight from the formulas (α: teacher)."""
    zs, zt = s.double() / tau, t.double() / tau
    p, q = torch.softmax(zt, -1), torch.softmax(zs, -1)
    if target == "mixture":
        a, b = alpha * p + (1 - alpha) * q, q
    elif target == "skl":
        a, b = p, alpha * p + (1 - alpha) * q
    elif target == "srkl":
        a, b = q, alpha * p + (1 - alpha) * q
    else:
        a, b = torch.softmax(alpha * zt + (1 - alpha) * zs, -1), q
    kl = (a * (a.log() - b.log())).sum(-1)
    return (kl[mask].mean() * tau ** 2).item()


@pytest.mark.parametrize("target", ["mixture", "interpolated", "skl", "srkl"])
def test_each_target_reading_is_its_formula_on_the_schedule(target):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g) * 2
    mask = torch.tensor([[True, False, True], [True, True, True]])
    m = make(target=target)
    for e, (alpha, tau) in enumerate([(0.9, 1.0), (0.5, 1.5), (0.1, 2.0)]):
        got = loss_at(m, Progress(epoch=e, n_epochs=3), s, t, mask).item()
        assert got == pytest.approx(manual_target(s, t, mask, alpha, tau, target), rel=1e-5)


def test_interpolated_target_gradient_is_tau_times_q_minus_r():
    # r is detached, so ∂/∂z_S of τ² KL(r ‖ q) per token is τ (q − r); token mean over 2 tokens
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(1, 2, 6, generator=g), torch.randn(1, 2, 6, generator=g)
    mask = torch.ones(1, 2, dtype=torch.bool)
    m, tau, alpha = make(target="interpolated"), 1.5, 0.5
    p = Progress(epoch=1, n_epochs=3)
    grad = logit_grad(lambda x: loss_at(m, p, x, t, mask), s)
    q = torch.softmax(s / tau, -1)
    r = torch.softmax((alpha * t + (1 - alpha) * s) / tau, -1)
    np.testing.assert_allclose(grad.numpy(), (tau * (q - r) / 2).numpy(), rtol=1e-4, atol=1e-6)


def test_target_endpoints_and_degenerate_alphas():
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(1, 3, 5, generator=g), torch.randn(1, 3, 5, generator=g)
    mask = torch.ones(1, 3, dtype=torch.bool)
    last = Progress(epoch=1, n_epochs=2)
    # the mixed targets at α = 1 (TAID's end point) are forward KL
    for target in ("mixture", "interpolated"):
        m = make(target=target, alpha_start=0.4, alpha_end=1.0, tau_end=1.0)
        assert loss_at(m, last, s, t, mask).item() == pytest.approx(
            D.forward_kl(s, t, mask).item(), rel=1e-6)
    for bad in ({"target": "srkl", "alpha_end": 0.0}, {"target": "interpolated", "alpha_end": 0.0},
                {"target": "mixture", "alpha_start": 0.0}, {"target": "skl", "alpha_start": 1.0},
                {"target": "skew_fkl"}, {"target": "jsd"}):
        with pytest.raises(UserError):
            make(**bad)


# --- controls -----------------------------------------------------------------------------

def test_budget_matched_kd_draws_a_fresh_random_fraction_every_epoch():
    kd = make("kd")
    assert kd.epoch_indices(0, EpochContext(n_examples=10, n_epochs=3, seed=0)) is None
    m = make("kd", data_fraction=0.8)
    ctx = EpochContext(n_examples=50, n_epochs=3, seed=7)
    epochs = [m.epoch_indices(e, ctx) for e in range(3)]
    assert [len(x) for x in epochs] == [40, 40, 40]
    assert len({tuple(sorted(x.tolist())) for x in epochs}) == 3
    # the same number of example-epochs as default cpd (percentile scale, start 0.6): 0.8
    cpd_ctx = ctx_for(np.random.default_rng(0).random(50), n_epochs=3)
    cpd = make()
    assert C.data_fraction([cpd.epoch_indices(e, cpd_ctx) for e in range(3)], 50) == \
        pytest.approx(C.data_fraction(epochs, 50), abs=0.02)
    with pytest.raises(UserError, match="data_fraction"):
        make("kd", data_fraction=0.0)


def test_default_ablation_grid_holds_the_controls():
    import yaml

    from kdbench import config

    cfg = config.validate(yaml.safe_load((METHODS.parent / "config" / "default.yaml").read_text()))
    rows = config.ablation_variants(cfg)
    params = {row: (method, p) for row, (method, _, p) in rows.items()}
    assert params["full"] == ("cpd", {})
    # budget-matched kd: the fraction cpd's defaults see, (1 + start_fraction)/2
    method, p = params["kd_budget_matched"]
    assert method == "kd" and p["data_fraction"] == pytest.approx((1 + make().start_fraction) / 2)
    assert params["shuffled_difficulty"] == ("cpd", {"order": "shuffled"})
    assert params["no_curriculum"] == ("cpd", {"curriculum": "none"})
    assert params["target_schedule_only"] == ("cpd", {"curriculum": "none", "granularity": "step"})
    assert params["aggressive"] == ("cpd", {"scale": "raw", "start_fraction": 0.2})
    # the target rows name their reading, and the default is none of them
    targets = {row: p["target"] for row, (_, p) in params.items() if "target" in p}
    assert targets == {f"target_{t}": t for t in set(CPD.TARGETS) - {make().target}}
    # no_mixing_schedule holds α at the default's end value
    assert params["no_mixing_schedule"][1] == {"alpha_start": make().alpha_end}
    # every row is a distinct run, and the kd rows are runs of kd
    assert len({(m, slug_) for m, slug_, _ in rows.values()}) == len(rows)
    assert {(r.method, r.variant) for r in config.runs(cfg)} >= {("kd", "data_fraction-0.8")}


# --- POCL as published: stages as separate runs, any base divergence -----------------------

def test_pocl_restarts_at_every_stage_and_takes_any_base():
    m = make("pocl")
    assert m.restarts(32) == [8, 16, 24]                # 8 epochs per stage, as published
    assert m.restarts(8) == [2, 4, 6]
    assert m.restarts(3) == [1, 2]                      # compressed: stages 0, 1, 3
    assert make("pocl", restart=False).restarts(32) == []
    g = torch.Generator().manual_seed(8)
    s, t = torch.randn(2, 3, 6, generator=g), torch.randn(2, 3, 6, generator=g)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    p = Progress(epoch=3, n_epochs=8)                    # stage 1: τ = 4/3
    srkl = make("pocl", base="srkl")
    # SRKL + POCL: KL(q ‖ 0.1 q + 0.9 p), i.e. teacher weight 0.9 in the mixture
    assert loss_at(srkl, p, s, t, mask).item() == pytest.approx(
        manual_target(s, t, mask, 0.9, 4 / 3, "srkl"), rel=1e-5)
    assert loss_at(make("pocl"), p, s, t, mask).item() == pytest.approx(
        manual_target(s, t, mask, 1.0, 4 / 3, "mixture"), rel=1e-5)   # kd: α = 1 is forward KL
    with pytest.raises(UserError, match="base"):
        make("pocl", base="mse")


ENGINE_BUDGET = {"epochs": 4, "batch_size": 8, "grad_accum": 1, "lr": 1e-3, "min_lr_ratio": 0.1,
                 "warmup": 0.1, "weight_decay": 0.0, "grad_clip": 1.0, "loss_on": "response",
                 "precision": "fp32", "bucket_window": 2, "selection": "best"}


def test_engine_restarts_from_the_segment_best_with_a_fresh_schedule(tokenizer, records, make_model):
    from kdbench.data import encode
    from kdbench.method import Method as Base
    from kdbench.train import train

    class TwoStages(Base):  # all data every epoch, a restart before epoch 2
        def loss(self, student_logits, teacher_logits, mask, progress):
            return D.zero(student_logits)

        def restarts(self, n_epochs):
            return [2]

    model = make_model(seed=3)
    seen, loaded = [], []

    def validate(m):
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return {"val_loss": 1.0, "val_rouge_l": [10.0, 30.0, 20.0, 15.0][len(seen) - 1]}

    load = model.load_state_dict
    model.load_state_dict = lambda sd, *a, **kw: loaded.append(sd) or load(sd, *a, **kw)
    res = train(model, encode(tokenizer, records[:24], max_length=512), ENGINE_BUDGET, seed=0,
                pad_id=tokenizer.pad_token_id, method=TwoStages(), validate=validate)
    # the second stage starts from the first stage's best epoch (1) ...
    assert all(torch.equal(loaded[0][k], seen[1][k]) for k in seen[1])
    # ... with a fresh warm-up + cosine: the same learning rates as the first stage
    lr = res.trace.groupby("epoch")["lr"].apply(list)
    assert lr[0] + lr[1] == lr[2] + lr[3]
    # and the final weights are the best of the last stage (epoch 2), not the run's best (1)
    assert res.stats["selected_epoch"] == 2
    assert all(torch.equal(model.state_dict()[k], seen[2][k]) for k in seen[2])
