"""The sampler's forward pass: one preallocated (static) KV cache per layer and the model's own
modules, without `transformers`' per-call machinery.

For a Llama-style decoder (`DECODERS`: RMSNorm, rotary positions, SwiGLU MLP, optional q/k/v
biases, grouped-query attention) a decoding step is a few dozen small operations; through the
model's `forward` most of its time went to building the attention mask, growing the
`DynamicCache` by concatenation and the output bookkeeping (benchmarks/results/engine.md).
`StaticDecoder` uses the model's embedding, norms, rotary embedding and weights directly (q/k/v
and gate/up stacked into one product each), writes each step's keys and values into a cache
allocated once for the whole batch, and attends with an explicit mask (left padding and
causality). The logits equal the model's forward up to float rounding (tests/test_decode.py).

Other architectures (GPT-2, OPT, models with a sliding window or per-head q/k norms) take
`HFDecoder`: the model's forward with its own KV cache. Both are called the same way:

    dec = decoder(model, valid)                # valid: (B, T + steps) bool, False on left padding
    logits = dec(input_ids, position_ids)      # (B, V) at each row's last new token

    dec.keep(rows)                             # drop finished rows: later calls take (len(rows), t)

input_ids, position_ids: (B, t), the next t tokens of every row and their positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.models import next_token_logits

# model_type -> nothing beyond the Llama block (norm, attention with rotary, norm, gated MLP)
DECODERS = frozenset({"llama", "qwen2"})


def decoder(model, valid: torch.Tensor):
    """A `StaticDecoder` where the architecture allows, else an `HFDecoder`."""
    cfg = model.config
    plain = (cfg.model_type in DECODERS and getattr(cfg, "sliding_window", None) is None
             and getattr(cfg, "pretraining_tp", 1) == 1 and not cfg.output_attentions)
    return StaticDecoder(model, valid) if plain else HFDecoder(model, valid)


class StaticDecoder:
    def __init__(self, model, valid: torch.Tensor):
        self.body, self.head = model.model, model.get_output_embeddings()
        attn = self.body.layers[0].self_attn
        self.d, self.scale = attn.head_dim, attn.scaling
        self.n_heads = model.config.num_attention_heads
        self.n_kv = model.config.num_key_value_heads
        p = next(model.parameters())
        (batch_size, max_len), dev = valid.shape, p.device
        shape = (batch_size, self.n_kv, max_len, self.d)
        self.k = [torch.empty(shape, dtype=p.dtype, device=dev) for _ in self.body.layers]
        self.v = [torch.empty(shape, dtype=p.dtype, device=dev) for _ in self.body.layers]
        self.len = 0  # positions of the cache filled so far
        # the rotary table of every position up to max_len, computed once by the model's own module
        pos = torch.arange(max_len, device=dev)[None]
        self.cos, self.sin = self.body.rotary_emb(torch.empty(0, dtype=p.dtype, device=dev), position_ids=pos)
        # (B, 1, 1, max_len) additive attention mask: -inf on left padding
        self.bias = torch.zeros(valid.shape, dtype=p.dtype, device=dev).masked_fill_(~valid.to(dev), float("-inf"))
        self.bias = self.bias[:, None, None]
        # per layer, q/k/v and gate/up as one product each: two calls fewer per step and layer,
        # the same values (each output column is the same dot product as in its own layer)
        self.qkv = [_stacked(l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj) for l in self.body.layers]
        self.gate_up = [_stacked(l.mlp.gate_proj, l.mlp.up_proj) for l in self.body.layers]
        self.widths = [self.n_heads * self.d, self.n_kv * self.d, self.n_kv * self.d]  # of q, k, v

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor):
        B, t = input_ids.shape
        start, end = self.len, self.len + t
        x = self.body.embed_tokens(input_ids)                               # (B, t, H)
        cos, sin = self.cos[0, position_ids][:, None], self.sin[0, position_ids][:, None]  # (B, 1, t, d)
        bias = self.bias[..., :end]                                         # (B, 1, 1, end)
        if t > 1:  # no future keys; a padding query sees itself, so no row is all -inf (NaN)
            query_at = torch.arange(start, end, device=x.device)[:, None]   # (t, 1)
            key_at = torch.arange(end, device=x.device)[None]                # (1, end)
            causal = torch.zeros((t, end), dtype=bias.dtype, device=x.device)
            bias = bias + causal.masked_fill_(key_at > query_at, float("-inf"))  # (B, 1, t, end)
            bias.diagonal(offset=start, dim1=-2, dim2=-1).fill_(0.0)
        for layer, k_cache, v_cache, qkv, gate_up in zip(self.body.layers, self.k, self.v, self.qkv, self.gate_up):
            attn, mlp = layer.self_attn, layer.mlp
            q, k, v = F.linear(_rms_norm(layer.input_layernorm, x), *qkv).split(self.widths, -1)
            q = q.view(B, t, self.n_heads, self.d).transpose(1, 2)                  # (B, heads, t, d)
            k = k.view(B, t, self.n_kv, self.d).transpose(1, 2)                     # (B, kv, t, d)
            k_cache[:, :, start:end] = k * cos + _rotate_half(k) * sin
            v_cache[:, :, start:end] = v.view(B, t, self.n_kv, self.d).transpose(1, 2)
            q = (q * cos + _rotate_half(q) * sin) * self.scale
            # grouped-query attention: heads share their group's keys (B, kv, g * t, d)
            q = q.reshape(B, self.n_kv, -1, self.d)
            scores = (q @ k_cache[:, :, :end].transpose(-1, -2)).view(B, self.n_heads, t, end)
            w = (scores + bias).softmax(-1).view(B, self.n_kv, -1, end)
            out = (w @ v_cache[:, :, :end]).view(B, self.n_heads, t, self.d)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(B, t, self.n_heads * self.d))
            gate, up = F.linear(_rms_norm(layer.post_attention_layernorm, x), *gate_up).chunk(2, -1)
            x = x + mlp.down_proj(mlp.act_fn(gate) * up)                        # (B, t, H)
        self.len = end
        return self.head(_rms_norm(self.body.norm, x[:, -1]))

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (1-D index) in the cache and the mask."""
        self.k = [k[rows, :, :] for k in self.k]
        self.v = [v[rows, :, :] for v in self.v]
        self.bias = self.bias[rows]


class HFDecoder:
    """The model's own forward and KV cache (any causal LM)."""

    def __init__(self, model, valid: torch.Tensor):
        self.model, self.mask, self.cache, self.len = model, valid.long(), None, 0

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor):
        self.len += input_ids.shape[1]
        logits, self.cache = next_token_logits(self.model, input_ids, self.mask[:, :self.len], position_ids, self.cache)
        return logits

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]


def _stacked(*linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of linear layers that read the same input, as one layer whose output is
    theirs side by side."""
    biases = [lin.bias for lin in linears]
    return (torch.cat([lin.weight for lin in linears]),
            None if biases[0] is None else torch.cat(biases))


def _rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm module as one fused operation (its weight and epsilon)."""
    return torch.nn.functional.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotary embedding's pairing of the two halves of the head dimension (as in Llama)."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)
