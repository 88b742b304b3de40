"""The one training engine: teacher SFT, student pre-training, student SFT and distillation.

AdamW, linear warm-up then cosine decay, gradient clipping, gradient accumulation with the
loss normalised by the response tokens of the whole accumulation window, length-bucketed
batches, bf16 autocast where supported, a per-step trace. The total loss of a step is

    (1 - kd_ratio) * CE(student, reference) + kd_ratio * method.loss(student, teacher, mask, progress)

with kd_ratio from the config, overridden per step by the method's schedule, and 0 for
methods that need no teacher. A method that owns its rollouts (train_on = "rollouts", MiniLLM)
gives its step's losses itself from rollouts it samples and stores; the engine keeps the
optimizer, schedule, checkpoints, validation, trace and timing (`_Rollouts`).

Model selection (docs/protocol.md): with a `validate(model) -> {"val_loss", "val_rouge_l"}`
callback, every epoch ends with a validation pass; `budget["selection"] == "best"` keeps the
weights of the epoch with the highest validation Rouge-L (ties: the earlier epoch), as the
instruction-KD papers do, and "last" keeps the final weights.

Restarts (`Method.restarts`, POCL's stages): the run is cut into segments at the given epochs;
each segment gets a fresh optimizer and its own warm-up + cosine schedule over its steps, and
starts from the previous segment's best epoch by validation Rouge-L (its last epoch without a
`validate` callback). Selection then looks at the last segment's epochs only.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from kdbench.data import Encoded, collate, make_batches
from kdbench.errors import UserError
from kdbench.method import EpochContext, Method, Progress, Term
from kdbench.fused import ProjectedLogits, cross_entropy as fused_cross_entropy
from kdbench.models import autocast, checkpoint_activations, rows_hidden, rows_logits
from kdbench.resume import Checkpoint


@dataclasses.dataclass
class Result:
    trace: pd.DataFrame    # one row per optimizer step
    epochs: pd.DataFrame   # one row per epoch
    bin_loss: pd.DataFrame  # per epoch x difficulty quintile (empty without a difficulty profile)
    stats: dict


def epoch_plan(method: Method | None, n_examples: int, n_epochs: int, seed: int,
               difficulty: np.ndarray | None) -> list[np.ndarray]:
    """The examples of every epoch: the method's curriculum, or all of them shuffled."""
    ctx = EpochContext(n_examples=n_examples, n_epochs=n_epochs, seed=seed, difficulty=difficulty)
    rng = np.random.default_rng([seed, 1])
    plan = []
    for e in range(n_epochs):
        idx = method.epoch_indices(e, ctx) if method is not None else None
        plan.append(rng.permutation(n_examples) if idx is None else np.asarray(idx, dtype=np.int64))
    return plan


