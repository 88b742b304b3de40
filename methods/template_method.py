"""TEMPLATE — copy me to methods/<name>.py to add a method; <name> becomes the method's name.

Discovery skips files whose name starts with "template" or "_", so this file itself is never
benchmarked. The copy is picked up by the DAG with no config edit: every discovered method is
run with the defaults of its `__init__`, and the config may override them by name or declare
variants (a grid).

Replace this docstring with: one line saying what the method is, its equation, and its
reference (authors, title, venue, year). As shipped, this template is a working method:
forward KL whose temperature moves linearly from `temperature_start` to `temperature_end`
over training,
    τ_s = τ_start + (τ_end − τ_start) · s / S,     L = τ_s² · token mean of KL(p ‖ q),
p = softmax(z_T / τ_s) the teacher's and q = softmax(z_S / τ_s) the student's distribution.
Reference: Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015.
"""
from __future__ import annotations

import numpy as np

from kdbench import divergences as D
from kdbench.method import EpochContext, Progress
from kdbench.method import Method as Base, check_temperature


class Method(Base):  # the class must be called `Method` and subclass kdbench.method.Method
    # --- class attributes the engine and the DAG read (delete the ones you leave default) ---
    # False for SFT-style methods: the teacher is never loaded and kd_ratio is 0.
    needs_teacher = True
    # True if `epoch_indices` reads ctx.difficulty: the DAG then scores the training set first.
    uses_difficulty = False
    # "reference" (the dataset's answers), "teacher_samples" (the teacher's sampled answers,
    # as in SeqKD), "mixed" (also the student's own samples, on the steps the schedule's
    # "on_policy" / "replay" shares pick; see kdbench/onpolicy.py and methods/gkd.py) or
    # "pairs" (the teacher's and the student's answers to every prompt, both sampled before
    # training and both in every batch; `loss` then gets the keyword `from_student`, True on
    # the student's tokens; see methods/distillm2.py).
    train_on = "reference"
    # Where the student starts, as the method's reference scripts do: "pretrained" (the pair's
    # student as it comes) or "sft" (that student first fine-tuned on the training split by the
    # `sft_init` stage, budget `training.init`: DistiLLM's and MiniLLM's *init* checkpoint).
    # The DAG builds the fine-tuned start only if some method asks for it.
    starts_from = "pretrained"
    # Listed by `python -m kdbench methods`.
    references = ["Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015"]

    # Defaults live in the keyword arguments: the config overrides them by name, each variant
    # is named after the values that differ (e.g. "temperature_end-2"), and the provenance
    # records them. Validate here with kdbench.method's check_temperature, check_unit,
    # check_choice, or check(ok, name, value, "what it must be") for anything else: a bad value
    # then stops `validate` and the dry run with one sentence naming the method and parameter.
    def __init__(self, temperature_start: float = 1.0, temperature_end: float = 1.0):
        self.temperature_start = check_temperature(temperature_start)
        self.temperature_end = check_temperature(temperature_end)

    # Optional. Called once per optimizer step, always before `loss`; the engine stores the
    # result in progress.values (so `loss` can read it) and logs it in the per-step trace. Return plain
    # floats. Conventional keys: "temperature", "alpha", "beta", "t", and "kd_ratio", which
    # overrides the config's weight of the distillation term for this step.
    def schedule(self, progress: Progress) -> dict[str, float]:
        frac = progress.fraction  # step / total_steps in [0, 1]; progress.epoch_fraction per epoch
        tau = self.temperature_start + (self.temperature_end - self.temperature_start) * frac
        return {"temperature": tau}

    # Required. The distillation term only: the engine adds the cross-entropy and weights the
    # two, (1 − kd_ratio)·CE + kd_ratio·loss.
    #   student_logits, teacher_logits: (N, V) at the N tokens that carry the loss (the engine
    #       never forms the other positions' logits), possibly bf16; teacher_logits is None
    #       when needs_teacher is False.
    #   mask: bool (N,), all True (kept so the divergences' signature stays the same).
    # Return a 0-d float32 tensor. Use kdbench.divergences: it fixes the direction of every
    # divergence, computes in float32, chunks large vocabularies, and keeps the teacher
    # constant. For a new per-token quantity write a row kernel and call D.token_mean(kernel, ...).
    def loss(self, student_logits, teacher_logits, mask, progress: Progress):
        return D.forward_kl(student_logits, teacher_logits, mask, temperature=progress.values["temperature"])

    # Optional. The training examples of this epoch, in order (a 1-D integer array of unique
    # indices in [0, ctx.n_examples)); None means all of them, shuffled by the engine.
    # ctx: n_examples, n_epochs, seed, difficulty (float array, higher is harder, or None).
    # A curriculum lives here, e.g. the easiest half in the first epoch:
    #     if epoch == 0 and ctx.difficulty is not None:
    #         order = np.argsort(ctx.difficulty, kind="stable")
    #         return order[: max(1, ctx.n_examples // 2)]
    # (and set uses_difficulty = True above).
    def epoch_indices(self, epoch: int, ctx: EpochContext) -> np.ndarray | None:
        return None

    # A method that samples, stores and trains on rollouts itself (MiniLLM: methods/minillm.py)
    # sets train_on = "rollouts" and inner_steps (optimizer steps per window of prompts) and
    # defines two hooks; the engine keeps the optimizer, schedule, checkpoints, validation and
    # timing. `env` is a kdbench.rollouts.Rollouts; Term and Encoded come from kdbench.method
    # and kdbench.data. For example, this method's loss on one sample per prompt, trained twice:
    #     train_on, inner_steps = "rollouts", 2
    #     def rollout(self, window, env, progress):       # before a window's first inner step
    #         self.batches = []                              # state_dict must return it
    #         for examples in window:                        # the step's micro-batches of prompts
    #             prompts = [e.ids[:e.n_prompt] for e in examples]
    #             answers = env.sample(prompts, teacher_mix=0.0)  # > 0 mixes in the teacher
    #             self.batches.append(env.batch([Encoded(p + a, len(p), e.index)
    #                                            for p, a, e in zip(prompts, answers, examples)]))
    #     def rollout_losses(self, inner, env, progress):  # inner = 0 .. inner_steps - 1
    #         for batch in self.batches:                    # (N, V) rows at the sampled tokens
    #             s, t = env.student(batch), env.teacher(batch)
    #             loss = self.loss(s, t, torch.ones(len(s), dtype=torch.bool), progress)
    #             ce = torch.nn.functional.cross_entropy(s.float(), batch["targets"][batch["mask"]])
    #             yield Term(loss, 1 / len(self.batches), len(s), {"ce": ce.detach(), "distill": loss.detach()})
