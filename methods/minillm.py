"""MiniLLM: reverse-KL distillation by policy gradient, with the reference code's three devices.

The student q_θ minimises the sequence-level reverse KL to the teacher p,
    KL(q_θ ‖ p) = E_{y ~ q_θ} Σ_t log q_θ(y_t | y_<t, x) / p(y_t | y_<t, x),
by PPO over rollouts it samples and stores itself (train_on = "rollouts"). Per window of
prompts (one optimizer step's batch), `rollout` samples one answer per prompt and scores it:

  teacher-mixed sampling  every token drawn from (1 − α)·q_θ + α·p, α = `teacher_mix` (0.2);
                          importance weight of a token w_t = q_θ(y_t) / ((1 − α) q_θ(y_t) + α p(y_t))
  reward per token        r_t = clip((log p(y_t) − log q_θ(y_t)) / `reward_scaling`, ±`reward_clip`)
  return                  G_t = Σ_{k ≥ t} γ^{k−t} r_k (γ = `gamma`, 0.95); `return_from: next`
                          gives the paper's long-term part, G_{t+1}, instead
  length normalisation    G_t divided by the number of tokens it sums (`length_norm`)
  advantage               A_t: the returns whitened over the window's tokens

(q_θ, p and the log-probabilities at the sampled tokens are those of the sampling policy,
stored with the rollouts.) Then `inner_steps` = `ppo_epochs` (4) optimizer steps each train on
the whole window's rollouts, each micro-batch's loss being

  PPO clipping            pg = token mean of max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)),
                          ρ_t = w_t · q_θ'(y_t) / q_θ(y_t), ε = `clip` (0.2), θ' the current weights
  single-step term        reg = token mean of KL(q_θ'(·|y_<t, x) ‖ p(·|y_<t, x)): the per-token
                          part of the gradient computed exactly over the vocabulary (`loss`;
                          `single_step: false` drops it)
  pre-training loss       pt = (1 − `pt_kd_ratio`)·CE + `pt_kd_ratio`·KL(p ‖ q_θ') on a batch of
                          plain pre-training text of the same size (kdbench.rollouts: the
                          profile's training split as language-model text; reported as the
                          true KL where the reference returns the cross-entropy −Σ p log q,
                          same gradient)
  loss                    pg + reg + `lm_coef` · pt

Micro-batches are weighted by their share of the window's rollout tokens (the engine's
convention). Every constant's reference file, and where the suite differs: docs/protocol.md,
"MiniLLM". The reference's code includes r_t in G_t (minillm/losses.py,
`_get_advantages_and_returns`), so the sampled estimate covers the current token as well
as the exact single-step term; the paper's decomposition (eq. 5) puts the long-term part at
G_{t+1}, `return_from: next`. Its scripts start from the student fine-tuned on the training
split (`starts_from = "sft"`).

Reference: Gu et al., MiniLLM: Knowledge Distillation of Large Language Models, ICLR 2024
(microsoft/LMOps, minillm/; jongwooko/distillm keeps a copy in minillm/).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdbench import divergences as D
from kdbench.data import Encoded
from kdbench.method import Method as Base, Term, check, check_choice, check_unit

RETURN_FROM = ("current", "next")


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision logits, float64 kept."""
    return x if x.dtype == torch.float64 else x.float()


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row: (N, V), (N,) -> (N,) float32 (float64 for float64)."""
    return _wide(logits).log_softmax(-1).gather(1, targets[:, None]).squeeze(1)


def importance_weights(log_q: torch.Tensor, log_p: torch.Tensor, alpha: float) -> torch.Tensor:
    """q / ((1 − α) q + α p) at the sampled tokens, from their log-probabilities (N,)."""
    if alpha <= 0.0:
        return torch.ones_like(log_q)
    log_mix = torch.logaddexp(log_q + math.log1p(-alpha), log_p + math.log(alpha))
    return torch.exp(log_q - log_mix)


def token_rewards(log_q: torch.Tensor, log_p: torch.Tensor, scaling: float, clip: float) -> torch.Tensor:
    """r_t = clip((log p − log q) / scaling, ±clip) (N,)."""
    return ((log_p - log_q) / scaling).clamp(-clip, clip)


def returns(rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float, length_norm: bool,
            start: str = "current") -> torch.Tensor:
    """Per-token returns of B rollouts: rewards and mask (B, L), each row's tokens first and
    zeros after its end. start "current": G_t = Σ_{k ≥ t} γ^{k−t} r_k; "next": G_{t+1} (0 at
    the last token). length_norm divides by the number of tokens summed (at least 1).
    (B, L), 0 outside the mask."""
    rewards = _wide(rewards)
    mask = mask.to(rewards.dtype)
    out, acc = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        acc = rewards[:, t] + gamma * acc
        out[:, t] = acc
    left = mask.flip(1).cumsum(1).flip(1)  # tokens from t to the end, t included
    if start == "next":
        out = torch.cat([out[:, 1:], torch.zeros_like(out[:, :1])], 1)
        left = left - 1
    if length_norm:
        out = out / left.clamp(min=1)
    return out * mask


def whiten(x: torch.Tensor) -> torch.Tensor:
    """(x − mean) / sqrt(var + 1e-8) over all values (var with Bessel's correction; 0 for fewer than 2)."""
    var = x.var() if x.numel() > 1 else torch.zeros((), dtype=x.dtype, device=x.device)
    return (x - x.mean()) * torch.rsqrt(var + 1e-8)


def clipped_surrogate(log_q: torch.Tensor, old_log_q: torch.Tensor, weight: torch.Tensor,
                      advantage: torch.Tensor, clip: float) -> torch.Tensor:
    """Token mean of max(−A ρ, −A clip(ρ, 1 − ε, 1 + ε)), ρ = w · exp(log q − old log q); all (N,)."""
    ratio = torch.exp(log_q - old_log_q) * weight
    return torch.maximum(-advantage * ratio, -advantage * ratio.clamp(1 - clip, 1 + clip)).mean()


def _rows(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-token values (N,) of a batch's response positions `mask` (B, T), row-major, as
    (B, L) left-aligned rows and their (B, L) mask."""
    n = mask.sum(1)
    valid = torch.arange(int(n.max()), device=mask.device)[None] < n[:, None]
    out = torch.zeros(valid.shape, dtype=values.dtype, device=values.device)
    out[valid] = values
    return out, valid


class Method(Base):
    train_on = "rollouts"
    starts_from = "sft"  # its scripts start from the SFT-initialised student (docs/protocol.md)
    references = ["Gu et al., MiniLLM: Knowledge Distillation of Large Language Models, ICLR 2024"]

    def __init__(self, teacher_mix: float = 0.2, ppo_epochs: int = 4, clip: float = 0.2, gamma: float = 0.95,
                 reward_scaling: float = 0.5, reward_clip: float = 100.0, length_norm: bool = True,
                 single_step: bool = True, return_from: str = "current", lm_coef: float = 1.0,
                 pt_kd_ratio: float = 0.5, max_new_tokens: int | None = None):
        self.teacher_mix = check_unit("teacher_mix", teacher_mix)
        check(isinstance(ppo_epochs, int) and ppo_epochs >= 1, "ppo_epochs", ppo_epochs, "an integer >= 1")
        self.inner_steps = ppo_epochs
        for name, value in (("clip", clip), ("reward_scaling", reward_scaling), ("reward_clip", reward_clip)):
            check(isinstance(value, (int, float)) and 0 < value < math.inf, name, value, "a finite number > 0")
        self.clip, self.reward_scaling, self.reward_clip = float(clip), float(reward_scaling), float(reward_clip)
        self.gamma = check_unit("gamma", gamma)
        self.length_norm, self.single_step = bool(length_norm), bool(single_step)
        self.return_from = check_choice("return_from", return_from, RETURN_FROM)
        check(isinstance(lm_coef, (int, float)) and 0 <= lm_coef < math.inf, "lm_coef", lm_coef, "a finite number >= 0")
        self.lm_coef = float(lm_coef)
        self.pt_kd_ratio = check_unit("pt_kd_ratio", pt_kd_ratio)
        check(max_new_tokens is None or (isinstance(max_new_tokens, int) and max_new_tokens >= 1),
              "max_new_tokens", max_new_tokens, "a positive integer or null")
        self.max_new_tokens = max_new_tokens
        self.store: list[dict] = []  # the current window's rollouts, one dict of tensors per micro-batch

    def loss(self, student_logits, teacher_logits, mask, progress):
        """The single-step term: token mean of KL(q ‖ p), exact over the vocabulary."""
        return D.reverse_kl(student_logits, teacher_logits, mask)

    def rollout(self, window, env, progress):
        store = []
        for examples in window:
            prompts = [e.ids[:e.n_prompt] for e in examples]
            answers = env.sample(prompts, teacher_mix=self.teacher_mix)
            batch = env.batch([Encoded(p + a, len(p), e.index) for p, a, e in zip(prompts, answers, examples)])
            targets = batch["targets"][batch["mask"]]
            log_q = token_log_probs(env.student(batch, train=False), targets)  # the sampling policy's
            log_p = token_log_probs(env.teacher(batch), targets)
            rewards, valid = _rows(token_rewards(log_q, log_p, self.reward_scaling, self.reward_clip), batch["mask"])
            store.append({"input_ids": batch["input_ids"], "mask": batch["mask"], "old_log_q": log_q,
                          "weight": importance_weights(log_q, log_p, self.teacher_mix),
                          "returns": returns(rewards, valid, gamma=self.gamma, length_norm=self.length_norm,
                                             start=self.return_from)[valid],
                          "log_ratio": (log_p - log_q).mean()})
        # advantages: the returns whitened over the window's tokens
        advantages = whiten(torch.cat([mb.pop("returns") for mb in store])).split([len(mb["old_log_q"]) for mb in store])
        for mb, adv in zip(store, advantages):
            mb["advantage"] = adv
        self.store = store

    def rollout_losses(self, inner, env, progress):
        n_window = sum(len(mb["old_log_q"]) for mb in self.store)
        for mb in self.store:
            mb = {k: v.to(env.dev) for k, v in mb.items()}
            batch = {"input_ids": mb["input_ids"], "mask": mb["mask"]}
            logits = env.student(batch)
            log_q = token_log_probs(logits, mb["input_ids"].roll(-1, 1)[mb["mask"]])
            pg = clipped_surrogate(log_q, mb["old_log_q"], mb["weight"], mb["advantage"], self.clip)
            reg = self.loss(logits, env.teacher(batch), torch.ones_like(log_q, dtype=torch.bool), progress)
            loss = pg + reg if self.single_step else pg
            pt = torch.zeros((), device=env.dev)
            if self.lm_coef > 0:
                lm = env.corpus_batch(len(mb["input_ids"]))
                s = env.student(lm)
                ce = F.cross_entropy(_wide(s), lm["targets"][lm["mask"]])
                everywhere = torch.ones(len(s), dtype=torch.bool, device=env.dev)
                pt = (1 - self.pt_kd_ratio) * ce + self.pt_kd_ratio * D.forward_kl(s, env.teacher(lm), everywhere)
                loss = loss + self.lm_coef * pt
            n = len(log_q)
            yield Term(loss, n / n_window, n, {"ce": -log_q.detach().mean(), "distill": loss.detach(),
                                               "pg": pg.detach(), "single_step": reg.detach(), "pt": pt.detach(),
                                               "reward": mb["log_ratio"]})

    def state_dict(self):
        return {"store": self.store}

    def load_state_dict(self, state):
        self.store = list(state["store"])