def lr_factor(step: int, total: int, warmup: float, min_ratio: float) -> float:
    """Linear warm-up over `warmup` of the steps, then cosine decay to `min_ratio`."""
    n_warm = max(1, int(round(warmup * total)))
    if step < n_warm:
        return (step + 1) / n_warm
    t = (step - n_warm) / max(1, total - n_warm)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train(model, examples: list[Encoded], budget: dict, *, seed: int, pad_id: int,
          method: Method | None = None, teacher=None, kd_ratio: float = 0.0,
          difficulty: np.ndarray | None = None, vocab_size: int | None = None,
          on_policy=None, rollouts=None, validate=None, desc: str = "train",
          checkpoint: Checkpoint | None = None, fused: bool = False) -> Result:
    """Train `model` in place. `teacher(batch) -> (N, V)` logits at the N true entries of
    batch["mask"] (row-major) are needed when kd_ratio > 0.

    Where a step's losses come from: the engine's batches (`_References`), where `on_policy` (a
    kdbench.onpolicy.OnPolicy, or .Pairs) swaps in or adds student samples for methods that ask; or, for a method
    with train_on = "rollouts", the method itself (`_Rollouts`: `Method.rollout`,
    `Method.rollout_losses`), which samples and scores with `rollouts` (a kdbench.rollouts.Rollouts).
    `validate(model) -> dict` (optional) runs after every epoch; its values join the epoch's
    row, and `budget["selection"]` decides which epoch's weights the model ends with.

    With a `checkpoint`, the run resumes from it when there is one of the same run and saves
    one at every epoch end and every `checkpoint.every_minutes` (kdbench/resume.py); the
    caller removes it once the run's outputs are written.

    `fused` takes the large-vocabulary path (kdbench/fused.py): the student's output layer and
    its losses run chunk by chunk, never forming the (N, V) logits (`fused.use_fused` decides).
    """
    if not examples:
        raise UserError(f"{desc}: the training split has no examples; check the data files (prepare_data).")
    dev = next(model.parameters()).device
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 2])
    lengths = np.array([len(e.ids) for e in examples])
    plan = epoch_plan(method, len(examples), budget["epochs"], seed, difficulty)
    epoch_batches = [make_batches(p, lengths, budget["batch_size"], budget["bucket_window"], rng) for p in plan]
    bins = _quintiles(difficulty) if difficulty is not None else None
    suspect = _Suspect(desc, type(method).__module__.rpartition(".")[2] if method is not None else None, budget)
    if method is not None and method.train_on == "rollouts":
        source = _Rollouts(method, examples, rollouts, pad_id, budget["loss_on"])
    else:
        source = _References(model, examples, budget, pad_id, method, teacher, kd_ratio, vocab_size, fused,
                             on_policy, bins)
    # optimizer steps per epoch: one per window of `grad_accum` batches, times the method's inner steps
    steps_per_epoch = [math.ceil(len(b) / budget["grad_accum"]) * source.inner_steps for b in epoch_batches]
    total = max(1, sum(steps_per_epoch))

    restarts = sorted({e for e in (method.restarts(len(plan)) if method is not None else [])
                       if 0 < e < len(plan)})
    bounds = [0, *restarts, len(plan)]
    segment_steps = {bounds[i]: sum(steps_per_epoch[bounds[i]:bounds[i + 1]])
                     for i in range(len(bounds) - 1)}  # first epoch -> optimizer steps
    opt, sched = _optimizer(model, budget, segment_steps[0])

    state = LoopState(ce_sum=torch.zeros(len(examples), dtype=torch.float64, device=dev),
                      ce_n=torch.zeros(len(examples), dtype=torch.float64, device=dev))
    if checkpoint is not None and (restored := checkpoint.restore(model, opt, sched, method)) is not None:
        state = LoopState.from_dict(restored)
        state.ce_sum, state.ce_n = state.ce_sum.to(dev), state.ce_n.to(dev)
        if source.sampler is not None and state.on_policy is not None:
            source.sampler.load_state_dict(state.on_policy)
        segment = max(b for b in bounds[:-1] if b <= state.epoch)
        if segment > 0:  # a schedule's lambda is not in its state: rebuild it over this segment's steps
            opt, sched = _reload(_optimizer(model, budget, segment_steps[segment]), opt, sched)

    model.train()
    checkpoint_activations(model, budget.get("gradient_checkpointing", False))
    t0 = time.perf_counter() - state.elapsed_s
    bar = tqdm(total=total, initial=state.step, desc=desc, unit="step", file=sys.stderr, mininterval=2.0)
    while state.epoch < len(epoch_batches):
        epoch, batches = state.epoch, epoch_batches[state.epoch]
        if epoch in restarts and state.k == 0:
            if state.best is not None:
                model.load_state_dict(state.best[2])
            state.best = None
            opt, sched = _optimizer(model, budget, segment_steps[epoch])
        while state.k < steps_per_epoch[epoch]:
            progress = Progress(epoch=epoch, n_epochs=len(epoch_batches), step=state.step, total_steps=total,
                                epoch_step=state.k, epoch_steps=steps_per_epoch[epoch])
            progress.values = dict(method.schedule(progress)) if method is not None else {}
            row = _step(model, opt, sched, budget, source, suspect, state, batches, progress, t0)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", epoch=epoch, refresh=False)
            if checkpoint is not None and checkpoint.due() and state.k < steps_per_epoch[epoch]:
                state.elapsed_s = time.perf_counter() - t0
                _save(checkpoint, model, opt, sched, method, source.sampler, state)
        if source.sampler is not None:
            source.sampler.epoch_end(model)
        ep_extra, ep_end_s = {}, time.perf_counter() - t0
        if validate is not None:
            v_t0 = time.perf_counter()
            ep_extra = validate(model)
            state.val_wall_s += time.perf_counter() - v_t0
            model.train()
            if state.best is None or ep_extra["val_rouge_l"] > state.best[0]:
                state.best = (ep_extra["val_rouge_l"], epoch, copy.deepcopy(model.state_dict()))
        _end_epoch(state, plan[epoch], difficulty, bins, ep_end_s, ep_extra)
        state.ep_start_s = state.elapsed_s = time.perf_counter() - t0  # the next epoch starts after validation
        if checkpoint is not None:
            _save(checkpoint, model, opt, sched, method, source.sampler, state)
    bar.close()
    wall = time.perf_counter() - t0 - state.val_wall_s
    selected, best = len(epoch_batches) - 1, state.best
    if best is not None and budget.get("selection", "last") == "best":
        model.load_state_dict(best[2])
        selected = best[1]
    model.eval()
    checkpoint_activations(model, False)
    suspect.weights(model)
    ep_df = pd.DataFrame(state.epochs)
    tokens, seen = state.tokens, state.seen
    stats = {"selection": budget.get("selection", "last") if validate is not None else "last",
             "selected_epoch": selected, "n_epochs": len(epoch_batches),
             "val_loss_change_last20": val_loss_change(ep_df, steps_per_epoch),
             "val_rouge_l_selected": float(ep_df["val_rouge_l"].iloc[selected]) if "val_rouge_l" in ep_df else None,
             "val_wall_s": state.val_wall_s, "train_wall_s": wall, "train_tokens": tokens, "train_examples": seen,
             "train_steps": state.step, "train_tokens_per_s": tokens / wall if wall > 0 else float("nan"),
             "train_gen_s": sum(r.get("gen_s", 0.0) for r in state.trace),
             "examples_per_epoch": [len(p) for p in plan]}
    return Result(pd.DataFrame(state.trace), ep_df, pd.DataFrame(state.bin_rows), stats)


