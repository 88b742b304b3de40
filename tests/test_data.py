"""Prompt template, tokenizer round trip, tokenisation and batching."""
import numpy as np
import torch

from kdbench.data import PROMPT, collate, encode, encode_prompts, format_prompt, make_batches


def test_prompt_template_is_the_protocols():
    p = format_prompt("Sort the list.")
    assert p.startswith("Below is an instruction that describes a task. Write a response")
    assert p.endswith("### Instruction:\nSort the list.\n\n### Response:\n")
    q = format_prompt("Sort the list.", "b a")
    assert "paired with an input" in q and q.endswith("### Input:\nb a\n\n### Response:\n")
    assert format_prompt("x", "  ") == PROMPT.format(instruction="x")


def test_tokenizer_round_trip(tokenizer, records):
    for r in records[:20]:
        text = format_prompt(r["instruction"], r["input"]) + r["output"][0]
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert tokenizer.eos_token_id != tokenizer.pad_token_id


def test_trained_tokenizer_spends_one_token_per_template_piece(tokenizer, records):
    from kdbench.tokenizer import template_pieces

    pieces = template_pieces()
    assert len(pieces) == 4 and all(len(tokenizer(p)["input_ids"]) == 1 for p in pieces)
    r = next(r for r in records if r["input"])
    with_input, plain = format_prompt(r["instruction"], r["input"]), format_prompt(r["instruction"])

    def n(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # a prompt's tokens: its fields' own tokens plus 3 (with an input) or 2 (without)
    assert n(with_input) == n(r["instruction"]) + n(r["input"]) + 3
    assert n(plain) == n(r["instruction"]) + 2


def test_encode_appends_eos_and_marks_the_response(tokenizer, records):
    ex = encode(tokenizer, records[:4], max_length=512)
    batch = collate(ex, tokenizer.pad_token_id)
    for b, e in enumerate(ex):
        assert e.ids[-1] == tokenizer.eos_token_id
        # the masked positions predict exactly the response tokens (incl. EOS)
        predicted = batch["targets"][b][batch["mask"][b]].tolist()
        assert predicted == e.ids[e.n_prompt:]
        assert tokenizer.decode(e.ids[e.n_prompt:-1]) == records[b]["output"][0]


def test_batched_encoding_equals_one_text_at_a_time(tokenizer, records):
    """encode/encode_prompts tokenise in one batched call: the same ids as a call per text, with
    inputs, empty responses and given responses."""
    recs = [*records[:6], {**records[0], "input": "b a c"}]
    responses = ["", *[r["output"][-1] for r in recs[1:]]]
    prompts = [tokenizer(format_prompt(r["instruction"], r["input"]))["input_ids"] for r in recs]
    assert encode_prompts(tokenizer, recs) == prompts and encode_prompts(tokenizer, []) == []
    for given in (None, responses):
        texts = given or [r["output"][0] for r in recs]
        want = [p + tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for p, t in zip(prompts, texts)]
        ex = encode(tokenizer, recs, max_length=512, responses=given)
        assert [e.ids for e in ex] == want and [e.n_prompt for e in ex] == [len(p) for p in prompts]


def test_loss_on_all_covers_every_real_token(tokenizer, records):
    ex = encode(tokenizer, records[:3], max_length=512)
    batch = collate(ex, tokenizer.pad_token_id, loss_on="all")
    assert batch["mask"].sum(1).tolist() == [len(e.ids) - 1 for e in ex]


def test_right_padding_needs_no_attention_mask(tokenizer, records, make_model):
    model = make_model().eval()
    ex = encode(tokenizer, records[:4], max_length=512)
    batch = collate(ex, tokenizer.pad_token_id)
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"]).logits
        for b, e in enumerate(ex):
            alone = model(input_ids=torch.tensor([e.ids])).logits[0]
            torch.testing.assert_close(padded[b, :len(e.ids)], alone, atol=1e-5, rtol=1e-4)


def test_batches_cover_the_epoch_and_bucket_by_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 100, size=103)
    order = rng.permutation(103)
    batches = make_batches(order, lengths, batch_size=8, window=4, rng=np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(103))
    # every batch comes from one window of the given order (the curriculum order survives)
    pos = {int(i): k for k, i in enumerate(order)}
    for b in batches:
        assert len({pos[int(i)] // 32 for i in b}) == 1
    # inside a window, batches are length-sorted runs: spread inside a batch stays small
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < np.ptp(lengths) / 2
    again = make_batches(order, lengths, batch_size=8, window=4, rng=np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(batches, again))
