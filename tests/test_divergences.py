"""kdbench.divergences: direction, closed-form values, masking, dtypes, stability, chunking.

Closed-form values are computed here with plain `math` on hand-written probabilities, so a
swapped direction or a cross-entropy in place of a divergence fails.
"""
import functools
import math

import pytest
import torch

from kdbench import divergences as D
from kdbench.errors import UserError

ALL = {
    "forward_kl": D.forward_kl,
    "reverse_kl": D.reverse_kl,
    "skew_forward_kl": D.skew_forward_kl,
    "skew_reverse_kl": D.skew_reverse_kl,
    "forward_kl_to_mixture": functools.partial(D.forward_kl_to_mixture, alpha=0.3),
    "forward_kl_to_interpolation": functools.partial(D.forward_kl_to_interpolation, alpha=0.3),
    "jensen_shannon": D.jensen_shannon,
    "total_variation": D.total_variation,
}
MIXED_TARGETS = ("forward_kl_to_mixture", "forward_kl_to_interpolation")  # α = 0.3 in ALL
INF = math.inf


# --- helpers ---------------------------------------------------------------------------

def kl(a, b):
    """KL(a ‖ b) of python lists, 0·log 0 = 0."""
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def mix(w, a, b):
    return [w * x + (1 - w) * y for x, y in zip(a, b)]


def softmax(z, tau=1.0):
    e = [math.exp(v / tau) for v in z]
    return [v / sum(e) for v in e]


def geo(w, a, b):
    """The normalised geometric mixture a^w b^(1−w) / Z (0 where either is 0)."""
    g = [x ** w * y ** (1 - w) if x > 0 and y > 0 else 0.0 for x, y in zip(a, b)]
    return [v / sum(g) for v in g]


def as_logits(*rows):
    """Logits (1, len(rows), V) whose softmax is each row of probabilities."""
    return torch.log(torch.tensor([rows], dtype=torch.float64))


def one(fn, q, p, **kw):
    """fn on a single token: student probabilities q, teacher probabilities p."""
    return fn(as_logits(q), as_logits(p), torch.ones(1, 1, dtype=torch.bool), **kw).item()


P2, Q2 = [0.5, 0.5], [0.9, 0.1]
P3, Q3 = [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]


def plain(name, s, t, mask, *, alpha=0.1, beta=0.1, temperature=1.0):
    """Unchunked textbook implementation (probabilities, no log-space tricks)."""
    lq = torch.log_softmax(s / temperature, -1)
    lp = torch.log_softmax(t.detach() / temperature, -1)
    p, q = lp.exp(), lq.exp()
    if name == "forward_kl":
        v = (p * (lp - lq)).sum(-1)
    elif name == "reverse_kl":
        v = (q * (lq - lp)).sum(-1)
    elif name == "skew_forward_kl":
        v = (p * (lp - torch.log(alpha * p + (1 - alpha) * q))).sum(-1)
    elif name == "skew_reverse_kl":
        v = (q * (lq - torch.log(alpha * q + (1 - alpha) * p))).sum(-1)
    elif name == "forward_kl_to_mixture":
        r = alpha * p + (1 - alpha) * q.detach()
        v = (r * (torch.log(r) - lq)).sum(-1)
    elif name == "forward_kl_to_interpolation":
        lr = torch.log_softmax(alpha * lp + (1 - alpha) * lq.detach(), -1)
        v = (lr.exp() * (lr - lq)).sum(-1)
    elif name == "jensen_shannon":
        lm = torch.log(beta * p + (1 - beta) * q)
        v = beta * (p * (lp - lm)).sum(-1) + (1 - beta) * (q * (lq - lm)).sum(-1)
    else:
        v = 0.5 * (p - q).abs().sum(-1)
    return v[mask].mean() * temperature ** 2