@dataclasses.dataclass
class LoopState:
    """The training loop's position and what it has accumulated: everything the rest of a run
    depends on besides the model, optimizer, schedule, RNGs and method. A checkpoint stores it
    as a plain dict (`as_dict`, `from_dict`) of numbers, tensors, lists, tuples and dicts."""

    epoch: int = 0            # the current epoch
    k: int = 0                # optimizer steps taken inside it
    step: int = 0             # optimizer steps taken in all
    tokens: int = 0           # training tokens so far (response tokens with loss_on: response)
    seen: int = 0             # training examples so far
    elapsed_s: float = 0.0    # run time at the last save (a resumed run's clock continues from it)
    ep_start_s: float = 0.0   # run time when the current epoch started
    ep_tokens: int = 0        # training tokens of the current epoch
    val_wall_s: float = 0.0   # seconds spent validating (kept out of the training time)
    trace: list[dict] = dataclasses.field(default_factory=list)     # one row per optimizer step
    epochs: list[dict] = dataclasses.field(default_factory=list)    # one row per finished epoch
    bin_rows: list[dict] = dataclasses.field(default_factory=list)  # per epoch x difficulty quintile
    # per-example response-token CE sums and counts of the epoch (N,) float64, for the difficulty bins
    ce_sum: torch.Tensor | None = None
    ce_n: torch.Tensor | None = None
    best: tuple | None = None  # (val_rouge_l, epoch, state_dict copy) of the segment's best epoch so far
    on_policy: dict | None = None  # the state of the run's sampler (OnPolicy or Rollouts `state_dict`)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> LoopState:
        return cls(**d)


def _collate_window(examples, window_idx: list[np.ndarray], pad_id: int, loss_on: str) -> list[dict]:
    """The window's batches of references (what the cross-entropy reads), one per index array."""
    return [collate([examples[i] for i in b], pad_id, loss_on) for b in window_idx]


