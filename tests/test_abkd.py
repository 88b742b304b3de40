"""ABKD (methods/abkd.py): the α-β divergence with the reference's constants, against a hand
computation and an independent numpy computation of its value and gradient."""
import math

import numpy as np
import pytest
import torch

from kdbench import divergences as D
from kdbench import method as M
from kdbench.errors import UserError

ABKD = M.discover()["abkd"]


def run(method, s, t, mask):
    progress = M.Progress()
    progress.values = method.schedule(progress)
    return method.loss(s, t, mask, progress)


def test_constants_and_recipe_are_the_references():
    method = M.instantiate(ABKD, {}, "abkd")
    # ghwang-s/abkd scripts/gpt2/ab/train_*.sh: α + β = 0.9, α = 0.2; temperature 1; the init student
    assert (method.alpha, method.beta, method.temperature) == (0.2, 0.7, 1.0)
    assert ABKD.starts_from == "sft" and ABKD.train_on == "reference" and ABKD.needs_teacher
    assert method.schedule(M.Progress()) == {}  # kd_ratio follows distill.kd_ratio (1.0 in its scripts)


def test_two_token_value_by_hand():
    """p = (0.5, 0.5) teacher, q = (0.9, 0.1) student, α = 0.2, β = 0.7:
    −1/(0.14) Σ_v (p^0.2 q^0.7 − (2/9) p^0.9 − (7/9) q^0.9) = 0.43678."""
    s = torch.log(torch.tensor([[[0.9, 0.1]]], dtype=torch.float64)).requires_grad_()
    t = torch.log(torch.tensor([[[0.5, 0.5]]], dtype=torch.float64))
    value = run(M.instantiate(ABKD, {}, "abkd"), s, t, torch.ones(1, 1, dtype=torch.bool))
    assert value.item() == pytest.approx(0.436778270961102, rel=1e-9)
    value.backward()
    # the student over-weights token 0 (0.9 > 0.5): descent lowers its logit
    assert s.grad[0, 0, 0] > 0 > s.grad[0, 0, 1]


def numpy_abkd(s, t, mask, alpha, beta, tau):
    """Value and gradient w.r.t. the student logits, from the textbook formula in float64:
    u_v = q_v ∂D/∂q_v = −(p_v^α q_v^β − q_v^(α+β)) / α, and the softmax chain rule
    ∂D/∂z_j = (u_j − q_j Σ_v u_v) / τ, times τ², over the N masked tokens."""
    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(t / tau), softmax(s / tau)
    a = alpha + beta
    per_token = -(p ** alpha * q ** beta - alpha / a * p ** a - beta / a * q ** a).sum(-1) / (alpha * beta)
    n = mask.sum()
    u = -(p ** alpha * q ** beta - q ** a) / alpha
    grad = (u - q * u.sum(-1, keepdims=True)) / tau * tau ** 2 / n
    return tau ** 2 * per_token[mask].mean(), np.where(mask[..., None], grad, 0.0)


@pytest.mark.parametrize("alpha,beta,tau", [(0.2, 0.7, 1.0), (0.1, 0.8, 1.0), (0.5, 0.5, 2.0), (1.5, 0.4, 1.0)])
def test_value_and_gradient_match_an_independent_numpy_computation(alpha, beta, tau):
    g = np.random.default_rng(0)
    s_np, t_np = 2 * g.standard_normal((2, 5, 17)), 3 * g.standard_normal((2, 5, 17))
    mask = g.random((2, 5)) > 0.3
    mask[0, 0] = True
    s = torch.tensor(s_np, requires_grad=True)
    method = M.instantiate(ABKD, {"alpha": alpha, "beta": beta, "temperature": tau}, "abkd")
    value = run(method, s, torch.tensor(t_np), torch.tensor(mask))
    value.backward()
    want, grad = numpy_abkd(s_np, t_np, mask, alpha, beta, tau)
    assert value.item() == pytest.approx(want, rel=1e-10)
    np.testing.assert_allclose(s.grad.numpy(), grad, rtol=1e-8, atol=1e-12)


def test_the_kl_endpoints_are_reachable_as_variants():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 3, 9, generator=g, dtype=torch.float64), torch.randn(1, 3, 9, generator=g, dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    fkl = run(M.instantiate(ABKD, {"alpha": 1.0, "beta": 0.0}, "abkd"), s, t, mask)
    rkl = run(M.instantiate(ABKD, {"alpha": 0.0, "beta": 1.0}, "abkd"), s, t, mask)
    assert fkl.item() == pytest.approx(D.forward_kl(s, t, mask).item(), rel=1e-12)
    assert rkl.item() == pytest.approx(D.reverse_kl(s, t, mask).item(), rel=1e-12)
    assert not math.isclose(fkl.item(), rkl.item(), rel_tol=1e-3)


@pytest.mark.parametrize("params,word", [({"alpha": -0.2}, "alpha"), ({"beta": float("inf")}, "beta"),
                                         ({"alpha": 0.0, "beta": 0.0}, "alpha \\+ beta"),
                                         ({"temperature": 0.0}, "temperature")])
def test_bad_parameters_are_refused_in_one_sentence(params, word):
    with pytest.raises(UserError, match=f"method 'abkd'.*{word} must be"):
        M.instantiate(ABKD, params, "abkd")
