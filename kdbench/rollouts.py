"""What a method that owns its rollouts works with (train_on = "rollouts"; MiniLLM).

The engine (`kdbench.train`, `_Rollouts`) hands every window of prompt batches to the method's
`rollout` (sampling and scoring; its wall time is the trace's `gen_s`) and then asks it for
`inner_steps` optimizer steps of micro-batch losses (`rollout_losses`); it keeps the
optimizer, schedule, checkpoints, validation, trace and timing. The method samples and runs
the models through a `Rollouts`:

    env.sample(prompts, teacher_mix=α)   each prompt's continuation (token ids, EOS included where
                                         one was drawn), every token drawn from (1 − α)·q + α·p,
                                         q the student's and p the teacher's next-token
                                         distribution, with the protocol's settings (temperature
                                         1, top_p 1, top_k 0); the student in eval mode
    env.batch(examples, loss_on)         kdbench.data.collate on the device: the loss positions
                                         are the response tokens (or every token)
    env.student(batch)                   (N, V) student logits at the batch's N loss positions,
                                         with the graph (`train=False`: eval mode, no graph)
    env.teacher(batch)                   (N, V) teacher logits there, without a graph
    env.corpus_batch(n)                  n sequences of the pre-training corpus, every token
                                         carrying the loss, in a shuffled order that restarts
                                         at each pass over the corpus

V is the vocabulary the pair shares (`vocab_size`). Samples are at most `max_new_tokens` new
tokens and never run past `max_length`. The sampler draws with the global torch generator (in
every checkpoint); the corpus order is this object's state (`state_dict`).
"""
from __future__ import annotations

import numpy as np
import torch

from kdbench.data import Encoded, collate
from kdbench.errors import UserError
from kdbench.generate import sample_ids
from kdbench.models import autocast, rows_logits


class Rollouts:
    def __init__(self, model, teacher, *, corpus: list[Encoded], pad_id: int, eos_id: int, max_length: int,
                 max_new_tokens: int | None, precision: str, seed: int, vocab_size: int | None = None):
        self.model, self.teacher_model = model, teacher.eval().requires_grad_(False)
        self.corpus, self.pad_id, self.eos_id = corpus, pad_id, eos_id
        self.max_length, self.max_new_tokens = max_length, max_new_tokens or max_length
        self.precision, self.vocab_size = precision, vocab_size
        self.dev = next(model.parameters()).device
        self.rng = np.random.default_rng([seed, 4])
        self.order: list[int] = []  # the corpus order of the current pass, and the position in it
        self.pos = 0

    def sample(self, prompts: list[list[int]], teacher_mix: float = 0.0) -> list[list[int]]:
        cap = min(self.max_new_tokens, self.max_length - max(len(p) for p in prompts))  # >= 1: encode() checks
        was_training = self.model.training
        self.model.eval()
        news = sample_ids(self.model, prompts, eos_id=self.eos_id, pad_id=self.pad_id, max_new_tokens=cap,
                          precision=self.precision, mix=(self.teacher_model, teacher_mix) if teacher_mix > 0 else None)
        self.model.train(was_training)
        return news

    def batch(self, examples: list[Encoded], loss_on: str = "response") -> dict[str, torch.Tensor]:
        return {k: v.to(self.dev) for k, v in collate(examples, self.pad_id, loss_on).items()}

    def student(self, batch: dict, train: bool = True) -> torch.Tensor:
        if train:
            with autocast(self.precision, self.dev):
                return rows_logits(self.model, batch["input_ids"], batch["mask"])[:, :self.vocab_size]
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), autocast(self.precision, self.dev):
            out = rows_logits(self.model, batch["input_ids"], batch["mask"])[:, :self.vocab_size]
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def teacher(self, batch: dict) -> torch.Tensor:
        with autocast(self.precision, self.dev):
            return rows_logits(self.teacher_model, batch["input_ids"], batch["mask"])[:, :self.vocab_size]

    def corpus_batch(self, n: int) -> dict[str, torch.Tensor]:
        if not self.corpus:
            raise UserError("the method asks for pre-training text but the run's corpus is empty; check the training split.")
        picked: list[int] = []
        while len(picked) < n:
            if self.pos >= len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.corpus)).tolist(), 0
            take = self.order[self.pos:self.pos + n - len(picked)]
            picked += take
            self.pos += len(take)
        return self.batch([self.corpus[i] for i in picked], loss_on="all")

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": list(self.order), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order, self.pos = list(state["order"]), int(state["pos"])

    def epoch_end(self, model) -> None:
        pass
