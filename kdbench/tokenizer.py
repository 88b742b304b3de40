"""A byte-level BPE trained on the training split (embedded default), saved as a Hugging Face
fast tokenizer so every later stage loads it with AutoTokenizer like a hub tokenizer.

The prompt template's fixed text (the Alpaca preamble with its `### Instruction:` header, and
the `### Input:` and `### Response:` headers) is added as one token per piece, as chat models'
tokenizers do with their template's control tokens. Prompts keep the protocol's text verbatim
(kdbench.data.render_prompt), but the template costs 2-3 positions instead of 30-45 (the
default's examples average 33 tokens instead of 72), which is most of what every step of the
embedded default computes."""
from __future__ import annotations

import re

from kdbench import io
from kdbench.data import PROMPT, PROMPT_WITH_INPUT, render_prompt

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def template_pieces() -> list[str]:
    """The fixed text between the template's fields, once each, in a fixed order."""
    return sorted({p for t in (PROMPT, PROMPT_WITH_INPUT) for p in re.split(r"\{\w+\}", t) if p})


def train_bpe(records: list[dict], vocab_size: int, out_dir) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = (render_prompt(None, r) + r["output"][0] for r in records)  # the Alpaca prompt
    tok.train_from_iterator(texts, trainer=trainer, length=len(records))
    # after training, so the BPE vocabulary keeps its vocab_size entries; not special tokens,
    # so a sampled answer that contains one decodes to its text
    tok.add_tokens([AddedToken(p, normalized=False) for p in template_pieces()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   bos_token=EOS, clean_up_tokenization_spaces=False)
    with io.atomic_path(out_dir) as tmp:
        fast.save_pretrained(tmp)