def random_inputs(B=2, T=5, V=11, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (2 * torch.randn(B, T, V, generator=g, dtype=dtype)).requires_grad_()
    t = (2 * torch.randn(B, T, V, generator=g, dtype=dtype)).requires_grad_()
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    return s, t, mask


# --- direction and closed forms ---------------------------------------------------------

def test_forward_kl_is_kl_teacher_to_student():
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert one(D.forward_kl, Q2, P2) == pytest.approx(want, rel=1e-9)
    assert one(D.forward_kl, Q3, P3) == pytest.approx(kl(P3, Q3), rel=1e-9)


def test_reverse_kl_is_kl_student_to_teacher():
    want = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert one(D.reverse_kl, Q2, P2) == pytest.approx(want, rel=1e-9)
    assert one(D.reverse_kl, Q3, P3) == pytest.approx(kl(Q3, P3), rel=1e-9)
    assert abs(one(D.reverse_kl, Q2, P2) - one(D.forward_kl, Q2, P2)) > 0.1


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.75])
def test_skew_forward_kl(alpha):
    want = kl(P3, mix(alpha, P3, Q3))  # KL(p ‖ α p + (1−α) q)
    assert one(D.skew_forward_kl, Q3, P3, alpha=alpha) == pytest.approx(want, rel=1e-9)
    wrong = kl(P3, mix(alpha, Q3, P3))  # the mixture weighted the other way
    assert abs(want - wrong) > 1e-3


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.75])
def test_skew_reverse_kl(alpha):
    want = kl(Q3, mix(alpha, Q3, P3))  # KL(q ‖ α q + (1−α) p)
    assert one(D.skew_reverse_kl, Q3, P3, alpha=alpha) == pytest.approx(want, rel=1e-9)
    assert abs(want - kl(P3, mix(alpha, P3, Q3))) > 1e-3


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.75])
def test_forward_kl_to_mixture(alpha):
    want = kl(mix(alpha, P3, Q3), Q3)  # KL(α p + (1−α) q ‖ q): the mixture is the target
    assert one(D.forward_kl_to_mixture, Q3, P3, alpha=alpha) == pytest.approx(want, rel=1e-9)
    assert abs(want - kl(mix(alpha, Q3, P3), Q3)) > 1e-3  # the weights swapped
    assert abs(want - kl(P3, mix(alpha, P3, Q3))) > 1e-3  # the skew: mixture on the student's side


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.75])
def test_forward_kl_to_interpolation(alpha):
    want = kl(geo(alpha, P3, Q3), Q3)  # KL(r ‖ q), r ∝ p^α q^(1−α)
    assert one(D.forward_kl_to_interpolation, Q3, P3, alpha=alpha) == pytest.approx(want, rel=1e-9)
    assert abs(want - kl(geo(alpha, Q3, P3), Q3)) > 1e-3
    assert abs(want - kl(mix(alpha, P3, Q3), Q3)) > 1e-3  # not the arithmetic mixture
    # r is the softmax of the interpolated logits, whatever their row constants
    zs, zt = [1.0, 0.0, -1.0], [3.0, 5.0, 4.5]
    r = softmax([alpha * b + (1 - alpha) * a for a, b in zip(zs, zt)])
    s, t = torch.tensor([[zs]], dtype=torch.float64), torch.tensor([[zt]], dtype=torch.float64)
    got = D.forward_kl_to_interpolation(s, t, None, alpha=alpha).item()
    assert got == pytest.approx(kl(r, softmax(zs)), rel=1e-9)