class _References:
    """Step losses from the engine's batches (references, or teacher samples) through
    `_micro_step`: (1 - kd_ratio) * CE + kd_ratio * method.loss; on the steps a "mixed"
    method's schedule picks, the student's own samples instead (`on_policy`)."""

    inner_steps = 1

    def __init__(self, model, examples, budget, pad_id, method, teacher, kd_ratio, vocab_size, fused,
                 on_policy, bins):
        self.model, self.examples, self.budget, self.pad_id = model, examples, budget, pad_id
        self.method, self.teacher, self.kd_ratio, self.vocab_size = method, teacher, kd_ratio, vocab_size
        self.fused, self.sampler, self.bins = fused, on_policy, bins
        self.uses_teacher = method is not None and method.needs_teacher and teacher is not None

    def ratio(self, progress: Progress) -> float:
        return float(progress.values.get("kd_ratio", self.kd_ratio)) if self.uses_teacher else 0.0

    def references(self, window_idx: list[np.ndarray]) -> list[dict]:
        return _collate_window(self.examples, window_idx, self.pad_id, self.budget["loss_on"])

    def terms(self, window_idx: list[np.ndarray], progress: Progress, ratio: float,
              state: LoopState) -> tuple[Iterable[Term], dict]:
        window = self.references(window_idx)
        window, gen_row = (self.sampler.window(window, progress, self.model) if self.sampler is not None
                           else (window, {}))
        return self._terms(window, progress, ratio, state), gen_row

    def _terms(self, window, progress, ratio, state):
        dev = next(self.model.parameters()).device
        n_window = sum(int(b["mask"].sum()) for b in window)
        for batch in window:
            n_micro = int(batch["mask"].sum())
            if n_micro == 0:
                continue
            batch = {k: v.to(dev) for k, v in batch.items()}
            loss, ce, distill, tok_ce = _micro_step(self.model, batch, self.budget["precision"], ratio, self.method,
                                                    self.teacher, self.vocab_size, progress, self.fused)
            yield Term(loss, n_micro / n_window, n_micro, {"ce": ce.detach(), "distill": distill.detach()})
            if self.bins is not None and "on_policy" not in batch:  # per-example CE: references only
                rows = batch["index"].repeat_interleave(batch["mask"].sum(1))
                state.ce_sum.index_add_(0, rows, tok_ce.detach().double())
                state.ce_n.index_add_(0, rows, torch.ones_like(state.ce_n[rows]))


class _Rollouts:
    """Step losses from a method that owns its rollouts (train_on = "rollouts"): each window
    of prompt batches is sampled and scored once (`Method.rollout`, its time is the trace's
    `gen_s`), then trained on for the method's `inner_steps` optimizer steps, whose
    micro-batch losses the method gives (`Method.rollout_losses`). The whole loss is the
    method's (kd_ratio 1 in the trace)."""

    def __init__(self, method: Method, examples, rollouts, pad_id: int, loss_on: str):
        if rollouts is None:
            raise ValueError("a method with train_on = 'rollouts' needs the engine's `rollouts`")
        self.method, self.examples, self.sampler = method, examples, rollouts
        self.pad_id, self.loss_on = pad_id, loss_on
        self.inner_steps = int(method.inner_steps)

    def references(self, window_idx: list[np.ndarray]) -> list[dict]:
        return _collate_window(self.examples, window_idx, self.pad_id, self.loss_on)

    def ratio(self, progress: Progress) -> float:
        return 1.0

    def terms(self, window_idx, progress, ratio, state):
        inner, gen_s = state.k % self.inner_steps, 0.0
        if inner == 0:
            t0 = time.perf_counter()
            self.method.rollout([[self.examples[i] for i in b] for b in window_idx], self.sampler, progress)
            gen_s = time.perf_counter() - t0
        return self.method.rollout_losses(inner, self.sampler, progress), {"gen_s": gen_s}


