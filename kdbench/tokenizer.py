"""A byte-level BPE trained on the training split (embedded default), saved as a Hugging Face
fast tokenizer so every later stage loads it with AutoTokenizer like a hub tokenizer."""
from __future__ import annotations

from kdbench import io
from kdbench.data import format_prompt

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_bpe(records: list[dict], vocab_size: int, out_dir) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = (format_prompt(r["instruction"], r.get("input", "")) + r["output"][0] for r in records)
    tok.train_from_iterator(texts, trainer=trainer, length=len(records))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   bos_token=EOS, clean_up_tokenization_spaces=False)
    with io.atomic_path(out_dir) as tmp:
        fast.save_pretrained(tmp)
