"""The contract every discovered method must keep, plus discovery itself.

The contract tests are parametrised over `kdbench.method.discover()`, so a method file added
later is checked with no edit here; they use the interface only. The last section pins
closed-form values of the baseline methods of this suite (AKL, TAID, SFT/SeqKD).
"""
import copy
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.errors import UserError
from kdbench.method import EpochContext, Method, Progress, defaults, discover, get, instantiate

REPO = Path(__file__).resolve().parents[1]
METHODS_DIR = REPO / "methods"
METHODS = discover(METHODS_DIR)
NAMES = sorted(METHODS)
BASELINES = ["akl", "jsd", "kd", "rkl", "seqkd", "sft", "skl", "srkl", "taid", "tvd"]
UNIT_KEYS = {"alpha", "beta", "kd_ratio", "t", "on_policy", "replay", "sgo_threshold"}
B, T, V = 2, 4, 13


# --- helpers ---------------------------------------------------------------------------

def progress_at(fraction: float, total_steps: int = 20, n_epochs: int = 3) -> Progress:
    step = round(fraction * total_steps)
    per_epoch = total_steps // n_epochs + 1
    return Progress(epoch=min(n_epochs - 1, step // per_epoch), n_epochs=n_epochs, step=step,
                    total_steps=total_steps, epoch_step=step % per_epoch, epoch_steps=per_epoch)


def run_loss(method: Method, student, teacher, mask, progress: Progress | None = None):
    """What the engine does: schedule first, then loss; no teacher for SFT-style methods."""
    progress = progress or progress_at(0.3)
    progress.values = method.schedule(progress)
    return method.loss(student, teacher if method.needs_teacher else None, mask, progress)


def inputs(kind: str = "random", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, V, generator=g)
    t = 2 * torch.randn(B, T, V, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :1] = False  # a prompt token
    mask[1, -1] = False  # a padding token
    if kind == "extreme":
        s, t = 1e4 * torch.randn(B, T, V, generator=g), 1e4 * torch.randn(B, T, V, generator=g)
    elif kind == "neg_inf":  # padded vocabulary / banned tokens: -inf in both models
        s[..., -3:] = -math.inf
        t[..., -3:] = -math.inf
        s[0, 1, 2] = t[0, 1, 2] = -math.inf
    elif kind == "bf16":
        s, t = s.bfloat16(), t.bfloat16()
    return s.requires_grad_(), t.requires_grad_(), mask


def fresh(name: str) -> Method:
    return instantiate(METHODS[name], {}, name)


# --- contract, every discovered method --------------------------------------------------

def test_baselines_are_discovered_and_template_is_not():
    assert set(BASELINES) <= set(NAMES)
    assert not any(n.startswith(("template", "_")) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_class_attributes_and_defaults(name):
    cls = METHODS[name]
    assert issubclass(cls, Method)
    assert isinstance(cls.needs_teacher, bool) and isinstance(cls.uses_difficulty, bool)
    assert cls.train_on in ("reference", "teacher_samples", "mixed")
    assert isinstance(cls.uses_validation_loss, bool)
    assert cls.references and all(isinstance(r, str) and r for r in cls.references)
    params = defaults(cls)
    scalar = (bool, int, float, str, type(None))
    assert all(isinstance(v, scalar) or (isinstance(v, (list, tuple)) and
                                         all(isinstance(x, scalar) for x in v))
               for v in params.values()), f"defaults must be config-writable values: {params}"
    cls(**params)  # the defaults are valid


@pytest.mark.parametrize("kind", ["random", "extreme", "neg_inf", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_loss_is_a_finite_float32_scalar(name, kind):
    s, t, mask = inputs(kind)
    loss = run_loss(fresh(name), s, t, mask)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss), f"{name} gives {loss.item()} on {kind} logits"
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_student_only(name):
    s, t, mask = inputs()
    method = fresh(name)
    run_loss(method, s, t, mask).backward()
    assert t.grad is None or torch.count_nonzero(t.grad) == 0
    assert s.grad is not None
    assert torch.count_nonzero(s.grad[~mask]) == 0, "masked-out positions got a gradient"
    if method.needs_teacher:
        assert torch.count_nonzero(s.grad[mask]) > 0


@pytest.mark.parametrize("name", NAMES)
def test_positions_outside_the_mask_do_not_change_the_loss(name):
    method = fresh(name)
    s, t, mask = inputs()
    before = run_loss(copy.deepcopy(method), s, t, mask).item()
    s2, t2 = s.detach().clone(), t.detach().clone()
    g = torch.Generator().manual_seed(5)
    s2[~mask] = 30 * torch.randn(s2[~mask].shape, generator=g)
    t2[~mask] = 30 * torch.randn(t2[~mask].shape, generator=g)
    after = run_loss(copy.deepcopy(method), s2.requires_grad_(), t2.requires_grad_(), mask).item()
    assert after == pytest.approx(before, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_student_equal_to_teacher_is_minimal(name):
    method = fresh(name)
    if not method.needs_teacher:
        pytest.skip("no teacher: nothing to match")
    _, t, mask = inputs()
    same = run_loss(copy.deepcopy(method), t.detach().clone().requires_grad_(), t, mask).item()
    g = torch.Generator().manual_seed(3)
    perturbed = t.detach() + torch.randn(t.shape, generator=g)
    other = run_loss(copy.deepcopy(method), perturbed.requires_grad_(), t, mask).item()
    assert same <= other + 1e-6
    if name in BASELINES:
        assert abs(same) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_schedule_values(name):
    method = fresh(name)
    for fraction in (0.0, 0.5, 1.0):
        values = method.schedule(progress_at(fraction))
        assert isinstance(values, dict)
        for key, value in values.items():
            assert isinstance(key, str)
            value = float(value)
            assert math.isfinite(value), f"{name}: {key}={value} at {fraction}"
            if key in UNIT_KEYS:
                assert 0.0 <= value <= 1.0, f"{name}: {key}={value} at {fraction}"
            if key == "temperature":
                assert value > 0
        if method.train_on == "mixed":  # the engine draws one u per step against these shares
            assert values.get("on_policy", 0.0) + values.get("replay", 0.0) <= 1.0 + 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_state_changed_by_training_survives_a_checkpoint(name):
    """Whatever `loss`/`schedule` change on the method must come back through state_dict and
    load_state_dict (kdbench/resume.py), or a resumed run would differ; the state is tensors and
    plain values, which a checkpoint loaded with `weights_only=True` can hold."""
    import io

    trained = fresh(name)
    for k in range(4):
        s, t, mask = inputs(seed=k)
        run_loss(trained, s, t, mask, progress_at(k / 4)).backward()
    saved = io.BytesIO()
    torch.save(trained.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    restored = fresh(name)
    restored.load_state_dict(state)
    assert vars(restored).keys() == vars(trained).keys()
    for key, value in vars(trained).items():
        assert repr(vars(restored)[key]) == repr(value), f"{name}.{key} is not in its state_dict"


@pytest.mark.parametrize("name", NAMES)
def test_epoch_indices_are_none_or_valid(name):
    method = fresh(name)
    n, epochs = 50, 4
    ctx = EpochContext(n_examples=n, n_epochs=epochs, seed=0,
                       difficulty=np.random.default_rng(0).random(n))
    for epoch in range(epochs):
        idx = method.epoch_indices(epoch, ctx)
        if idx is None:
            continue
        idx = np.asarray(idx)
        assert idx.ndim == 1 and idx.size > 0 and np.issubdtype(idx.dtype, np.integer)
        assert idx.min() >= 0 and idx.max() < n
        assert len(np.unique(idx)) == idx.size, "repeated examples in one epoch"


# --- discovery -------------------------------------------------------------------------

MINIMAL = """
from kdbench.method import Method as Base

class Method(Base):
    references = ["test"]
    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.forward_kl(student_logits, teacher_logits, mask)
"""


def test_a_dropped_file_is_discovered_and_templates_are_skipped(tmp_path):
    (tmp_path / "mymethod.py").write_text(MINIMAL)
    shutil.copy(METHODS_DIR / "template_method.py", tmp_path / "template_method.py")
    (tmp_path / "_helper.py").write_text("raise RuntimeError('never imported')\n")
    found = discover(tmp_path)
    assert set(found) == {"mymethod"}
    assert issubclass(found["mymethod"], Method)


def test_the_template_copied_under_a_new_name_is_a_working_method(tmp_path):
    shutil.copy(METHODS_DIR / "template_method.py", tmp_path / "newmethod.py")
    method = instantiate(discover(tmp_path)["newmethod"], {"temperature_end": 2.0})
    s, t, mask = inputs()
    loss = run_loss(method, s, t, mask, progress_at(0.5))
    assert torch.isfinite(loss) and loss.item() > 0
    assert "template_method" not in NAMES


@pytest.mark.parametrize("body", ["def broken(:\n", "import no_such_module_kdbench\n",
                                  "class NotMethod:\n    pass\n"])
def test_a_broken_file_raises_user_error_naming_it(tmp_path, body):
    (tmp_path / "good.py").write_text(MINIMAL)
    (tmp_path / "broken_one.py").write_text(body)
    with pytest.raises(UserError, match="broken_one.py"):
        discover(tmp_path)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UserError) as err:
        get("no_such_method", METHODS_DIR)
    message = str(err.value)
    assert "no_such_method" in message
    assert all(name in message for name in NAMES)


# --- the baselines of this suite: closed-form values ------------------------------------

def one_token(q, p):
    """Logits (1, 1, V) for student probabilities q and teacher probabilities p."""
    lg = lambda x: torch.log(torch.tensor([[x]], dtype=torch.float64))  # noqa: E731
    return lg(q).requires_grad_(), lg(p), torch.ones(1, 1, dtype=torch.bool)


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


@pytest.mark.parametrize("p,q,h", [
    # head = {0} (0.6 > μ); g = (0.1, 0.1, 0.2) -> h = 0.25
    ([0.6, 0.3, 0.1], [0.5, 0.2, 0.3], 0.25),
    # cumulative 0.4, 0.75: the token crossing μ (0.35) is in the tail, head = {0};
    # g = (0.3, 0.15, 0.15) -> h = 0.5
    ([0.4, 0.35, 0.25], [0.1, 0.5, 0.4], 0.5),
    # sorted 0.24, 0.21, 0.2, ...: cumulative 0.24, 0.45, 0.65, so head = {0, 1} and 0.2
    # (index 3, crossing μ) is in the tail; g = (0.14, 0.09, 0.11, 0.1, 0.04) -> h = 0.23 / 0.48
    ([0.24, 0.21, 0.19, 0.2, 0.16], [0.1, 0.3, 0.3, 0.1, 0.2], 0.23 / 0.48),
])
def test_akl_weights_head_and_tail(p, q, h):
    want = h * kl(p, q) + (1 - h) * kl(q, p)
    method = fresh("akl")
    for shift in range(3):  # vocabulary order must not matter
        perm = [(i + shift) % len(p) for i in range(len(p))]
        pp, qq = [p[i] for i in perm], [q[i] for i in perm]
        assert run_loss(method, *one_token(qq, pp)).item() == pytest.approx(want, rel=1e-9)


def test_akl_head_mask_in_vocabulary_order():
    akl = sys.modules[METHODS["akl"].__module__]
    # the authors' rule: tail = sorted cumulative mass > μ, the top token forced into the head
    p = torch.tensor([[0.1, 0.45, 0.05, 0.4]])
    assert akl.head_mask(p, 0.5).tolist() == [[False, True, False, False]]  # 0.4 crosses μ: tail
    assert akl.head_mask(p, 0.9).tolist() == [[False, True, False, True]]
    assert akl.head_mask(p, 0.0).tolist() == [[False, True, False, False]]
    # a cumulative mass exactly μ is not over it: head (0.25 + 0.25 is exact in binary)
    p = torch.tensor([[0.1, 0.25, 0.2, 0.25, 0.2]])
    assert akl.head_mask(p, 0.5).tolist() == [[False, True, False, True, False]]


def _taid_example():
    """A one-token worked example at t = 0.4: logits, tensors, the target r = softmax(0.6 z_S +
    0.4 z_T) and the student's q, computed by hand."""
    zs, zt = [1.0, 0.0, -1.0], [0.0, 2.0, 0.5]
    s = torch.tensor([[zs]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[zt]], dtype=torch.float64)
    r = [math.exp(0.6 * a + 0.4 * b) for a, b in zip(zs, zt)]
    r = [x / sum(r) for x in r]
    q = [math.exp(a) / sum(math.exp(x) for x in zs) for a in zs]
    return zs, zt, s, t, r, q


def test_taid_target_interpolates_logits():
    method = fresh("taid")
    assert method.t == pytest.approx(0.4)
    zs, zt, s, t, r, q = _taid_example()
    loss = run_loss(method, s, t, torch.ones(1, 1, dtype=torch.bool))
    assert loss.item() == pytest.approx(kl(r, q), rel=1e-9)
    at_one = instantiate(METHODS["taid"], {"t_start": 1.0})
    p = [math.exp(b) / sum(math.exp(x) for x in zt) for b in zt]
    one_token = torch.ones(1, 1, dtype=torch.bool)
    assert run_loss(at_one, s, t, one_token).item() == pytest.approx(kl(p, q))


def test_taid_adaptive_schedule_rule():
    method = fresh("taid")
    method.update(2.0, 0.0)  # first call: only records the loss
    assert (method.t, method.momentum) == (0.4, 0.0)
    method.update(1.0, 0.0)  # relative decrease 0.5
    m = 0.01 * 0.5
    assert method.momentum == pytest.approx(m)
    assert method.t == pytest.approx(0.4 + 5e-4 * (1 / (1 + math.exp(-m))) * 0.6)
    method.update(1.0, 0.5)  # the linear target overtakes the adaptive step
    assert method.t == pytest.approx(0.7)
    method.update(1.0, 1.0)
    assert method.t == 1.0
    assert method.schedule(progress_at(1.0)) == {"t": 1.0, "taid_momentum": method.momentum}


def test_taid_updates_once_per_training_loss_call_only():
    method = fresh("taid")
    s, t, mask = inputs()
    with torch.no_grad():
        run_loss(method, s, t, mask)
    assert method.prev_loss is None
    first = run_loss(method, s, t, mask).item()
    assert method.prev_loss > first  # the cross-entropy KL + H(r_t), not the reported KL
    run_loss(method, s, t, mask, progress_at(0.5))
    assert method.t == pytest.approx(0.7)


def test_taid_momentum_is_fed_the_cross_entropy():
    """The reference feeds its schedule the loss value it computes, −Σ r_t log q (token mean),
    which is KL(r_t ‖ q) + H(r_t); the suite reports the KL and feeds the schedule the same
    cross-entropy."""
    method = fresh("taid")
    zs, zt, s, t, r, q = _taid_example()
    cross_entropy = -sum(ri * math.log(qi) for ri, qi in zip(r, q))
    loss = run_loss(method, s, t, torch.ones(1, 1, dtype=torch.bool))
    assert loss.item() == pytest.approx(kl(r, q), rel=1e-9)
    assert method.prev_loss == pytest.approx(cross_entropy, rel=1e-9)
    # the next step's relative decrease is computed on cross-entropies too
    method.update(cross_entropy / 2, 0.0)
    assert method.momentum == pytest.approx(0.01 * 0.5)


def test_sft_has_no_distillation_term():
    method = fresh("sft")
    assert method.needs_teacher is False and method.train_on == "reference"
    assert method.schedule(progress_at(0.5)) == {"kd_ratio": 0.0}
    s, _, mask = inputs("neg_inf")
    loss = run_loss(method, s, None, mask)
    assert loss.item() == 0.0 and loss.grad_fn is not None


def test_seqkd_is_kd_on_teacher_samples_with_the_teacher_loaded():
    method = fresh("seqkd")
    assert method.needs_teacher is True and method.train_on == "teacher_samples"
    assert method.schedule(progress_at(0.5)) == {}  # kd_ratio follows distill.kd_ratio
    minillm = instantiate(METHODS["seqkd"], {"kd_ratio": 0.5}, "seqkd")
    assert minillm.schedule(progress_at(0.5)) == {"kd_ratio": 0.5}
    s, t, mask = inputs()
    from kdbench import divergences as D
    assert run_loss(method, s, t, mask).item() == pytest.approx(D.forward_kl(s, t, mask).item())


@pytest.mark.parametrize("name,params", [
    ("kd", {"temperature": 0}), ("rkl", {"temperature": -1}), ("tvd", {"temperature": 0}),
    ("skl", {"alpha": 1.5}), ("srkl", {"alpha": -0.1}), ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}), ("akl", {"mu": 1.5}), ("taid", {"t_start": 1.2}),
    ("taid", {"t_end": 0.3}), ("taid", {"momentum_decay": 1.0}),
    ("taid", {"step_size": -1.0}), ("cpd", {"granularity": "batch"}), ("cpd", {"tau_end": 0}),
    ("pocl", {"kd_ratio_end": 2.0}), ("pocl", {"n_stages": 0}), ("curriculum_kd", {"temperature": 0}),
    ("curriculum_kd", {"start_fraction": 0}), ("seqkd", {"kd_ratio": 1.5}),
    ("gkd", {"lmbda": 1.5}), ("gkd", {"max_new_tokens": 0}),
    ("distillm", {"init_threshold": -0.1}), ("distillm", {"capacity": 2.5}),
    ("distillm", {"replay_ratio": "random"}), ("distillm", {"loss_eps": -1}),
])
def test_parameters_are_validated_in_one_sentence(name, params):
    """One convention: a UserError naming the method, the parameter and the value given."""
    with pytest.raises(UserError) as err:
        instantiate(METHODS[name], params, name)
    msg = str(err.value)
    key, value = next(iter(params.items()))
    assert f"method {name!r}" in msg and f"{key} must be" in msg and f"(got {value!r})" in msg
    assert "\n" not in msg and msg.endswith(".")