def _step(model, opt, sched, budget: dict, source, suspect, state: LoopState, batches: list[np.ndarray],
          progress: Progress, t0: float) -> dict:
    """Optimizer step `state.k` of the epoch whose batches are `batches`: the micro-batch
    losses of its window from `source`, their backward, the optimizer step and the trace row
    (returned, and appended to state.trace)."""
    accum, step, epoch = budget["grad_accum"], state.step, state.epoch
    w = state.k // source.inner_steps
    window_idx = batches[w * accum:(w + 1) * accum]
    ratio = source.ratio(progress)
    terms, gen_row = source.terms(window_idx, progress, ratio, state)
    sums, n_tokens = _backward(terms, suspect, step, epoch)
    _optimizer_step(model, opt, sched, budget["grad_clip"], suspect, step, epoch, ratio,
                    lambda: _ce_gradients_finite(model, source.references(window_idx), budget["precision"]))
    state.tokens += n_tokens
    state.ep_tokens += n_tokens
    if state.k % source.inner_steps == 0:  # a window's prompts count once, not once per inner step
        state.seen += sum(len(b) for b in window_idx)
    row = {"step": step, "epoch": epoch, **sums, "lr": opt.param_groups[0]["lr"],
           "tokens": state.tokens, "examples": state.seen, "wall_s": time.perf_counter() - t0 - state.val_wall_s,
           **{k: float(v) for k, v in progress.values.items()}, "kd_ratio": ratio, **gen_row}
    state.trace.append(row)
    state.step, state.k = step + 1, state.k + 1
    return row


def _backward(terms: Iterable[Term], suspect, step: int, epoch: int) -> tuple[dict[str, float], int]:
    """Backward of every micro-batch's weighted loss; the step's weighted sums of the loss and
    its parts (for the trace) and its tokens. A non-finite loss stops before its backward."""
    sums, n_tokens = {"loss": 0.0, "ce": 0.0, "distill": 0.0}, 0
    for term in terms:
        # one host read per micro-batch for the trace and the finiteness check
        values = torch.stack([term.loss.detach(), *term.parts.values()]).tolist()
        parts = dict(zip(term.parts, values[1:]))
        if not math.isfinite(values[0]):
            raise suspect.loss(step, epoch, parts["ce"], parts["distill"])
        (term.loss * term.weight).backward()
        for key, v in (("loss", values[0]), *parts.items()):
            sums[key] = sums.get(key, 0.0) + v * term.weight
        n_tokens += term.tokens
    return sums, n_tokens


def _optimizer_step(model, opt, sched, grad_clip: float, suspect, step: int, epoch: int, ratio: float,
                    ce_gradients_finite) -> None:
    """The global gradient norm (clipped when grad_clip > 0) must be finite, or training stops
    before the step (`ce_gradients_finite()`: whether the references' cross-entropy alone has
    finite gradients, which names the suspect); then the optimizer and learning-rate steps,
    and the gradients cleared."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = (torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip > 0
            else torch.nn.utils.get_total_norm([p.grad for p in params]))
    if not torch.isfinite(norm):
        raise suspect.gradient(step, epoch, ratio, ce_gradients_finite)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def _optimizer(model, budget: dict, total: int):
    """AdamW (no decay on biases and norms) and its warm-up + cosine schedule over `total` steps.

    PyTorch's fused AdamW where it has one (CPU, CUDA): one kernel for all the parameters, a
    third of the default's time on the default student (benchmarks/results/engine.md); its
    updates differ from the default's in the last bits of float32 only."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    fused = True if next(model.parameters()).device.type in ("cpu", "cuda") else None  # None: PyTorch's pick
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": budget["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=budget["lr"], fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, max(1, total), budget["warmup"], budget["min_lr_ratio"]))
    return opt, sched


def val_loss_change(epochs: pd.DataFrame, steps_per_epoch: list[int]) -> float | None:
    """Relative change of the validation loss over the last 20% of the optimizer steps:
    (L_last - L_80) / L_80, where L_80 is the loss after the last epoch that ends at or before
    80% of the steps (the first epoch if none does). Near 0: the run has flattened; None
    without validation."""
    if "val_loss" not in epochs or len(epochs) < 2:
        return None
    ends = np.cumsum(steps_per_epoch) / max(1, sum(steps_per_epoch))
    at = [e for e, f in enumerate(ends) if f <= 0.8 + 1e-9]
    e80 = at[-1] if at else 0
    l80, last = float(epochs["val_loss"].iloc[e80]), float(epochs["val_loss"].iloc[-1])
    return (last - l80) / l80 if l80 > 0 else None


