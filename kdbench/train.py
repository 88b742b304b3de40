"""The one training engine: teacher SFT, student pre-training, student SFT and distillation.

AdamW, linear warm-up then cosine decay, gradient clipping, gradient accumulation with the
loss normalised by the response tokens of the whole accumulation window, length-bucketed
batches, bf16 autocast where supported, a per-step trace. The total loss of a step is

    (1 - kd_ratio) * CE(student, reference) + kd_ratio * method.loss(student, teacher, mask, progress)

with kd_ratio from the config, overridden per step by the method's schedule, and 0 for
methods that need no teacher.

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

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from kdbench.data import Encoded, collate, make_batches
from kdbench.errors import UserError
from kdbench.method import EpochContext, Method, Progress
from kdbench.fused import ProjectedLogits, cross_entropy as fused_cross_entropy
from kdbench.models import autocast, rows_hidden, rows_logits
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
          on_policy=None, validate=None, desc: str = "train", checkpoint: Checkpoint | None = None,
          fused: bool = False) -> Result:
    """Train `model` in place. `teacher(batch) -> (N, V)` logits at the N true entries of
    batch["mask"] (row-major) are needed when kd_ratio > 0.

    `on_policy` (a kdbench.onpolicy.OnPolicy) swaps in student samples for methods that ask.
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
    accum = budget["grad_accum"]
    steps_per_epoch = [math.ceil(len(b) / accum) for b in epoch_batches]
    total = max(1, sum(steps_per_epoch))
    uses_teacher = method is not None and method.needs_teacher and teacher is not None

    restarts = sorted({e for e in (method.restarts(len(plan)) if method is not None else [])
                       if 0 < e < len(plan)})
    bounds = [0, *restarts, len(plan)]
    segment_steps = {bounds[i]: sum(steps_per_epoch[bounds[i]:bounds[i + 1]])
                     for i in range(len(bounds) - 1)}  # first epoch -> optimizer steps
    opt, sched = _optimizer(model, budget, segment_steps[0])
    bins = _quintiles(difficulty) if difficulty is not None else None
    suspect = _Suspect(desc, type(method).__module__.rpartition(".")[2] if method is not None else None, budget)

    # Everything the rest of the run depends on besides model, optimizer, schedule, RNG and
    # method: the position (epoch, step k inside it, global step) and what was accumulated.
    loop = {"epoch": 0, "k": 0, "step": 0, "tokens": 0, "seen": 0, "elapsed_s": 0.0,
            "trace": [], "epochs": [], "bin_rows": [], "ep_start_s": 0.0, "ep_tokens": 0,
            # per-example response-token CE sums and counts of the epoch, for the difficulty bins
            "ce_sum": torch.zeros(len(examples), dtype=torch.float64, device=dev),
            "ce_n": torch.zeros(len(examples), dtype=torch.float64, device=dev),
            "best": None,  # (val_rouge_l, epoch, state_dict copy) of the segment's best epoch so far
            "val_wall_s": 0.0,  # seconds spent validating (kept out of the training time)
            "on_policy": None}  # the sampler's generator and replay buffer (OnPolicy.state_dict)
    if checkpoint is not None and (restored := checkpoint.restore(model, opt, sched, method)) is not None:
        loop = restored
        loop["ce_sum"], loop["ce_n"] = loop["ce_sum"].to(dev), loop["ce_n"].to(dev)
        if on_policy is not None and loop["on_policy"] is not None:
            on_policy.load_state_dict(loop["on_policy"])
        segment = max(b for b in bounds[:-1] if b <= loop["epoch"])
        if segment > 0:  # a schedule's lambda is not in its state: rebuild it over this segment's steps
            opt, sched = _reload(_optimizer(model, budget, segment_steps[segment]), opt, sched)

    model.train()
    t0 = time.perf_counter() - loop["elapsed_s"]
    bar = tqdm(total=total, initial=loop["step"], desc=desc, unit="step", file=sys.stderr, mininterval=2.0)
    while loop["epoch"] < len(epoch_batches):
        epoch, batches = loop["epoch"], epoch_batches[loop["epoch"]]
        if epoch in restarts and loop["k"] == 0:
            if loop["best"] is not None:
                model.load_state_dict(loop["best"][2])
            loop["best"] = None
            opt, sched = _optimizer(model, budget, segment_steps[epoch])
        ce_sum, ce_n = loop["ce_sum"], loop["ce_n"]
        while loop["k"] < steps_per_epoch[epoch]:
            k, step = loop["k"], loop["step"]
            window = [collate([examples[i] for i in b], pad_id, budget["loss_on"])
                      for b in batches[k * accum:(k + 1) * accum]]
            progress = Progress(epoch=epoch, n_epochs=len(epoch_batches), step=step, total_steps=total,
                                epoch_step=k, epoch_steps=steps_per_epoch[epoch])
            progress.values = dict(method.schedule(progress)) if method is not None else {}
            window, gen_row = on_policy.window(window, progress, model) if on_policy is not None else (window, {})
            n_window = sum(int(b["mask"].sum()) for b in window)
            ratio = float(progress.values.get("kd_ratio", kd_ratio)) if uses_teacher else 0.0
            sums = {"loss": 0.0, "ce": 0.0, "distill": 0.0}
            for batch in window:
                n_micro = int(batch["mask"].sum())
                if n_micro == 0:
                    continue
                batch = {k_: v.to(dev) for k_, v in batch.items()}
                loss, ce, distill, tok_ce = _micro_step(model, batch, budget["precision"], ratio,
                                                        method, teacher, vocab_size, progress, fused)
                w = n_micro / n_window
                # one host read per micro-batch for the trace and the finiteness check
                loss_v, ce_v, distill_v = torch.stack([loss.detach(), ce.detach(), distill.detach()]).tolist()
                if not math.isfinite(loss_v):
                    raise suspect.loss(step, epoch, ce_v, distill_v)
                (loss * w).backward()
                sums["loss"] += loss_v * w
                sums["ce"] += ce_v * w
                sums["distill"] += distill_v * w
                if bins is not None and "on_policy" not in batch:  # per-example CE: references only
                    rows = batch["index"].repeat_interleave(batch["mask"].sum(1))
                    ce_sum.index_add_(0, rows, tok_ce.detach().double())
                    ce_n.index_add_(0, rows, torch.ones_like(ce_n[rows]))
            # the global gradient norm (clipped when grad_clip > 0): finite, or stop before the step
            params = [p for p in model.parameters() if p.grad is not None]
            norm = (torch.nn.utils.clip_grad_norm_(params, budget["grad_clip"]) if budget["grad_clip"] > 0
                    else torch.nn.utils.get_total_norm([p.grad for p in params]))
            if not torch.isfinite(norm):
                raise suspect.gradient(step, epoch, ratio, lambda: _ce_gradients_finite(model, window, budget["precision"]))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            n_examples = sum(len(b) for b in batches[k * accum:(k + 1) * accum])
            loop["tokens"] += n_window
            loop["ep_tokens"] += n_window
            loop["seen"] += n_examples
            row = {"step": step, "epoch": epoch, **sums, "lr": opt.param_groups[0]["lr"],
                   "tokens": loop["tokens"], "examples": loop["seen"], "wall_s": time.perf_counter() - t0 - loop["val_wall_s"],
                   **{k_: float(v) for k_, v in progress.values.items()}, "kd_ratio": ratio, **gen_row}
            loop["trace"].append(row)
            loop["step"], loop["k"] = step + 1, k + 1
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss']:.3f}", epoch=epoch, refresh=False)
            if checkpoint is not None and checkpoint.due() and loop["k"] < steps_per_epoch[epoch]:
                loop["elapsed_s"] = time.perf_counter() - t0
                _save(checkpoint, model, opt, sched, method, on_policy, loop)
        if on_policy is not None:
            on_policy.epoch_end(model)
        ep_extra, ep_end_s = {}, time.perf_counter() - t0
        if validate is not None:
            v_t0 = time.perf_counter()
            ep_extra = validate(model)
            loop["val_wall_s"] += time.perf_counter() - v_t0
            model.train()
            if loop["best"] is None or ep_extra["val_rouge_l"] > loop["best"][0]:
                loop["best"] = (ep_extra["val_rouge_l"], epoch, copy.deepcopy(model.state_dict()))
        _end_epoch(loop, plan[epoch], difficulty, bins, ep_end_s, ep_extra)
        loop["ep_start_s"] = loop["elapsed_s"] = time.perf_counter() - t0  # the next epoch starts after validation
        if checkpoint is not None:
            _save(checkpoint, model, opt, sched, method, on_policy, loop)
    bar.close()
    wall = time.perf_counter() - t0 - loop["val_wall_s"]
    selected, best = len(epoch_batches) - 1, loop["best"]
    if best is not None and budget.get("selection", "last") == "best":
        model.load_state_dict(best[2])
        selected = best[1]
    model.eval()
    suspect.weights(model)
    ep_df = pd.DataFrame(loop["epochs"])
    tokens, seen = loop["tokens"], loop["seen"]
    stats = {"selection": budget.get("selection", "last") if validate is not None else "last",
             "selected_epoch": selected, "n_epochs": len(epoch_batches),
             "val_loss_change_last20": val_loss_change(ep_df, steps_per_epoch),
             "val_rouge_l_selected": float(ep_df["val_rouge_l"].iloc[selected]) if "val_rouge_l" in ep_df else None,
             "val_wall_s": loop["val_wall_s"], "train_wall_s": wall, "train_tokens": tokens, "train_examples": seen,
             "train_steps": loop["step"], "train_tokens_per_s": tokens / wall if wall > 0 else float("nan"),
             "train_gen_s": sum(r.get("gen_s", 0.0) for r in loop["trace"]),
             "examples_per_epoch": [len(p) for p in plan]}
    return Result(pd.DataFrame(loop["trace"]), ep_df, pd.DataFrame(loop["bin_rows"]), stats)


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


