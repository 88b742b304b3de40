"""The sampler's static-cache decoder gives the model's own logits (left padding, grouped-query
attention, q/k/v biases, rows dropped mid-way), and other architectures take the model's forward."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kdbench.decode import GPT2Decoder, HFDecoder, LlamaDecoder, decoder

V = 50


def _model(model_type, **over):
    cfg = {"vocab_size": V, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    if model_type == "gpt2":
        cfg = {"vocab_size": V, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}
    torch.manual_seed(0)
    conf = AutoConfig.for_model(model_type, **{**cfg, **over})
    conf._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(conf).eval()


def _batch(B=5, T=9, steps=4, seed=1):
    """Left-padded prompts of lengths 2..T, `steps` continuation tokens and the validity mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    lengths[0] = T
    prompt_valid = torch.arange(T)[None] >= (T - lengths)[:, None]                       # (B, T)
    ids = torch.randint(0, V, (B, T + steps), generator=g).masked_fill(
        torch.cat([~prompt_valid, torch.zeros(B, steps, dtype=torch.bool)], 1), 0)
    valid = torch.cat([prompt_valid, torch.ones(B, steps, dtype=torch.bool)], 1)         # (B, T + steps)
    pos = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 1)
    return ids, valid, pos, T


def _reference(model, ids, valid, pos):
    """(B, T + steps, V) logits of the model's own forward over the whole sequence."""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=valid.long(), position_ids=pos).logits


def _decode(dec, ids, pos, T, drop_after=None, rows=None):
    """Logits of the prompt's last position, then of each continuation token fed one by one."""
    out = [dec(ids[:, :T], pos[:, :T])]
    for s in range(T, ids.shape[1] - 1):
        if s == drop_after:
            dec.keep(rows)
            ids, pos = ids[rows], pos[rows]
        out.append(dec(ids[:, s:s + 1], pos[:, s:s + 1]))
    return out


@pytest.mark.parametrize("model_type, over, kind", [("llama", {}, LlamaDecoder),
                                                    ("llama", {"num_key_value_heads": 4}, LlamaDecoder),
                                                    ("qwen2", {}, LlamaDecoder), ("gpt2", {}, GPT2Decoder),
                                                    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, GPT2Decoder),
                                                    ("gpt2", {"reorder_and_upcast_attn": True}, HFDecoder),
                                                    ("opt", {}, HFDecoder)])
def test_each_decoder_gives_the_models_logits(model_type, over, kind):
    model = _model(model_type, **over)
    ids, valid, pos, T = _batch()
    dec = decoder(model, valid)
    assert isinstance(dec, kind)
    ref = _reference(model, ids, valid, pos)
    with torch.no_grad():
        got = _decode(dec, ids, pos, T)
    for k, logits in enumerate(got):
        torch.testing.assert_close(logits, ref[:, T - 1 + k], rtol=1e-5, atol=1e-5)


def test_qwen2_biases_are_used():
    model = _model("qwen2")
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.bias.add_(1.0)
    ids, valid, pos, T = _batch()
    ref = _reference(model, ids, valid, pos)
    with torch.no_grad():
        got = decoder(model, valid)(ids[:, :T], pos[:, :T])
    torch.testing.assert_close(got, ref[:, T - 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type, over", [("llama", {}), ("gpt2", {})])
def test_dropping_finished_rows_keeps_the_others_logits(model_type, over):
    model = _model(model_type, **over)
    ids, valid, pos, T = _batch(steps=5)
    ref = _reference(model, ids, valid, pos)
    rows = torch.tensor([0, 2, 4])
    with torch.no_grad():
        got = _decode(decoder(model, valid), ids, pos, T, drop_after=T + 1, rows=rows)
    for k, logits in enumerate(got):
        expected = ref[:, T - 1 + k] if k < 2 else ref[rows, T - 1 + k]
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_sliding_window_models_take_the_models_forward():
    _, valid, _, _ = _batch()
    assert isinstance(decoder(_model("mistral", sliding_window=4), valid), HFDecoder)