@pytest.mark.parametrize("name", MIXED_TARGETS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_mixed_targets_pull_towards_the_target(name, temperature):
    """The student's share of r is detached: the gradient is τ (q − r) per token (token mean
    over n tokens), so the mixture's is α τ (q − p): forward KL's direction, α its strength."""
    s, t, mask = random_inputs(V=7)
    alpha, n = 0.3, int(mask.sum())
    (grad,) = torch.autograd.grad(ALL[name](s, t, mask, temperature=temperature), s)

    def target(lq, lp):
        if name == "forward_kl_to_mixture":
            return alpha * lp.exp() + (1 - alpha) * lq.exp()
        return torch.softmax(alpha * lp + (1 - alpha) * lq, -1)

    lp = torch.log_softmax(t.detach() / temperature, -1)
    lq = torch.log_softmax(s.detach() / temperature, -1)
    r = target(lq, lp)
    torch.testing.assert_close(grad[mask], temperature * (lq.exp() - r)[mask] / n)
    if name == "forward_kl_to_mixture":
        torch.testing.assert_close(grad[mask], alpha * temperature * (lq.exp() - lp.exp())[mask] / n)
    # without the stop-gradient the gradient would differ (r would move with the student)
    x = s.detach().clone().requires_grad_()
    lqx = torch.log_softmax(x / temperature, -1)
    rx = target(lqx, lp)
    (moving,) = torch.autograd.grad((rx * (rx.log() - lqx)).sum(-1)[mask].mean() * temperature ** 2, x)
    assert (moving - grad).abs().max() > 1e-3


@pytest.mark.parametrize("name", MIXED_TARGETS)
def test_mixed_target_endpoints_are_exact(name):
    fn = getattr(D, name)
    assert one(fn, Q3, P3, alpha=1.0) == one(D.forward_kl, Q3, P3)
    assert one(fn, Q3, P3, alpha=0.0) == 0.0


def test_skew_endpoints_are_exact():
    assert one(D.skew_forward_kl, Q3, P3, alpha=0.0) == one(D.forward_kl, Q3, P3)
    assert one(D.skew_reverse_kl, Q3, P3, alpha=0.0) == one(D.reverse_kl, Q3, P3)
    assert one(D.skew_forward_kl, Q3, P3, alpha=1.0) == 0.0
    assert one(D.skew_reverse_kl, Q3, P3, alpha=1.0) == 0.0


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jensen_shannon_with_beta(beta):
    m = mix(beta, P3, Q3)  # m = β p + (1−β) q
    want = beta * kl(P3, m) + (1 - beta) * kl(Q3, m)
    assert one(D.jensen_shannon, Q3, P3, beta=beta) == pytest.approx(want, rel=1e-9)


def test_jensen_shannon_symmetric_at_half_and_vanishes_at_ends():
    a = one(D.jensen_shannon, Q3, P3, beta=0.5)
    assert a == pytest.approx(one(D.jensen_shannon, P3, Q3, beta=0.5), rel=1e-12)
    assert a > 0.05
    # not symmetric elsewhere: β = 0.1 weights the teacher little
    swapped = one(D.jensen_shannon, P3, Q3, beta=0.1)
    assert abs(one(D.jensen_shannon, Q3, P3, beta=0.1) - swapped) > 1e-3
    for beta in (1e-7, 1 - 1e-7):
        assert 0 <= one(D.jensen_shannon, Q3, P3, beta=beta) < 1e-5


def test_total_variation():
    assert one(D.total_variation, Q2, P2) == pytest.approx(0.4, rel=1e-12)
    assert one(D.total_variation, Q3, P3) == pytest.approx(0.5 * (0.6 + 0.1 + 0.5), rel=1e-12)


@pytest.mark.parametrize("name", sorted(ALL))
def test_temperature_scales_by_tau_squared(name):
    zs, zt = [1.0, 0.0, -1.0], [0.0, 2.0, 0.5]
    tau = 2.0
    q, p = softmax(zs, tau), softmax(zt, tau)
    per_token = {
        "forward_kl": kl(p, q), "reverse_kl": kl(q, p),
        "skew_forward_kl": kl(p, mix(0.1, p, q)), "skew_reverse_kl": kl(q, mix(0.1, q, p)),
        "forward_kl_to_mixture": kl(mix(0.3, p, q), q),
        "forward_kl_to_interpolation": kl(geo(0.3, p, q), q),
        "jensen_shannon": 0.1 * kl(p, mix(0.1, p, q)) + 0.9 * kl(q, mix(0.1, p, q)),
        "total_variation": 0.5 * sum(abs(a - b) for a, b in zip(p, q)),
    }[name]
    s = torch.tensor([[zs]], dtype=torch.float64)
    t = torch.tensor([[zt]], dtype=torch.float64)
    got = ALL[name](s, t, torch.ones(1, 1, dtype=torch.bool), temperature=tau).item()
    assert got == pytest.approx(tau ** 2 * per_token, rel=1e-9)


@pytest.mark.parametrize("name", sorted(ALL))
def test_zero_for_identical_inputs(name):
    s, _, mask = random_inputs(dtype=torch.float32)
    value = ALL[name](s, s.detach().clone(), mask, temperature=1.5)
    assert value.dtype == torch.float32
    assert abs(value.item()) < 1e-6


# --- masks -----------------------------------------------------------------------------

def test_token_mean_over_masked_tokens_only():
    s = torch.cat([as_logits(Q2), as_logits([0.5, 0.5]), as_logits([0.2, 0.8])], dim=1)
    t = torch.cat([as_logits(P2), as_logits([0.99, 0.01]), as_logits([0.2, 0.8])], dim=1)
    mask = torch.tensor([[True, False, True]])
    want = (kl(P2, Q2) + 0.0) / 2
    assert D.forward_kl(s, t, mask).item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("name", sorted(ALL))
def test_masked_out_positions_change_nothing(name):
    s, t, mask = random_inputs()
    before = ALL[name](s, t, mask).item()
    s2, t2 = s.detach().clone(), t.detach().clone()
    s2[~mask] = 50 * torch.randn_like(s2[~mask])
    t2[~mask] = -INF
    assert ALL[name](s2, t2, mask).item() == pytest.approx(before, rel=1e-12)


@pytest.mark.parametrize("name", sorted(ALL))
def test_empty_mask_gives_connected_zero(name):
    s, t, _ = random_inputs()
    value = ALL[name](s, t, torch.zeros(2, 5, dtype=torch.bool))
    assert value.item() == 0.0 and value.grad_fn is not None
    value.backward()
    assert s.grad is not None and torch.count_nonzero(s.grad) == 0


def test_mask_none_means_every_token():
    s, t, _ = random_inputs()
    full = torch.ones(2, 5, dtype=torch.bool)
    assert D.forward_kl(s, t, None).item() == pytest.approx(D.forward_kl(s, t, full).item())


# --- dtypes ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALL))
def test_bf16_in_float32_out(name):
    s, t, mask = random_inputs(dtype=torch.float32)
    sb, tb = s.detach().bfloat16().requires_grad_(), t.detach().bfloat16()
    value = ALL[name](sb, tb, mask)
    assert value.dtype == torch.float32
    # computed in float32 from the same (rounded) logits
    ref = ALL[name](sb.detach().float(), tb.float(), mask).item()
    assert value.item() == pytest.approx(ref, rel=1e-6, abs=1e-7)
    assert value.item() == pytest.approx(ALL[name](s, t, mask).item(), rel=0.05, abs=1e-3)
    value.backward()
    assert sb.grad.dtype == torch.bfloat16 and torch.isfinite(sb.grad.float()).all()


# --- stability -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALL))
def test_shared_neg_inf_entries_are_zero_probability_tokens(name):
    """−inf in both (e.g. padded vocabulary) equals the divergence on the remaining tokens."""
    s, t, mask = random_inputs(V=9)
    pad = torch.zeros(9, dtype=torch.bool)
    pad[[2, 7, 8]] = True
    s_inf = s.detach().clone().masked_fill(pad, -INF).requires_grad_()
    t_inf = t.detach().clone().masked_fill(pad, -INF)
    value = ALL[name](s_inf, t_inf, mask)
    reduced = ALL[name](s.detach()[..., ~pad], t.detach()[..., ~pad], mask)
    assert torch.isfinite(value) and value.item() == pytest.approx(reduced.item(), rel=1e-10)
    value.backward()
    assert torch.isfinite(s_inf.grad).all()
    assert torch.count_nonzero(s_inf.grad[..., pad]) == 0


@pytest.mark.parametrize("name", ["forward_kl", "skew_forward_kl", "skew_reverse_kl",
                                  *MIXED_TARGETS, "jensen_shannon", "total_variation"])
def test_teacher_only_neg_inf_stays_finite(name):
    """p = 0 where the student has mass: finite for these, with closed-form values."""
    p, q = [0.8, 0.2, 0.0], [0.5, 0.3, 0.2]
    s = as_logits(q).requires_grad_()
    t = as_logits(p)
    assert t[0, 0, 2] == -INF
    value = ALL[name](s, t, torch.ones(1, 1, dtype=torch.bool))
    want = {
        "forward_kl": kl(p, q), "skew_forward_kl": kl(p, mix(0.1, p, q)),
        "skew_reverse_kl": kl(q, mix(0.1, q, p)),
        "forward_kl_to_mixture": kl(mix(0.3, p, q), q), "forward_kl_to_interpolation": kl(geo(0.3, p, q), q),
        "jensen_shannon": 0.1 * kl(p, mix(0.1, p, q)) + 0.9 * kl(q, mix(0.1, p, q)),
        "total_variation": 0.5 * (0.3 + 0.1 + 0.2),
    }[name]
    assert value.item() == pytest.approx(want, rel=1e-9)
    value.backward()
    assert torch.isfinite(s.grad).all()


def test_reverse_kl_is_infinite_off_the_teacher_support():
    """The true value, not a NaN: the student has mass where the teacher has none."""
    one_token = torch.ones(1, 1, dtype=torch.bool)
    value = D.reverse_kl(as_logits([0.5, 0.5]), as_logits([1.0, 0.0]), one_token)
    assert value.item() == INF


@pytest.mark.parametrize("name", sorted(ALL))
def test_undefined_rows_contribute_zero(name):
    """A token whose logits are all −inf or contain +inf adds 0 to the sum (still counted)."""
    s, t, _ = random_inputs(B=1, T=3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    good = ALL[name](s[:, :1], t[:, :1], mask[:, :1]).item()
    s2, t2 = s.detach().clone(), t.detach().clone()
    s2[0, 1] = -INF           # student row undefined
    t2[0, 2, 4] = INF         # teacher row undefined
    s2 = s2.requires_grad_()
    value = ALL[name](s2, t2, mask)
    assert value.item() == pytest.approx(good / 3, rel=1e-10)
    value.backward()
    assert torch.isfinite(s2.grad).all() and torch.count_nonzero(s2.grad[0, 1:]) == 0


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_stay_finite(name, dtype):
    g = torch.Generator().manual_seed(1)
    s = (1e4 * torch.randn(2, 4, 16, generator=g)).to(dtype).requires_grad_()
    t = (1e4 * torch.randn(2, 4, 16, generator=g)).to(dtype)
    value = ALL[name](s, t, torch.ones(2, 4, dtype=torch.bool))
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(s.grad.float()).all()


# --- chunking and gradients ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_chunked_matches_plain_values_and_gradients(name, temperature, monkeypatch):
    monkeypatch.setattr(D, "CHUNK_ELEMENTS", 2 * 11)  # 2 rows per chunk, N not a multiple
    s, t, mask = random_inputs(V=11)
    kw = {"temperature": temperature}
    if name.startswith("skew") or name in MIXED_TARGETS:
        kw["alpha"] = 0.3
    if name == "jensen_shannon":
        kw["beta"] = 0.3
    ours = ALL[name](s, t, mask, **kw)
    ref = plain(name, s, t, mask, alpha=kw.get("alpha", 0.1), beta=kw.get("beta", 0.1),
                temperature=temperature)
    assert ours.dtype == torch.float64
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-14)
    (g_ours,) = torch.autograd.grad(ours, s)
    (g_ref,) = torch.autograd.grad(ref, s)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(set(ALL) - set(MIXED_TARGETS)))  # those stop the gradient
