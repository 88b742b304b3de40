"""The sampler's forward pass: one preallocated (static) KV cache per layer and the model's own
modules, without `transformers`' per-call machinery.

For a Llama-style decoder (`DECODERS`: RMSNorm, rotary positions, SwiGLU MLP, optional q/k/v
biases, grouped-query attention) a decoding step is a few dozen small operations; through the
model's `forward` most of its time went to building the attention mask, growing the
`DynamicCache` by concatenation and the output bookkeeping (benchmarks/results/engine.md).
`LlamaDecoder` uses the model's embedding, norms, rotary embedding and weights directly (q/k/v
and gate/up stacked into one product each), writes each step's keys and values into a cache
allocated once for the whole batch, and attends with an explicit mask (left padding and
causality). `GPT2Decoder` does the same for GPT-2 (the paper-gpt2 pair): at its true size a
`DynamicCache` copies every layer's whole cache at every new token (torch.cat), which for the
GPT-2 base student at batch 64 and 512 positions is 2.4 GB per step in float32. Both share
`StaticDecoder`'s cache, mask and attention. The logits equal the model's forward up to float
rounding (tests/test_decode.py).

Other architectures (OPT, models with a sliding window or per-head q/k norms) take
`HFDecoder`: the model's forward with its own KV cache. All are called the same way:

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
    """A static-cache decoder where the architecture allows (`LlamaDecoder`, `GPT2Decoder`), else
    an `HFDecoder`."""
    cfg = model.config
    if cfg.output_attentions:
        return HFDecoder(model, valid)
    if (cfg.model_type in DECODERS and getattr(cfg, "sliding_window", None) is None
            and getattr(cfg, "pretraining_tp", 1) == 1):
        return LlamaDecoder(model, valid)
    if cfg.model_type == "gpt2" and not cfg.add_cross_attention and not cfg.reorder_and_upcast_attn:
        return GPT2Decoder(model, valid)
    return HFDecoder(model, valid)


class StaticDecoder:
    """What the static decoders share: per layer a key/value cache (B, kv heads, T + steps, d)
    allocated once, the additive attention mask of the left padding and causality, and the
    attention over the cache (grouped-query: heads share their group's keys)."""

    def __init__(self, model, valid: torch.Tensor, n_layers: int, n_heads: int, n_kv: int, d: int):
        self.n_heads, self.n_kv, self.d = n_heads, n_kv, d
        p = next(model.parameters())
        (batch_size, max_len), dev = valid.shape, p.device
        shape = (batch_size, n_kv, max_len, d)
        self.k = [torch.empty(shape, dtype=p.dtype, device=dev) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=p.dtype, device=dev) for _ in range(n_layers)]
        self.len = 0  # positions of the cache filled so far
        # (B, 1, 1, max_len) additive attention mask: -inf on left padding
        self.bias = torch.zeros(valid.shape, dtype=p.dtype, device=dev).masked_fill_(~valid.to(dev), float("-inf"))
        self.bias = self.bias[:, None, None]

    def _mask(self, t: int, dev) -> tuple[torch.Tensor, int, int]:
        """(the additive mask (B, 1, t, end) of the next t positions, start, end)."""
        start, end = self.len, self.len + t
        bias = self.bias[..., :end]                                         # (B, 1, 1, end)
        if t > 1:  # no future keys; a padding query sees itself, so no row is all -inf (NaN)
            query_at = torch.arange(start, end, device=dev)[:, None]        # (t, 1)
            key_at = torch.arange(end, device=dev)[None]                     # (1, end)
            causal = torch.zeros((t, end), dtype=bias.dtype, device=dev)
            bias = bias + causal.masked_fill_(key_at > query_at, float("-inf"))  # (B, 1, t, end)
            bias.diagonal(offset=start, dim1=-2, dim2=-1).fill_(0.0)
        return bias, start, end

    def _attend(self, i: int, q, k, v, bias, start: int, end: int) -> torch.Tensor:
        """Layer i: write k, v (B, kv, t, d) into its cache at [start, end) and attend with the
        scaled queries q (B, heads, t, d); returns (B, t, heads * d)."""
        B, _, t, _ = q.shape
        self.k[i][:, :, start:end] = k
        self.v[i][:, :, start:end] = v
        q = q.reshape(B, self.n_kv, -1, self.d)                              # (B, kv, g * t, d)
        scores = (q @ self.k[i][:, :, :end].transpose(-1, -2)).view(B, self.n_heads, t, end)
        w = (scores + bias).softmax(-1).view(B, self.n_kv, -1, end)
        out = (w @ self.v[i][:, :, :end]).view(B, self.n_heads, t, self.d)
        return out.transpose(1, 2).reshape(B, t, self.n_heads * self.d)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (1-D index) in the cache and the mask."""
        self.k = [k[rows, :, :] for k in self.k]
        self.v = [v[rows, :, :] for v in self.v]
        self.bias = self.bias[rows]


class LlamaDecoder(StaticDecoder):
    def __init__(self, model, valid: torch.Tensor):
        self.body, self.head = model.model, model.get_output_embeddings()
        attn = self.body.layers[0].self_attn
        self.scale = attn.scaling
        super().__init__(model, valid, len(self.body.layers), model.config.num_attention_heads,
                         model.config.num_key_value_heads, attn.head_dim)
        # the rotary table of every position up to max_len, computed once by the model's own module
        p = next(model.parameters())
        pos = torch.arange(valid.shape[1], device=p.device)[None]
        self.cos, self.sin = self.body.rotary_emb(torch.empty(0, dtype=p.dtype, device=p.device), position_ids=pos)
        # per layer, q/k/v and gate/up as one product each: two calls fewer per step and layer,
        # the same values (each output column is the same dot product as in its own layer)
        self.qkv = [_stacked(l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj) for l in self.body.layers]
        self.gate_up = [_stacked(l.mlp.gate_proj, l.mlp.up_proj) for l in self.body.layers]
        self.widths = [self.n_heads * self.d, self.n_kv * self.d, self.n_kv * self.d]  # of q, k, v

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor):
        B, t = input_ids.shape
        x = self.body.embed_tokens(input_ids)                               # (B, t, H)
        cos, sin = self.cos[0, position_ids][:, None], self.sin[0, position_ids][:, None]  # (B, 1, t, d)
        bias, start, end = self._mask(t, x.device)
        for i, (layer, qkv, gate_up) in enumerate(zip(self.body.layers, self.qkv, self.gate_up)):
            attn, mlp = layer.self_attn, layer.mlp
            q, k, v = F.linear(_rms_norm(layer.input_layernorm, x), *qkv).split(self.widths, -1)
            q = q.view(B, t, self.n_heads, self.d).transpose(1, 2)                  # (B, heads, t, d)
            k = k.view(B, t, self.n_kv, self.d).transpose(1, 2)                     # (B, kv, t, d)
            out = self._attend(i, (q * cos + _rotate_half(q) * sin) * self.scale, k * cos + _rotate_half(k) * sin,
                               v.view(B, t, self.n_kv, self.d).transpose(1, 2), bias, start, end)
            x = x + attn.o_proj(out)
            gate, up = F.linear(_rms_norm(layer.post_attention_layernorm, x), *gate_up).chunk(2, -1)
            x = x + mlp.down_proj(mlp.act_fn(gate) * up)                        # (B, t, H)
        self.len = end
        return self.head(_rms_norm(self.body.norm, x[:, -1]))


class GPT2Decoder(StaticDecoder):
    """GPT-2: learned positions, LayerNorm, q/k/v as one Conv1D (`c_attn`), GELU MLP; each
    layer's attention scale as the model sets it (1/sqrt(d), and 1/(layer + 1) where configured)."""

    def __init__(self, model, valid: torch.Tensor):
        self.body, self.head = model.transformer, model.get_output_embeddings()
        cfg = model.config
        super().__init__(model, valid, len(self.body.h), cfg.n_head, cfg.n_head, cfg.n_embd // cfg.n_head)

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor):
        B, t = input_ids.shape
        x = self.body.wte(input_ids) + self.body.wpe(position_ids)         # (B, t, H)
        bias, start, end = self._mask(t, x.device)
        heads = lambda z: z.view(B, t, self.n_heads, self.d).transpose(1, 2)  # noqa: E731  (B, heads, t, d)
        for i, layer in enumerate(self.body.h):
            attn, mlp = layer.attn, layer.mlp
            q, k, v = attn.c_attn(layer.ln_1(x)).split(attn.split_size, -1)
            x = x + attn.c_proj(self._attend(i, heads(q) * attn.scaling, heads(k), heads(v), bias, start, end))
            x = x + mlp.c_proj(mlp.act(mlp.c_fc(layer.ln_2(x))))
        self.len = end
        return self.head(self.body.ln_f(x[:, -1]))


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
