"""Resumable training (kdbench/resume.py) and non-finite values (kdbench/train.py).

In-process: a run interrupted after any step and resumed from its checkpoint ends with the
same weights, trace and method state as an uninterrupted run, also inside a POCL restart
segment (best weights so far, the segment's fresh schedule) and in the middle of an on-policy
run (the sampler's generator and replay buffer, DistiLLM's adaptive threshold); a checkpoint
of other inputs is ignored; NaN gradients with a finite loss stop before the optimizer step,
naming the method.
Out of process: a distill job killed with SIGKILL mid-epoch and rerun gives bitwise-equal
weights to an uninterrupted one."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kdbench import method as M
from kdbench.resume import Checkpoint
from kdbench.data import encode
from kdbench.errors import UserError
from kdbench.teacher import OnlineTeacher
from kdbench.train import train

BUDGET = {"epochs": 2, "batch_size": 4, "grad_accum": 1, "lr": 3e-3, "min_lr_ratio": 0.1, "warmup": 0.2,
          "weight_decay": 0.01, "grad_clip": 1.0, "loss_on": "response", "precision": "fp32", "bucket_window": 2}
METHODS = M.discover()
TAID = METHODS["taid"]  # a method with state of its own (t, momentum)


class _Crash(Exception):
    pass


def _crashing(base: type[M.Method]) -> type[M.Method]:
    """`base` that dies at global step `crash_at`, as a killed job would, and remembers the
    epoch of its last step in `epoch`."""

    class Crashing(base):
        crash_at, epoch = None, None

        def loss(self, student_logits, teacher_logits, mask, progress):
            if progress.step == self.crash_at:
                raise _Crash
            self.epoch = progress.epoch
            return super().loss(student_logits, teacher_logits, mask, progress)

    return Crashing


_CrashingTaid = _crashing(TAID)


@pytest.fixture(scope="module")
def examples(tokenizer, records):
    return encode(tokenizer, records[:20], max_length=512)  # 5 steps per epoch


def _run(make_model, tokenizer, examples, ckpt=None, crash_at=None):
    student, teacher = make_model(seed=1), make_model(seed=2, hidden_size=32)
    meth = _CrashingTaid()
    meth.crash_at = crash_at
    res = train(student, examples, BUDGET, seed=7, pad_id=tokenizer.pad_token_id, method=meth,
                teacher=OnlineTeacher(teacher, "fp32", torch.device("cpu")), kd_ratio=0.7, checkpoint=ckpt)
    return student, meth, res


@pytest.mark.parametrize("crash_at", [3, 5, 8])  # mid-epoch, first step of epoch 1, mid-epoch 1
def test_resumed_run_equals_an_uninterrupted_one(crash_at, make_model, tokenizer, examples, tmp_path, capsys):
    ref, ref_meth, ref_res = _run(make_model, tokenizer, examples)
    ckpt = Checkpoint(tmp_path / "run.pt", every_minutes=0, key="k")
    with pytest.raises(_Crash):
        _run(make_model, tokenizer, examples, ckpt, crash_at=crash_at)
    assert torch.load(tmp_path / "run.pt", weights_only=True)["loop"]["step"] == crash_at
    got, meth, res = _run(make_model, tokenizer, examples, Checkpoint(tmp_path / "run.pt", 0, key="k"))
    assert "resuming from checkpoint" in capsys.readouterr().err  # loaded with weights_only, not started over
    for (name, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), name
    assert meth.state_dict() == ref_meth.state_dict() and meth.t != TAID().t
    cols = ["step", "epoch", "loss", "ce", "distill", "lr", "tokens", "examples", "t"]
    assert res.trace[cols].equals(ref_res.trace[cols])
    assert res.epochs.drop(columns="wall_s").equals(ref_res.epochs.drop(columns="wall_s"))
    assert res.stats["train_steps"] == 10


def test_checkpoint_of_other_inputs_is_ignored(make_model, tokenizer, examples, tmp_path, capsys):
    with pytest.raises(_Crash):
        _run(make_model, tokenizer, examples, Checkpoint(tmp_path / "run.pt", 0, key="old"), crash_at=4)
    ref, _, _ = _run(make_model, tokenizer, examples)
    got, _, res = _run(make_model, tokenizer, examples, Checkpoint(tmp_path / "run.pt", 0, key="new"))
    assert "belongs to other inputs" in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), got.parameters()))
    assert len(res.trace) == 10


class _NaNGradient(M.Method):
    """Finite loss (0), NaN gradient: d sqrt(x)/dx is infinite at 0, times a zero derivative."""

    def loss(self, student_logits, teacher_logits, mask, progress):
        return torch.sqrt((student_logits - student_logits.detach()).pow(2).sum())


def test_nan_gradients_stop_before_the_step_naming_the_method(make_model, tokenizer, examples):
    student = make_model(seed=1)
    before = [p.detach().clone() for p in student.parameters()]
    teacher = OnlineTeacher(make_model(seed=2), "fp32", torch.device("cpu"))
    with pytest.raises(UserError, match=r"loss is finite but its gradients are not, while the student's cross-entropy "
                                        r"has finite gradients; method 'test_resume' is the suspect") as e:
        train(student, examples, BUDGET, seed=0, pad_id=tokenizer.pad_token_id, method=_NaNGradient(),
              teacher=teacher, kd_ratio=0.5)
    assert "step 0" in str(e.value) and "\n" not in str(e.value)
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))  # no step taken


@pytest.mark.parametrize("name", ["kd", "cpd", "seqkd"])
def test_a_diverging_distillation_blames_the_learning_rate_not_the_method(name, make_model, tokenizer, examples):
    """lr 1e6: the first steps blow the weights up and every gradient overflows, the
    cross-entropy's too, so the learning rate is named; the method's term is not the first
    non-finite quantity."""
    teacher = OnlineTeacher(make_model(seed=2), "fp32", torch.device("cpu"))
    with pytest.raises(UserError, match="the learning rate or the precision is the suspect") as e:
        train(make_model(seed=1), examples, {**BUDGET, "lr": 1e6}, seed=0, pad_id=tokenizer.pad_token_id,
              method=METHODS[name](), teacher=teacher, kd_ratio=1.0, difficulty=np.linspace(0, 1, len(examples)))
    assert "method" not in str(e.value) and "step 0" not in str(e.value) and "\n" not in str(e.value)


def test_diverging_cross_entropy_blames_the_learning_rate(make_model, tokenizer, examples):
    with pytest.raises(UserError, match=r"lower the learning rate") as e:
        train(make_model(seed=1), examples, {**BUDGET, "lr": 1e30, "grad_clip": 0.0}, seed=0,
              pad_id=tokenizer.pad_token_id)
    assert "step 0" not in str(e.value)


def test_distill_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from kdbench_cli import env, prepare_tree, tiny_profile, write_profile

    cfg = tiny_profile(tmp_path, methods={"include": ["taid"]}, checkpoint={"every_minutes": 0})
    cfg["training"]["student"].update(epochs=2, batch_size=2)  # 12 steps per epoch
    cfg = prepare_tree(tmp_path, cfg)
    config = write_profile(tmp_path, cfg)
    run_dir = tmp_path / "results/tiny/runs/tiny/taid/default/seed0"
    ckpt = tmp_path / "results/tiny/checkpoints/tiny/taid/default/seed0.pt"
    cmd = [sys.executable, "-m", "kdbench", "distill", "--config", str(config),
           "--pair", "tiny", "--method", "taid", "--variant", "default", "--seed", "0"]

    subprocess.run(cmd, cwd=tmp_path, env=env(), check=True, capture_output=True)
    reference = load_file(run_dir / "model" / "model.safetensors")
    ref_trace = (run_dir / "trace.csv").read_text()
    assert not ckpt.exists()  # removed once the run is written
    shutil.rmtree(run_dir)

    job = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = None
    while job.poll() is None:
        try:
            seen = torch.load(ckpt, weights_only=True)["loop"]
        except (OSError, RuntimeError, EOFError, KeyError):
            seen = None
        if seen is not None and seen["step"] >= 3:
            os.kill(job.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    job.wait()
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert seen["epoch"] == 0 and 0 < seen["k"] < 12  # killed mid-epoch
    assert not (run_dir / "train.json").exists()  # nothing of the run was committed

    out = subprocess.run(cmd, cwd=tmp_path, env=env(), check=True, capture_output=True, text=True)
    assert "resuming from checkpoint" in out.stderr
    resumed = load_file(run_dir / "model" / "model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    cols = lambda text: [line.split(",")[:5] for line in text.splitlines()]  # noqa: E731 (step..distill)
    assert cols((run_dir / "trace.csv").read_text()) == cols(ref_trace)
    assert not ckpt.exists()


# --- resuming inside a POCL restart segment ---------------------------------------------
POCL = METHODS["pocl"]
POCL_BUDGET = {**BUDGET, "epochs": 4, "selection": "best"}  # two stages of two epochs: restart before epoch 2
VAL_ROUGE = [30.0, 10.0, 20.0, 15.0]  # per epoch: stage 0 keeps epoch 0, stage 1 (the selection) epoch 2
_CrashingPocl = _crashing(POCL)  # its `epoch` picks the test's validation Rouge-L


def _run_pocl(make_model, tokenizer, examples, ckpt=None, crash_at=None):
    student, teacher = make_model(seed=1), make_model(seed=2, hidden_size=32)
    meth = _CrashingPocl(n_stages=2)
    meth.crash_at = crash_at
    difficulty = np.random.default_rng(0).random(len(examples))
    res = train(student, examples, POCL_BUDGET, seed=7, pad_id=tokenizer.pad_token_id, method=meth,
                teacher=OnlineTeacher(teacher, "fp32", torch.device("cpu")), kd_ratio=0.7,
                difficulty=difficulty, validate=lambda m: {"val_loss": 1.0, "val_rouge_l": VAL_ROUGE[meth.epoch]},
                checkpoint=ckpt)
    return student, res


# steps per epoch: 3, 3 (stage 0: 10 of 20 examples), 5, 5 (stage 1)
# crash at: mid-stage 0; the restart; mid-epoch 2; mid-epoch 3 -> best epoch of the segment so far
@pytest.mark.parametrize("crash_at, best", [(4, 0), (6, 0), (8, None), (13, 2)])
def test_pocl_resumed_inside_a_restart_segment_equals_an_uninterrupted_run(crash_at, best, make_model, tokenizer,
                                                                          examples, tmp_path, capsys):
    ref, ref_res = _run_pocl(make_model, tokenizer, examples)
    assert POCL(n_stages=2).restarts(4) == [2] and len(ref_res.trace) == 16
    assert ref_res.stats["selected_epoch"] == 2
    with pytest.raises(_Crash):
        _run_pocl(make_model, tokenizer, examples, Checkpoint(tmp_path / "run.pt", 0, key="k"), crash_at=crash_at)
    saved = torch.load(tmp_path / "run.pt", weights_only=True)["loop"]
    assert saved["step"] == crash_at and (saved["best"][1] if saved["best"] else None) == best
    got, res = _run_pocl(make_model, tokenizer, examples, Checkpoint(tmp_path / "run.pt", 0, key="k"))
    assert "resuming from checkpoint" in capsys.readouterr().err
    for (name, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), name
    cols = ["step", "epoch", "loss", "ce", "distill", "lr", "tokens", "examples", "stage", "kd_ratio"]
    assert res.trace[cols].equals(ref_res.trace[cols])  # the second stage's fresh cosine included
    assert res.trace["lr"].iloc[6] == ref_res.trace["lr"].iloc[0]  # (warm-up restarts at epoch 2)
    assert res.epochs.drop(columns="wall_s").equals(ref_res.epochs.drop(columns="wall_s"))
    assert res.stats["selected_epoch"] == 2


# --- resuming an on-policy run (kdbench/onpolicy.py) ---------------------------------------
class _RisingDistiLLM(METHODS["distillm"]):
    """DistiLLM whose validation loss is always seen rising, so that its adaptive threshold
    moves every epoch (0.7, 0.8, 0.9) whatever the weights do."""

    def observe_validation_loss(self, loss):
        super().observe_validation_loss(loss if self.mark is None else self.mark + self.loss_eps)


ON_POLICY = {"gkd": (METHODS["gkd"], {"lmbda": 0.5}),  # fresh samples only, no state of its own
             "distillm": (_RisingDistiLLM, {"init_threshold": 0.7, "capacity": 2, "replay_ratio": "constant"})}


def _run_on_policy(name, make_model, tokenizer, examples, ckpt=None, crash_at=None):
    from kdbench.onpolicy import OnPolicy, Teacher

    base, params = ON_POLICY[name]
    meth = _crashing(base)(**params)
    meth.crash_at = crash_at
    student = make_model(seed=1)
    teacher = OnlineTeacher(make_model(seed=2, hidden_size=32), "fp32", torch.device("cpu"))
    sampler = OnPolicy(meth, examples, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, max_length=512,
                       max_new_tokens=6, precision="fp32", seed=7, validation=examples[:4], model=student)
    res = train(student, examples, BUDGET, seed=7, pad_id=tokenizer.pad_token_id, method=meth,
                teacher=Teacher(teacher, teacher), kd_ratio=1.0, on_policy=sampler, checkpoint=ckpt)
    return student, meth, sampler, res


@pytest.mark.parametrize("name", sorted(ON_POLICY))
@pytest.mark.parametrize("crash_at", [3, 7])  # mid-epoch 0; mid-epoch 1, after the first epoch's validation
def test_on_policy_run_resumed_after_some_steps_equals_an_uninterrupted_one(name, crash_at, make_model, tokenizer,
                                                                           examples, tmp_path, capsys):
    ref, ref_meth, ref_sampler, ref_res = _run_on_policy(name, make_model, tokenizer, examples)
    with pytest.raises(_Crash):
        _run_on_policy(name, make_model, tokenizer, examples, Checkpoint(tmp_path / "run.pt", 0, key="k"), crash_at)
    saved = torch.load(tmp_path / "run.pt", weights_only=True)["loop"]
    assert saved["step"] == crash_at and any(r["on_policy_batch"] for r in saved["trace"])  # after student samples
    got, meth, sampler, res = _run_on_policy(name, make_model, tokenizer, examples,
                                             Checkpoint(tmp_path / "run.pt", 0, key="k"))
    assert "resuming from checkpoint" in capsys.readouterr().err  # the replay buffer is plain values
    for (key, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), key
    assert meth.state_dict() == ref_meth.state_dict()
    assert sampler.state_dict()["rng"] == ref_sampler.state_dict()["rng"]
    assert [e.ids for e in sampler.buffer] == [e.ids for e in ref_sampler.buffer]
    cols = ["step", "epoch", "loss", "ce", "distill", "lr", "tokens", "on_policy", "on_policy_batch", "replay_batch"]
    assert res.trace[cols].equals(ref_res.trace[cols])
    if name == "distillm":  # the threshold moved and the buffer was replayed from
        assert meth.threshold == pytest.approx(0.9) and len(sampler.buffer) == 2
        assert ref_res.trace["replay_batch"].any()
        assert ref_res.trace["sgo_threshold"].tolist() == pytest.approx([0.7] * 5 + [0.8] * 5)


def test_digest_of_further_inputs_changes_with_any_file_or_array(tmp_path):
    from kdbench.resume import digest

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "teacher" / "config.json").write_text("{}")
    difficulty = np.arange(5, dtype=float)
    first = digest(tmp_path / "teacher", difficulty)
    assert digest(tmp_path / "teacher", difficulty.copy()) == first  # contents, not identity
    assert digest(tmp_path / "teacher", difficulty[::-1].copy()) != first  # rescored profile
    assert digest(None, difficulty) != first
    (tmp_path / "teacher" / "model.safetensors").write_bytes(b"weightz")  # retrained teacher
    assert digest(tmp_path / "teacher", difficulty) != first
