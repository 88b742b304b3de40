"""The fused large-vocabulary path: the student's output layer and its losses, chunk by chunk.

On the plain path the engine forms the student's logits at the N loss positions, (N, V), and
the losses keep one more (N, V) copy, their per-row gradient, for backward; autograd then
makes a third for the gradient of the logits. At V = 50,257 and 8,192 tokens each copy is
1.6 GB in float32. Here the logits never exist at once: `ProjectedLogits` stands for them as
the hidden states h (N, H) and the output layer W (V, H) (and bias b), and every loss runs
over chunks of rows, each chunk doing

    s = h_c W^T + b                     (rows, V), the chunk's logits, then dropped
    v, g = the rows' values and their gradient with respect to s
    dL/dh_c = g W,   dL/dW += g^T h_c,   dL/db += Σ_rows g

so the gradients with respect to h, W and b are complete when the forward pass ends; backward
only scales them by the incoming gradient of the scalar loss (the idea of Liger-Kernel's fused
linear cross-entropy / JSD; this is a plain PyTorch version of it). What stays between the
passes is (N, H) + (V, H) + (V,) floats, not (N, V). Exact, because every per-token loss
depends on its own row of logits only.

The chunk's values and gradient come from the same functions as on the plain path: the
distillation terms from `kdbench.divergences` (`token_mean` dispatches a `ProjectedLogits`
student here, so every method that writes its loss with `token_mean` or the named divergences
runs fused unchanged), the cross-entropy from `cross_entropy` below; chunks are
`kdbench.divergences.rows_per_chunk(..., projected=True)` rows, larger than the plain path's
on a CPU because each chunk reads the whole output layer. The projection runs in the
dtype the plain path's output layer would (bf16 under autocast), the losses in float32.

A method that uses the student logits otherwise (its own tensor arithmetic) cannot run on this
path and stops with a UserError that says so; `distill.fused: false` turns the path off
(docs/engine.md: when the engine uses it).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from kdbench.errors import UserError

AUTO_MIN_VOCAB = 16_384
"""`distill.fused: auto` uses the fused path from this vocabulary size on. The plain path keeps
three float32 (N, V) tensors alive at once (logits, per-row gradients, the logits' gradient):
192 KiB per loss token at V = 16,384, 1.5 GiB for a batch of 8,192 tokens. Every pretrained
tokenizer of the shipped profiles (49,152 to 151,936 tokens) is above it; the scratch
tokenizers of the embedded profiles (1,024) stay on the plain path."""

# rows_fn(s, sel) -> (values (rows,), gradient (rows, V) or None): the loss of the chunk of
# logits `s` (rows, V), whose rows are `sel` of the flat hidden states
RowsFn = Callable[[torch.Tensor, torch.Tensor], tuple]


class ProjectedLogits:
    """Logits hidden @ weight^T + bias, shape (..., V), not formed.

    hidden (..., H), weight (V, H), bias (V,) or None, as the model's output layer holds them;
    `dtype` is the dtype of the logits the plain path would form (the autocast dtype inside
    autocast). Losses read it through `kdbench.divergences.token_mean` (and the named
    divergences) and `cross_entropy`; any other use is an error (see the module docstring).
    """

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype):
        self.hidden, self.weight, self.bias, self.dtype = hidden, weight, bias, dtype

    @classmethod
    def of(cls, head: torch.nn.Module, hidden: torch.Tensor) -> "ProjectedLogits":
        """The logits `head(hidden)` of a linear output layer; call it where `head` would run
        (inside the engine's autocast), so that the projection uses the same dtype."""
        dev = hidden.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else head.weight.dtype
        return cls(hidden, head.weight, head.bias, dtype)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:-1], self.weight.shape[0]))

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def requires_grad(self) -> bool:
        return any(t is not None and t.requires_grad for t in (self.hidden, self.weight, self.bias))

    def vocab_prefix(self, vocab: int) -> "ProjectedLogits":
        """The first `vocab` logits of every row (the vocabulary shared with the teacher)."""
        bias = None if self.bias is None else self.bias[:vocab]
        return ProjectedLogits(self.hidden, self.weight[:vocab], bias, self.dtype)

    def rows_sum(self, idx: torch.Tensor, rows_fn: RowsFn, chunk_rows: int) -> tuple:
        """(Σ values, values (n,)) of `rows_fn` over the rows `idx` (sorted, unique) of the flat
        hidden states, chunk by chunk; the sum carries the gradient, the values do not."""
        hidden = self.hidden.reshape(-1, self.hidden.shape[-1])
        if not torch.is_grad_enabled():
            hidden, weight, bias = hidden.detach(), self.weight.detach(), self.bias
            bias = None if bias is None else bias.detach()
        else:
            weight, bias = self.weight, self.bias
        return _RowsSum.apply(hidden, weight, bias, idx, rows_fn, self.dtype, chunk_rows)

    def __getattr__(self, name):  # only for names the class does not define: a tensor's methods
        if name.startswith("__"):  # protocols (copy, pickle, ...) probe with hasattr
            raise AttributeError(name)
        raise _misuse(f"`.{name}`")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise _misuse(f"`{getattr(func, '__name__', func)}`")


def _misuse(what: str) -> UserError:
    return UserError(f"a loss used {what} of the student logits, which the fused large-vocabulary path does "
                     "not form; write the loss with kdbench.divergences (token_mean with a row kernel, or a "
                     "named divergence), or set distill.fused: false in the profile.")