def _end_epoch(state: LoopState, idx: np.ndarray, difficulty, bins, now_s: float, extra: dict) -> None:
    """Close the epoch in `state`: its row (with `extra`, the validation values), its
    per-difficulty-bin losses, and the position of the next epoch."""
    epoch = state.epoch
    ep_rows = [r for r in state.trace if r["epoch"] == epoch]
    ep = {"epoch": epoch, "n_examples": len(idx), "n_tokens": state.ep_tokens,
          "wall_s": now_s - state.ep_start_s,
          "mean_difficulty": float(np.mean(difficulty[idx])) if difficulty is not None and len(idx) else np.nan}
    for key in (ep_rows[0] if ep_rows else {}):
        if key not in ("step", "epoch", "loss", "ce", "distill", "lr", "tokens", "examples", "wall_s"):
            ep[key] = float(np.mean([r[key] for r in ep_rows]))
    ep.update(extra)
    state.epochs.append(ep)
    ce_sum, ce_n = state.ce_sum.cpu().numpy(), state.ce_n.cpu().numpy()
    if bins is not None:
        for q in range(1, 6):
            sel = (bins == q) & (ce_n > 0)
            if sel.any():
                state.bin_rows.append({"epoch": epoch, "bin": q, "n_examples": int(sel.sum()),
                                       "ce": float(ce_sum[sel].sum() / ce_n[sel].sum())})
    state.epoch, state.k, state.ep_tokens, state.ep_start_s, state.elapsed_s = epoch + 1, 0, 0, now_s, now_s
    state.ce_sum, state.ce_n = torch.zeros_like(state.ce_sum), torch.zeros_like(state.ce_n)


def _save(checkpoint: Checkpoint, model, opt, sched, method, sampler, state: LoopState) -> None:
    """Save the run's state; the sampler's (on-policy generator and replay buffer, or the
    rollouts' corpus order) goes in `state`, the whole as a plain dict."""
    state.on_policy = sampler.state_dict() if sampler is not None else None
    checkpoint.save(model, opt, sched, method, state.as_dict())


def _reload(fresh, opt, sched):
    """`fresh` (optimizer, schedule) with the state of `opt` and `sched` loaded into it."""
    new_opt, new_sched = fresh
    new_opt.load_state_dict(opt.state_dict())
    new_sched.load_state_dict(sched.state_dict())
    return new_opt, new_sched


class _Suspect:
    """Non-finite values stop training with one sentence that names the likely culprit, the
    first quantity that is not finite: the student's cross-entropy (its value, or, when the
    loss is finite but its gradients are not, its own gradients, recomputed on the failed
    step) points at the learning rate and precision after some steps and at the initial
    weights or the data before any update; the method is suspected only when its own term, or
    its gradients, are not finite while the cross-entropy and its gradients are (a function
    whose value is fine but whose derivative is not, e.g. sqrt or log at 0).
    """

    def __init__(self, desc: str, method_name: str | None, budget: dict):
        self.desc, self.method, self.budget = desc, method_name, budget

    def _where(self, step, epoch):
        return f"{self.desc}: at step {step} (epoch {epoch})"

    def loss(self, step, epoch, ce: float, distill: float) -> UserError:
        where = self._where(step, epoch)
        if not math.isfinite(ce):
            return self._diverged(where, step, f"the student's cross-entropy is {ce}")
        if not math.isfinite(distill) and self.method:
            return UserError(f"{where} method {self.method!r} returned a distillation loss of {distill} while the "
                             f"student's cross-entropy is {ce}; the method is the suspect: fix its `loss` in "
                             f"the methods folder ({self.method}.py) or its parameters.")
        return self._diverged(where, step, f"the loss overflowed (cross-entropy {ce}, distillation term {distill})")

    def gradient(self, step, epoch, ratio: float, ce_gradients_finite) -> UserError:
        """`ce_gradients_finite()` says whether the cross-entropy alone has finite gradients on
        the failed step (asked only where the method has a term of its own)."""
        where = self._where(step, epoch)
        if self.method and ratio > 0 and ce_gradients_finite():
            return UserError(f"{where} the loss is finite but its gradients are not, while the student's "
                             f"cross-entropy has finite gradients; method {self.method!r} is the suspect (a term "
                             f"with an infinite derivative, e.g. sqrt or log at 0): fix its `loss` "
                             f"({self.method}.py) or its parameters.")
        return self._diverged(where, step, "the student's cross-entropy has non-finite gradients (the loss is finite)")

    def _diverged(self, where: str, step: int, what: str) -> UserError:
        if step == 0:
            return UserError(f"{where} {what} before any update; the initial weights or the data are the "
                             "suspect: rebuild the model (init_student/train_teacher) or check the data.")
        return UserError(f"{where} {what}, after {step} finite step(s) at lr {self.budget['lr']}; the learning "
                         "rate or the precision is the suspect: lower the learning rate or set the budget's "
                         "precision to fp32.")

    def weights(self, model) -> None:
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise UserError(f"{self.desc}: training ended with non-finite weights ({bad[0]}, {len(bad)} tensor(s)); "
                            f"nothing was saved: lower the learning rate or set the budget's precision to fp32.")


