"""Shared fixtures: a tiny synthetic split, a BPE tokenizer trained on it, tiny Llama models."""
import pytest
import torch

from kdbench.synthetic import generate_split

TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512}


@pytest.fixture(scope="session")
def records():
    return generate_split("train", 40, seed=0)


@pytest.fixture(scope="session")
def tokenizer(records, tmp_path_factory):
    from kdbench.models import load_tokenizer
    from kdbench.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_bpe(records, 500, out)
    return load_tokenizer(out)


def tiny_model(tokenizer, seed=0, **over):
    from kdbench.models import build

    spec = {"init": "scratch", "config": {**TINY, **over}, "attn_implementation": "sdpa"}
    return build(spec, tokenizer, seed, "tiny")


@pytest.fixture
def make_model(tokenizer):
    torch.manual_seed(0)
    return lambda seed=0, **over: tiny_model(tokenizer, seed, **over)