class _RowsSum(torch.autograd.Function):
    """Σ over the rows `idx` of rows_fn(hidden[idx] @ weight^T + bias), chunk by chunk, with
    the gradients for hidden, weight and bias made in forward (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, idx, rows_fn, dtype, chunk):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need = need_h or need_w or need_b
        n, every_row = idx.numel(), idx.numel() == hidden.shape[0]  # every row: idx is 0..M-1
        w = weight.to(dtype)  # one cast of the layer for all chunks (none in float32)
        b = None if bias is None else bias.to(dtype)
        values = torch.empty(n, dtype=torch.promote_types(dtype, torch.float32), device=hidden.device)
        # the gradients, accumulated in float32 (or the inputs' wider dtype)
        grad_h, grad_w, grad_b = (
            torch.zeros(t.shape, dtype=torch.promote_types(t.dtype, torch.float32), device=t.device) if need else None
            for t, need in ((hidden, need_h), (weight, need_w), (bias, need_b)))
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are explicit here
            for lo in range(0, n, chunk):
                sel = idx[lo:lo + chunk]
                h = (hidden[lo:lo + chunk] if every_row else hidden[sel]).to(dtype)
                v, g = rows_fn(F.linear(h, w, b), sel)
                values[lo:lo + chunk] = v
                if not need or g is None:
                    continue
                g = g.to(dtype)  # the gradient matmuls run in the projection's dtype, as autograd's would
                if need_h:
                    grad_h.index_copy_(0, sel, (g @ w).to(grad_h.dtype))
                if need_w:  # in place where the dtypes agree: no (V, H) temporary per chunk
                    if g.dtype == grad_w.dtype:
                        grad_w.addmm_(g.T, h)
                    else:
                        grad_w += g.T @ h  # the product in bf16, the sum over chunks in float32
                if need_b:
                    grad_b += g.sum(0)
        # kept on ctx, not saved for backward: backward scales them in place and hands them on,
        # so the (V, H) gradient of the output layer exists once, not twice, at the step's peak
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(values)
        return values.sum(), values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total, _grad_values):
        if ctx.grads is None:
            raise RuntimeError("the fused output layer's backward runs once (its gradients were made in forward "
                               "and handed on): backward(retain_graph=True) twice through it is not supported.")
        grads, ctx.grads = ctx.grads, None
        grads = [None if g is None else g.mul_(grad_total).to(dt) for g, dt in zip(grads, ctx.dtypes)]
        return (*grads, None, None, None, None)


def cross_entropy(student: ProjectedLogits, targets: torch.Tensor, *, grad: bool = True) -> tuple:
    """(mean, per-token (N,)) cross-entropy of the projected rows (N, V) against `targets` (N,),
    as `F.cross_entropy(logits.float(), targets)` on the plain path; only the mean carries a
    gradient, and only with `grad` (the engine skips it when the CE has weight 0)."""
    from kdbench.divergences import rows_per_chunk

    n = student.hidden.reshape(-1, student.hidden.shape[-1]).shape[0]
    if targets.shape != (n,):
        raise ValueError(f"targets {tuple(targets.shape)} must be one per row ({n},).")
    need = grad and torch.is_grad_enabled() and student.requires_grad

    def rows(s, sel):
        log_q = torch.log_softmax(s.to(torch.promote_types(s.dtype, torch.float32)), -1)
        t = targets[sel]
        value = -log_q.gather(1, t[:, None]).squeeze(1)
        if not need:
            return value, None
        g = log_q.exp_()  # softmax − one-hot(target)
        g[torch.arange(len(t), device=t.device), t] -= 1.0
        return value, g

    with torch.set_grad_enabled(need):
        total, values = student.rows_sum(torch.arange(n, device=student.device), rows,
                                         rows_per_chunk(student.shape[-1], student.device, projected=True))
    return (total / n if n else total), values


def token_nll(model, input_ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
              reduction: str = "none") -> torch.Tensor:
    """The model's cross-entropy against `targets` (N,) at the N true entries of `mask` (B, T),
    per token (N,) float32 or summed (`reduction` "none" or "sum"), without a gradient: what
    validation, DistiLLM's validation loss and difficulty scoring need. Call it inside the
    autocast the logits would be made in.

    Where `distill.fused: auto` would take the fused path (a PLAIN_HEAD model with at least
    AUTO_MIN_VOCAB logits) it runs chunk by chunk over the output layer (`cross_entropy` of a
    `ProjectedLogits`), so the (N, V) logits never exist at once: at GPT-2's 50,257 tokens the
    response rows of a 64-example validation batch of Dolly are about 1.6 GB in float32, and the
    full (B, T, V) logits 6.6 GB. Smaller vocabularies take `F.cross_entropy` of the (N, V) rows,
    as before, bit for bit."""
    from kdbench.models import rows_hidden, rows_logits

    with torch.no_grad():
        if use_fused("auto", model, model.config.vocab_size):
            rows = ProjectedLogits.of(model.get_output_embeddings(), rows_hidden(model, input_ids, mask))
            values = cross_entropy(rows, targets, grad=False)[1]
            return values.sum() if reduction == "sum" else values
        return F.cross_entropy(rows_logits(model, input_ids, mask).float(), targets, reduction=reduction)


def use_fused(setting, model, vocab: int) -> bool:
    """Whether a run takes the fused path: `distill.fused` (true, false or "auto"), the student
    `model` and the vocabulary size its losses use."""
    from kdbench.models import projects_rows

    if setting is False:
        return False
    plain = projects_rows(model)
    if setting == "auto":
        return plain and vocab >= AUTO_MIN_VOCAB
    if not plain:
        raise UserError(f"distill.fused: true needs a student whose logits are its output layer applied to the "
                        f"last hidden state, which {model.config.model_type!r} models are not "
                        f"(kdbench.models.PLAIN_HEAD); set distill.fused to auto or false.")
    return True


