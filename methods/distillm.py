"""DistiLLM: skew KL with adaptive off-policy student-generated outputs (SGO).

Loss on every batch, by `divergence` (the reference scripts pick it per pair: skew forward KL
for the GPT-2 base student, `--type adaptive-sfkl`; skew reverse KL for the larger GPT-2 and
every OPT student, `adaptive-srkl`):

    srkl (default)  L = τ² · token mean of KL(q ‖ α q + (1−α) p)     (as `srkl`)
    sfkl            L = τ² · token mean of KL(p ‖ α p + (1−α) q)     (as `skl`)

with α = 0.1. Its scripts start from the student fine-tuned on the training split
(`starts_from = "sft"`). Which batches are the student's own samples (kdbench/onpolicy.py)
follows the reference's training loop. A threshold θ starts at `init_threshold`; the student's
validation cross-entropy is measured before training and after every epoch, and whenever it
is at least `loss_eps` above the last value that moved θ (at first the value before
training), θ rises by 0.1 (at most 1) and that value becomes the new mark. At fraction s of
training the shares are

    on_policy = θ·(1 − s)   fresh student samples   (replay_ratio "decreasing"; "constant":
    replay    = θ − on_policy   replayed samples     θ/2; "increasing": θ·s)

from a replay buffer of the last `capacity` samples, fresh ones standing in for replayed ones
until it is full. θ stays 0 while the validation loss does not rise: DistiLLM then trains
like its skew divergence on the references and generates nothing. Constants and the
reference files they come from: docs/protocol.md.

Reference: Ko et al., DistiLLM: Towards Streamlined Distillation for Large Language Models,
ICML 2024 (jongwooko/distillm).
"""
from kdbench import divergences as D
from kdbench.method import Method as Base, check, check_choice, check_temperature, check_unit

THRESHOLD_STEP = 0.1  # rise of θ per rise of the validation loss (finetune.py, hard-coded there)
REPLAY_RATIOS = ("decreasing", "constant", "increasing")
DIVERGENCES = {"srkl": D.skew_reverse_kl, "sfkl": D.skew_forward_kl}


class Method(Base):
    train_on = "mixed"
    uses_validation_loss = True
    starts_from = "sft"  # its scripts start from the init checkpoint (docs/protocol.md)
    references = ["Ko et al., DistiLLM: Towards Streamlined Distillation for Large Language "
                  "Models, ICML 2024"]

    def __init__(self, alpha: float = 0.1, temperature: float = 1.0, init_threshold: float = 0.0,
                 loss_eps: float = 0.1, capacity: int = 1000, replay_ratio: str = "decreasing",
                 max_new_tokens: int | None = None, divergence: str = "srkl"):
        self.divergence = check_choice("divergence", divergence, tuple(DIVERGENCES))
        self.alpha = check_unit("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.threshold = check_unit("init_threshold", init_threshold)
        check(isinstance(loss_eps, (int, float)) and loss_eps >= 0, "loss_eps", loss_eps, "a number >= 0")
        check(isinstance(capacity, int) and capacity >= 0, "capacity", capacity, "an integer >= 0")
        check_choice("replay_ratio", replay_ratio, REPLAY_RATIOS)
        check(max_new_tokens is None or (isinstance(max_new_tokens, int) and max_new_tokens >= 1),
              "max_new_tokens", max_new_tokens, "a positive integer or null")
        self.loss_eps, self.replay_capacity, self.replay_ratio = float(loss_eps), int(capacity), replay_ratio
        self.max_new_tokens = max_new_tokens
        self.mark: float | None = None  # validation loss the threshold last moved at

    def observe_validation_loss(self, loss: float) -> None:
        if self.mark is None:
            self.mark = loss
        elif loss >= self.mark + self.loss_eps:
            self.threshold = min(1.0, self.threshold + THRESHOLD_STEP)
            self.mark = loss

    def state_dict(self):
        return {"threshold": self.threshold, "mark": self.mark}

    def load_state_dict(self, state):
        self.threshold, self.mark = state["threshold"], state["mark"]

    def schedule(self, progress):
        s = progress.fraction
        share = {"decreasing": 1 - s, "constant": 0.5, "increasing": s}[self.replay_ratio]
        fresh = self.threshold * share
        return {"on_policy": fresh, "replay": self.threshold - fresh, "sgo_threshold": self.threshold}

    def loss(self, student_logits, teacher_logits, mask, progress):
        return DIVERGENCES[self.divergence](student_logits, teacher_logits, mask, alpha=self.alpha,
                                            temperature=self.temperature)