def _end_epoch(loop: dict, idx: np.ndarray, difficulty, bins, now_s: float, extra: dict) -> None:
    """Close the epoch in `loop`: its row (with `extra`, the validation values), its
    per-difficulty-bin losses, and the position of the next epoch."""
    epoch = loop["epoch"]
    ep_rows = [r for r in loop["trace"] if r["epoch"] == epoch]
    ep = {"epoch": epoch, "n_examples": len(idx), "n_tokens": loop["ep_tokens"],
          "wall_s": now_s - loop["ep_start_s"],
          "mean_difficulty": float(np.mean(difficulty[idx])) if difficulty is not None and len(idx) else np.nan}
    for key in (ep_rows[0] if ep_rows else {}):
        if key not in ("step", "epoch", "loss", "ce", "distill", "lr", "tokens", "examples", "wall_s"):
            ep[key] = float(np.mean([r[key] for r in ep_rows]))
    ep.update(extra)
    loop["epochs"].append(ep)
    ce_sum, ce_n = loop["ce_sum"].cpu().numpy(), loop["ce_n"].cpu().numpy()
    if bins is not None:
        for q in range(1, 6):
            sel = (bins == q) & (ce_n > 0)
            if sel.any():
                loop["bin_rows"].append({"epoch": epoch, "bin": q, "n_examples": int(sel.sum()),
                                         "ce": float(ce_sum[sel].sum() / ce_n[sel].sum())})
    loop.update(epoch=epoch + 1, k=0, ep_tokens=0, ep_start_s=now_s, elapsed_s=now_s,
                ce_sum=torch.zeros_like(loop["ce_sum"]), ce_n=torch.zeros_like(loop["ce_n"]))


def _save(checkpoint: Checkpoint, model, opt, sched, method, on_policy, loop: dict) -> None:
    """Save the run's state; the on-policy sampler's generator and replay buffer go in `loop`."""
    loop["on_policy"] = on_policy.state_dict() if on_policy is not None else None
    checkpoint.save(model, opt, sched, method, loop)


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
        distill = method.loss(student, t_logits[:, :V],
                              torch.ones(len(targets), dtype=torch.bool, device=mask.device), progress)
        loss = loss + ratio * distill
    return loss, ce, distill.float(), tok_ce


def _quintiles(difficulty: np.ndarray) -> np.ndarray:
    """Difficulty bin 1 (easiest fifth) .. 5 (hardest fifth) per example, by rank (ties by index)."""
    ranks = np.empty(len(difficulty), dtype=np.int64)
    ranks[np.argsort(difficulty, kind="stable")] = np.arange(len(difficulty))
    return 1 + (ranks * 5) // max(1, len(difficulty))