def test_gradcheck_float64_small_chunks(name, monkeypatch):
    monkeypatch.setattr(D, "CHUNK_ELEMENTS", 7)  # one row per chunk
    s, t, mask = random_inputs(B=1, T=4, V=7)
    assert torch.autograd.gradcheck(lambda x: ALL[name](x, t.detach(), mask, temperature=1.3), (s,))


def test_per_token_order_and_custom_kernel():
    s, t, mask = random_inputs()
    values = D.per_token(lambda lq, lp: D.kl_rows(lp, lq), s, t, mask, chunk_rows=3)
    lp, lq = torch.log_softmax(t.detach(), -1), torch.log_softmax(s.detach(), -1)
    want = (lp.exp() * (lp - lq)).sum(-1)[mask]
    assert values.shape == (int(mask.sum()),)
    torch.testing.assert_close(values.detach(), want)
    assert D.token_mean(lambda lq, lp: D.kl_rows(lp, lq), s, t, mask).item() == pytest.approx(
        D.forward_kl(s, t, mask).item(), rel=1e-12)


def test_teacher_receives_no_gradient():
    s, t, mask = random_inputs()
    total = sum(fn(s, t, mask) for fn in ALL.values())
    total.backward()
    assert t.grad is None
    assert s.grad is not None and torch.count_nonzero(s.grad) > 0
    assert torch.count_nonzero(s.grad[~mask]) == 0