def _ce_gradients_finite(model, window: list[dict], precision: str) -> bool:
    """Whether the student's cross-entropy alone has finite gradients on the micro-batches of
    `window` (the step that failed); replaces the model's gradients."""
    model.zero_grad(set_to_none=True)
    dev = next(model.parameters()).device
    for batch in window:
        mask = batch["mask"].to(dev)
        if mask.any():
            with autocast(precision, dev):
                logits = rows_logits(model, batch["input_ids"].to(dev), mask)
            F.cross_entropy(logits.float(), batch["targets"].to(dev)[mask]).backward()
    return all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


def _micro_step(model, batch: dict, precision: str, ratio: float, method, teacher,
                vocab_size: int | None, progress: Progress, fused: bool = False):
    """The losses of one micro-batch, computed at its N loss positions only.

    Returns (loss, ce, distill) as 0-d float32 tensors (loss carries the graph) and the
    per-token CE (N,). The student's logits and the teacher's are (N, V) rows at the true
    entries of batch["mask"] in row-major order, so the method sees an all-true (N,) mask.
    With `fused`, the student's rows are a `ProjectedLogits` (hidden states and output layer,
    kdbench/fused.py) and the CE and the method's loss run chunk by chunk over them; the CE's
    gradient is skipped when its weight is 0.
    """
    mask = batch["mask"]
    targets = batch["targets"][mask]
    with autocast(precision, mask.device):
        if fused:
            logits = ProjectedLogits.of(model.get_output_embeddings(), rows_hidden(model, batch["input_ids"], mask))
        else:
            logits = rows_logits(model, batch["input_ids"], mask)
    # at kd_ratio 1 the CE only goes into the trace: no graph, so backward skips a (N, V) pass
    # whose gradient is zero (the weights' gradients are bitwise those with the graph)
    if fused:
        ce, tok_ce = fused_cross_entropy(logits, targets, grad=ratio < 1)
    else:
        with torch.set_grad_enabled(ratio < 1 and torch.is_grad_enabled()):
            tok_ce = F.cross_entropy(logits.float(), targets, reduction="none")
            ce = tok_ce.mean()
    loss = (1 - ratio) * ce if ratio < 1 else ce * 0
    distill = torch.zeros((), device=mask.device)
    if ratio > 0:
        t_logits = teacher(batch)
        V = vocab_size or t_logits.shape[-1]
        student = logits.vocab_prefix(V) if fused else logits[:, :V]
        # a train_on = "pairs" batch (kdbench.onpolicy.Pairs) says which tokens are the student's own
        pairs = {"from_student": batch["from_student"][mask]} if "from_student" in batch else {}
        distill = method.loss(student, t_logits[:, :V],
                              torch.ones(len(targets), dtype=torch.bool, device=mask.device), progress, **pairs)
        loss = loss + ratio * distill
    return loss, ce, distill.float(), tok_ce


def _quintiles(difficulty: np.ndarray) -> np.ndarray:
    """Difficulty bin 1 (easiest fifth) .. 5 (hardest fifth) per example, by rank (ties by index)."""
    ranks = np.empty(len(difficulty), dtype=np.int64)
    ranks[np.argsort(difficulty, kind="stable")] = np.arange(len(difficulty))
    return 1 + (ranks * 5) // max(1, len(difficulty))
