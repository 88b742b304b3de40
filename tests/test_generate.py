"""The sampler: the new-token cap never depends on the batch, greedy decoding equals
`transformers`' generate, and sampled tokens follow the filtered model distribution."""
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

import kdbench.generate as G
from kdbench.data import encode_prompts


@pytest.fixture(scope="module")
def model(tokenizer):
    from tests.conftest import tiny_model

    return tiny_model(tokenizer, seed=5).eval()


class _NoEOS:
    """The tokenizer with an EOS id no model can draw."""

    eos_token_id = -1

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def _lengths_spy(monkeypatch):
    seen = []
    real = G.sample_batch

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.extend(len(r) for r in out)
        return out
    monkeypatch.setattr(G, "sample_batch", spy)
    return seen


@pytest.mark.parametrize("batch_size", [1, 3, 40])
def test_new_tokens_never_exceed_the_cap_whatever_the_batch(batch_size, model, tokenizer, records, monkeypatch):
    longest = max(len(p) for p in encode_prompts(tokenizer, records))
    seen = _lengths_spy(monkeypatch)
    tokenizer = _NoEOS(tokenizer)  # every answer runs to its cap
    G.sample(model, tokenizer, records, seed=0, max_length=longest + 7, max_new_tokens=None,
             batch_size=batch_size, precision="fp32")
    assert len(seen) == len(records) and set(seen) == {7}  # max_length - the longest prompt
    seen.clear()
    G.sample(model, tokenizer, records, seed=0, max_length=longest + 7, max_new_tokens=3,
             batch_size=batch_size, precision="fp32")
    assert set(seen) == {3}


def test_cap_is_independent_of_batches():
    prompts = [[1] * 5, [1] * 9, [1] * 2]
    assert G.new_token_cap(prompts, 20, None) == 11
    assert G.new_token_cap(prompts[:1], 20, None) == 15
    assert G.new_token_cap(prompts, 20, 4) == 4


def test_greedy_equals_transformers_generate(model, tokenizer, records):
    recs = records[:6]
    ours, _ = G.sample(model, tokenizer, recs, seed=0, top_k=1, max_length=512, max_new_tokens=12,
                       batch_size=6, precision="fp32")
    prompts = encode_prompts(tokenizer, recs)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    T = max(len(p) for p in prompts)
    ids = torch.full((len(recs), T), tokenizer.pad_token_id)
    attn = torch.zeros_like(ids)
    for b, i in enumerate(order):
        ids[b, T - len(prompts[i]):] = torch.tensor(prompts[i])
        attn[b, T - len(prompts[i]):] = 1
    out = model.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=12,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    for b, i in enumerate(order):
        new = out[b, T:].tolist()
        new = new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        assert ours[i] == tokenizer.decode(new, skip_special_tokens=True).strip()


def test_first_token_follows_the_filtered_distribution(model, tokenizer, records):
    """4000 draws of the first new token against the distribution transformers' warpers give."""
    prompt, = encode_prompts(tokenizer, records[:1])
    temperature, top_k, top_p, n = 0.5, 20, 0.9, 4000
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[:, -1].float()
    warped = logits
    for w in (TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)):
        warped = w(None, warped)
    expected = warped.softmax(-1)[0].numpy()
    torch.manual_seed(0)
    with torch.no_grad():
        out = G.sample_batch(model, [prompt] * n, [1] * n, eos=-1, pad=0,
                             temperature=temperature, top_p=top_p, top_k=top_k)
    counts = np.bincount([r[0] for r in out], minlength=len(expected)) / n
    assert counts[expected == 0].sum() == 0  # nothing outside the top-k / top-p support
    # total variation: about 0.5 * sqrt(support / n) * 0.8 = 0.03 by chance for 20 tokens
    assert 0.5 * np.abs(counts - expected).sum() < 0.08
