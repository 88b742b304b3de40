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
from kdbench.models import autocast, rows_logits


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
          validate=None, desc: str = "train") -> Result:
    """Train `model` in place. `teacher(batch) -> (N, V)` logits at the N true entries of
    batch["mask"] (row-major) are needed when kd_ratio > 0.

    `validate(model) -> dict` (optional) runs after every epoch; its values join the epoch's
    row, and `budget["selection"]` decides which epoch's weights the model ends with."""
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
    best = None  # (val_rouge_l, epoch, state_dict copy) of the best epoch so far
    val_wall = 0.0  # seconds spent validating (kept out of the training time)

    model.train()
    trace, epochs, bin_rows = [], [], []
    step, tokens, seen, t0 = 0, 0, 0, time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, mininterval=2.0)
    for epoch, batches in enumerate(epoch_batches):
        if epoch in restarts:
            if best is not None:
                model.load_state_dict(best[2])
            best = None
            opt, sched = _optimizer(model, budget, segment_steps[epoch])
        ep_t0, ep_tokens, ep_rows = time.perf_counter(), 0, []
        # per-example response-token CE sums and counts, for the difficulty bins (kept on the device)
        ce_sum = torch.zeros(len(examples), dtype=torch.float64, device=dev)
        ce_n = torch.zeros(len(examples), dtype=torch.float64, device=dev)
        for k in range(steps_per_epoch[epoch]):
            window = [collate([examples[i] for i in b], pad_id, budget["loss_on"])
                      for b in batches[k * accum:(k + 1) * accum]]
            n_window = sum(int(b["mask"].sum()) for b in window)
            progress = Progress(epoch=epoch, n_epochs=len(epoch_batches), step=step, total_steps=total,
                                epoch_step=k, epoch_steps=steps_per_epoch[epoch])
            progress.values = dict(method.schedule(progress)) if method is not None else {}
            ratio = float(progress.values.get("kd_ratio", kd_ratio)) if uses_teacher else 0.0
            sums = {"loss": 0.0, "ce": 0.0, "distill": 0.0}
            for batch in window:
                n_micro = int(batch["mask"].sum())
                if n_micro == 0:
                    continue
                batch = {k_: v.to(dev) for k_, v in batch.items()}
                loss, ce, distill, tok_ce = _micro_step(model, batch, budget["precision"], ratio,
                                                        method, teacher, vocab_size, progress)
                w = n_micro / n_window
                (loss * w).backward()
                # one host read per micro-batch for the trace and the finiteness check
                loss_v, ce_v, distill_v = torch.stack([loss.detach(), ce.detach(), distill.detach()]).tolist()
                if not math.isfinite(loss_v):
                    raise UserError(f"{desc}: the loss became {loss_v} at step {step} (epoch {epoch}); "
                                    "lower the learning rate or set the budget's precision to fp32.")
                sums["loss"] += loss_v * w
                sums["ce"] += ce_v * w
                sums["distill"] += distill_v * w
                if bins is not None:
                    rows = batch["index"].repeat_interleave(batch["mask"].sum(1))
                    ce_sum.index_add_(0, rows, tok_ce.detach().double())
                    ce_n.index_add_(0, rows, torch.ones_like(ce_n[rows]))
            if budget["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), budget["grad_clip"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            n_examples = sum(len(b) for b in batches[k * accum:(k + 1) * accum])
            tokens += n_window
            ep_tokens += n_window
            seen += n_examples
            row = {"step": step, "epoch": epoch, **sums, "lr": opt.param_groups[0]["lr"],
                   "tokens": tokens, "examples": seen, "wall_s": time.perf_counter() - t0 - val_wall,
                   **{k_: float(v) for k_, v in progress.values.items()}, "kd_ratio": ratio}
            trace.append(row)
            ep_rows.append(row)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss']:.3f}", epoch=epoch, refresh=False)
        idx = plan[epoch]
        ep = {"epoch": epoch, "n_examples": len(idx), "n_tokens": ep_tokens,
              "wall_s": time.perf_counter() - ep_t0,
              "mean_difficulty": float(np.mean(difficulty[idx])) if difficulty is not None and len(idx) else np.nan}
        for key in (ep_rows[0] if ep_rows else {}):
            if key not in ("step", "epoch", "loss", "ce", "distill", "lr", "tokens", "examples", "wall_s"):
                ep[key] = float(np.mean([r[key] for r in ep_rows]))
        if validate is not None:
            v_t0 = time.perf_counter()
            ep.update(validate(model))
            val_wall += time.perf_counter() - v_t0
            model.train()
            if best is None or ep["val_rouge_l"] > best[0]:
                best = (ep["val_rouge_l"], epoch, copy.deepcopy(model.state_dict()))
        epochs.append(ep)
        if bins is not None:
            ce_sum, ce_n = ce_sum.cpu().numpy(), ce_n.cpu().numpy()
            for q in range(1, 6):
                sel = (bins == q) & (ce_n > 0)
                if sel.any():
                    bin_rows.append({"epoch": epoch, "bin": q, "n_examples": int(sel.sum()),
                                     "ce": float(ce_sum[sel].sum() / ce_n[sel].sum())})
    bar.close()
    wall = time.perf_counter() - t0 - val_wall
    selected = len(epoch_batches) - 1
    if best is not None and budget.get("selection", "last") == "best":
        model.load_state_dict(best[2])
        selected = best[1]
    model.eval()
    ep_df = pd.DataFrame(epochs)
    stats = {"selection": budget.get("selection", "last") if validate is not None else "last",
             "selected_epoch": selected, "n_epochs": len(epoch_batches),
             "val_loss_change_last20": val_loss_change(ep_df, steps_per_epoch),
             "val_rouge_l_selected": float(ep_df["val_rouge_l"].iloc[selected]) if "val_rouge_l" in ep_df else None,
             "val_wall_s": val_wall, "train_wall_s": wall, "train_tokens": tokens, "train_examples": seen,
             "train_steps": step, "train_tokens_per_s": tokens / wall if wall > 0 else float("nan"),
             "examples_per_epoch": [len(p) for p in plan]}
    return Result(pd.DataFrame(trace), ep_df, pd.DataFrame(bin_rows), stats)


def _optimizer(model, budget: dict, total: int):
    """AdamW (no decay on biases and norms) and its warm-up + cosine schedule over `total` steps."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": budget["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=budget["lr"])
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


def _micro_step(model, batch: dict, precision: str, ratio: float, method, teacher,
                vocab_size: int | None, progress: Progress):
    """The losses of one micro-batch, computed at its N loss positions only.

    Returns (loss, ce, distill) as 0-d float32 tensors (loss carries the graph) and the
    per-token CE (N,). The student's logits and the teacher's are (N, V) rows at the true
    entries of batch["mask"] in row-major order, so the method sees an all-true (N,) mask.
    """
    mask = batch["mask"]
    with autocast(precision, mask.device):
        logits = rows_logits(model, batch["input_ids"], mask)
    tok_ce = F.cross_entropy(logits.float(), batch["targets"][mask], reduction="none")
    ce = tok_ce.mean()
    loss = (1 - ratio) * ce if ratio < 1 else ce * 0
    distill = torch.zeros((), device=mask.device)
    if ratio > 0:
        t_logits = teacher(batch)
        V = vocab_size or t_logits.shape[-1]
        distill = method.loss(logits[:, :V], t_logits[:, :V],
                              torch.ones(len(logits), dtype=torch.bool, device=mask.device), progress)
        loss = loss + ratio * distill
    return loss, ce, distill.float(), tok_ce


def _quintiles(difficulty: np.ndarray) -> np.ndarray:
    """Difficulty bin 1 (easiest fifth) .. 5 (hardest fifth) per example, by rank (ties by index)."""
    ranks = np.empty(len(difficulty), dtype=np.int64)
    ranks[np.argsort(difficulty, kind="stable")] = np.arange(len(difficulty))
    return 1 + (ranks * 5) // max(1, len(difficulty))
