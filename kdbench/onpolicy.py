"""Training on the student's own samples: the engine side of methods with train_on = "mixed"
(GKD, DistiLLM), sampled during training, and of train_on = "pairs" (DistiLLM-2), sampled
before it (`Pairs`, at the end of this module).

Every optimizer step, the method's schedule gives two shares in [0, 1] (logged in the trace):
    on_policy   fresh student samples
    replay      student samples drawn again from a buffer of earlier ones
One uniform draw u per step picks the source of all the step's micro-batches:
    u < on_policy              fresh samples (kept in the buffer if the method has one)
    u < on_policy + replay     samples drawn uniformly from the buffer, without replacement; fresh
                               ones (kept) while the buffer holds fewer than `replay_capacity`
    otherwise                  the reference batches the engine built
GKD is on_policy = λ with no buffer; DistiLLM's adaptive schedule uses both (docs/protocol.md).

A fresh sample answers the batch's own prompts: the student samples with the protocol's settings
(temperature 1, top_p 1, top_k 0; `kdbench.generate.sample_ids`), at most the method's
`max_new_tokens` (default: the profile's evaluation.max_new_tokens) and never past the data's
max_length. The batch is prompt + sampled answer, the loss mask on the sampled tokens (EOS
included when the student sampled it). The teacher scores these sequences online (`Teacher`):
a logit cache only covers the references. Sampling time is part of the training wall time.

Per step the trace gets `on_policy_batch` (1: student samples, fresh or replayed; 0:
references), `replay_batch` (1: replayed) and `gen_s` (seconds spent sampling).
"""
from __future__ import annotations

import collections
import time

import numpy as np
import torch

from kdbench.data import Encoded, collate
from kdbench.fused import token_nll
from kdbench.generate import sample_ids
from kdbench.method import Method, Progress
from kdbench.models import autocast


class OnPolicy:
    """Replaces a step's reference batches by student samples when the method's schedule says so.

    examples: the encoded training set (prompts are read from it by example index);
    validation: the encoded validation split, for methods with uses_validation_loss (its
    student cross-entropy is reported to the method now, with `model`, and after every epoch).
    """

    def __init__(self, method: Method, examples: list[Encoded], *, pad_id: int, eos_id: int,
                 max_length: int, max_new_tokens: int | None, precision: str, seed: int,
                 validation: list[Encoded] | None = None, model=None):
        self.method, self.pad_id, self.eos_id = method, pad_id, eos_id
        self.examples = {e.index: e for e in examples}
        self.max_length, self.precision = max_length, precision
        self.max_new_tokens = method.max_new_tokens or max_new_tokens or max_length
        self.rng = np.random.default_rng([seed, 3])
        self.capacity = int(method.replay_capacity)
        self.buffer: collections.deque[Encoded] = collections.deque(maxlen=self.capacity)
        self.validation = validation if method.uses_validation_loss else None
        if self.validation is not None:
            method.observe_validation_loss(validation_loss(model, self.validation, pad_id, precision))

    def window(self, window: list[dict], progress: Progress, model) -> tuple[list[dict], dict]:
        """The step's micro-batches (references or student samples) and its trace columns."""
        fresh = float(progress.values.get("on_policy", 0.0))
        replay = float(progress.values.get("replay", 0.0))
        u = self.rng.random()
        row = {"on_policy_batch": 0.0, "replay_batch": 0.0, "gen_s": 0.0}
        if u >= fresh + replay:
            return window, row
        from_buffer = u >= fresh and self.capacity > 0 and len(self.buffer) >= self.capacity
        t0 = time.perf_counter()
        out = []
        for batch in window:
            idx = batch["index"].tolist()
            if from_buffer:
                pick = self.rng.choice(len(self.buffer), size=min(len(idx), len(self.buffer)), replace=False)
                samples = [self.buffer[j] for j in pick]
            else:
                samples = self.sample(model, idx)
                self.buffer.extend(samples)
            b = collate(samples, self.pad_id)
            b["on_policy"] = torch.ones((), dtype=torch.bool)  # marks the batch for `Teacher`
            out.append(b)
        row.update(on_policy_batch=1.0, replay_batch=float(from_buffer), gen_s=time.perf_counter() - t0)
        return out, row

    def sample(self, model, idx: list[int]) -> list[Encoded]:
        """The student's answers to the prompts of examples `idx`, as training sequences."""
        prompts = [self.examples[i].ids[:self.examples[i].n_prompt] for i in idx]
        cap = min(self.max_new_tokens, self.max_length - max(len(p) for p in prompts))  # >= 1: encode() checks
        was_training = model.training
        model.eval()
        news = sample_ids(model, prompts, eos_id=self.eos_id, pad_id=self.pad_id, max_new_tokens=cap,
                          precision=self.precision)
        model.train(was_training)
        return [Encoded(p + n, len(p), i) for p, n, i in zip(prompts, news, idx)]

    def state_dict(self) -> dict:
        """The generator and the replay buffer, for a resumable run's checkpoint (kdbench/resume.py):
        plain values only, each buffered sample as (ids, n_prompt, index)."""
        return {"rng": self.rng.bit_generator.state, "buffer": [(e.ids, e.n_prompt, e.index) for e in self.buffer]}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.buffer.clear()
        self.buffer.extend(Encoded(list(ids), n, i) for ids, n, i in state["buffer"])

    def epoch_end(self, model) -> None:
        if self.validation is not None:
            self.method.observe_validation_loss(
                validation_loss(model, self.validation, self.pad_id, self.precision))


class Teacher:
    """Teacher logits for a batch: `reference` (cached or online) for the dataset's batches,
    `online` (the teacher model) for batches of student samples."""

    def __init__(self, reference, online):
        self.reference, self.online = reference, online

    def __call__(self, batch: dict) -> torch.Tensor:
        return (self.online if "on_policy" in batch else self.reference)(batch)


class Pairs:
    """The batches of a train_on = "pairs" method: every batch of the step, built from the
    teacher's responses (`teacher`, the engine's training examples), is rebuilt as those rows
    followed by the student's responses to the same prompts (`student`, matched by example
    index), both generated before training. `from_student` (B, T) marks the second half; the
    engine passes it, at the loss positions, to the method's `loss`. Nothing is sampled here,
    so there is no state and no trace column."""

    def __init__(self, teacher: list[Encoded], student: list[Encoded], *, pad_id: int):
        self.teacher = {e.index: e for e in teacher}
        self.student = {e.index: e for e in student}
        self.pad_id = pad_id

    def window(self, window: list[dict], progress: Progress, model) -> tuple[list[dict], dict]:
        out = []
        for batch in window:
            idx = batch["index"].tolist()
            b = collate([self.teacher[i] for i in idx] + [self.student[i] for i in idx], self.pad_id)
            b["from_student"] = (torch.arange(2 * len(idx)) >= len(idx))[:, None].expand_as(b["mask"]).clone()
            out.append(b)
        return out, {}

    def epoch_end(self, model) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@torch.no_grad()
def validation_loss(model, examples: list[Encoded], pad_id: int, precision: str,
                    batch_size: int = 32) -> float:
    """The student's cross-entropy (nats per response token) on `examples`, references as targets."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(examples, key=lambda e: len(e.ids))
    total, n = 0.0, 0
    for s in range(0, len(order), batch_size):
        b = {k: v.to(dev) for k, v in collate(order[s:s + batch_size], pad_id).items()}
        m = b["mask"]
        with autocast(precision, dev):
            total += token_nll(model, b["input_ids"], m, b["targets"][m], "sum").item()
        n += int(m.sum())
    model.train(was_training)
    return total / max(1, n)