def test_no_grad_evaluation_gives_same_value():
    s, t, mask = random_inputs()
    with torch.no_grad():
        value = D.jensen_shannon(s, t, mask)
    assert value.grad_fn is None
    assert value.item() == pytest.approx(D.jensen_shannon(s, t, mask).item(), rel=1e-12)


def test_backward_twice_with_retained_graph():
    s, t, mask = random_inputs()
    value = D.forward_kl(s, t, mask)
    value.backward(retain_graph=True)
    first = s.grad.clone()
    value.backward()
    torch.testing.assert_close(s.grad, 2 * first)


# --- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("fn,kw,word", [
    (D.skew_forward_kl, {"alpha": -0.1}, "alpha"),
    (D.skew_forward_kl, {"alpha": 1.5}, "alpha"),
    (D.skew_reverse_kl, {"alpha": float("nan")}, "alpha"),
    (D.forward_kl_to_mixture, {"alpha": 1.5}, "alpha"),
    (D.forward_kl_to_interpolation, {"alpha": -0.5}, "alpha"),
    (D.jensen_shannon, {"beta": 0.0}, "beta"),
    (D.jensen_shannon, {"beta": 1.0}, "beta"),
    (D.jensen_shannon, {"beta": -2}, "beta"),
    (D.forward_kl, {"temperature": 0.0}, "temperature"),
    (D.reverse_kl, {"temperature": -1.0}, "temperature"),
    (D.total_variation, {"temperature": float("inf")}, "temperature"),
])
def test_bad_parameters_raise_user_error(fn, kw, word):
    s, t, mask = random_inputs()
    with pytest.raises(UserError, match=word):
        fn(s, t, mask, **kw)


def test_shape_errors():
    s, t, mask = random_inputs(V=11)
    with pytest.raises(UserError, match="vocabular"):
        D.forward_kl(s, t[..., :10], mask)
    with pytest.raises(ValueError, match="mask"):
        D.forward_kl(s, t, mask[:, :3])
