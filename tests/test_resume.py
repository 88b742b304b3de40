"""Resumable training (kdbench/resume.py) and non-finite values (kdbench/train.py).

In-process: a run interrupted after any step and resumed from its checkpoint ends with the
same weights, trace and method state as an uninterrupted run; a checkpoint of other inputs is
ignored; NaN gradients with a finite loss stop before the optimizer step, naming the method.
Out of process: a distill job killed with SIGKILL mid-epoch and rerun gives bitwise-equal
weights to an uninterrupted one."""
import os
import shutil
import signal
import subprocess
import sys
import time

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
TAID = M.discover()["taid"]  # a method with state of its own (t, momentum)


class _Crash(Exception):
    pass


class _CrashingTaid(TAID):
    """TAID that dies at the given global step, as a killed job would."""

    crash_at = None

    def loss(self, student_logits, teacher_logits, mask, progress):
        if progress.step == self.crash_at:
            raise _Crash
        return super().loss(student_logits, teacher_logits, mask, progress)


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
def test_resumed_run_equals_an_uninterrupted_one(crash_at, make_model, tokenizer, examples, tmp_path):
    ref, ref_meth, ref_res = _run(make_model, tokenizer, examples)
    ckpt = Checkpoint(tmp_path / "run.pt", every_minutes=0, key="k")
    with pytest.raises(_Crash):
        _run(make_model, tokenizer, examples, ckpt, crash_at=crash_at)
    assert torch.load(tmp_path / "run.pt", weights_only=False)["loop"]["step"] == crash_at
    got, meth, res = _run(make_model, tokenizer, examples, Checkpoint(tmp_path / "run.pt", 0, key="k"))
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
    with pytest.raises(UserError, match=r"loss is finite but its gradients are not; method 'test_resume'") as e:
        train(student, examples, BUDGET, seed=0, pad_id=tokenizer.pad_token_id, method=_NaNGradient(),
              teacher=teacher, kd_ratio=0.5)
    assert "step 0" in str(e.value) and "\n" not in str(e.value)
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))  # no step taken


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
            seen = torch.load(ckpt, weights_only=False)["loop"]
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
