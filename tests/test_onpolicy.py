"""Training on the student's own samples (kdbench/onpolicy.py, methods gkd and distillm): the
loss and the teacher see the student's sampled tokens, the step's source follows the scheduled
shares, DistiLLM's threshold rule, the sampler's length cap."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench import method as M
from kdbench import onpolicy
from kdbench.data import Encoded, collate, encode
from kdbench.generate import sample_ids
from kdbench.onpolicy import OnPolicy, Teacher, validation_loss
from kdbench.train import train

BUDGET = {"epochs": 2, "batch_size": 4, "grad_accum": 2, "lr": 1e-3, "min_lr_ratio": 0.1, "warmup": 0.1,
          "weight_decay": 0.0, "grad_clip": 1.0, "loss_on": "response", "precision": "fp32", "bucket_window": 1}
METHODS = M.discover()


@pytest.fixture(scope="module")
def examples(tokenizer, records):
    return encode(tokenizer, records[:12], max_length=512)


class Recorder:
    """A teacher that remembers every batch it scores and returns zero logits, (N, V) rows at
    the batch's loss positions as the engine's teachers do."""

    def __init__(self, vocab):
        self.vocab, self.batches = vocab, []

    def __call__(self, batch):
        self.batches.append({k: v.clone() for k, v in batch.items()})
        return torch.zeros(int(batch["mask"].sum()), self.vocab)


def sampler(method, examples, tokenizer, model=None, validation=None):
    return OnPolicy(method, examples, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                    max_length=512, max_new_tokens=6, precision="fp32", seed=0,
                    validation=validation, model=model)


@pytest.mark.parametrize("lmbda", [1.0, 0.0])
def test_gkd_trains_on_the_students_samples(lmbda, examples, tokenizer, make_model, monkeypatch):
    drawn = []  # every sequence the student sampled, in order

    def recording_sample_ids(*args, **kwargs):
        out = sample_ids(*args, **kwargs)
        drawn.extend(out)
        return out

    monkeypatch.setattr(onpolicy, "sample_ids", recording_sample_ids)
    seen_masks = []
    gkd = M.instantiate(METHODS["gkd"], {"lmbda": lmbda})
    loss = gkd.loss
    gkd.loss = lambda s, t, mask, p: (seen_masks.append(mask.clone()), loss(s, t, mask, p))[1]
    student = make_model(seed=1)
    ref, online = Recorder(student.config.vocab_size), Recorder(student.config.vocab_size)
    res = train(student, examples, BUDGET, seed=0, pad_id=tokenizer.pad_token_id, method=gkd,
                teacher=Teacher(ref, online), kd_ratio=1.0,
                on_policy=sampler(gkd, examples, tokenizer))
    by_index = {e.index: e for e in examples}
    if lmbda == 0.0:
        assert not drawn and not online.batches and len(ref.batches) == len(seen_masks)
        assert (res.trace["on_policy_batch"] == 0).all() and res.stats["train_gen_s"] == 0.0
        return
    assert not ref.batches and len(online.batches) == len(seen_masks) == 6  # 3 micro-batches x 2 epochs
    assert (res.trace["on_policy_batch"] == 1).all() and (res.trace["gen_s"] > 0).all()
    assert res.stats["train_gen_s"] == pytest.approx(res.trace["gen_s"].sum())
    assert len(drawn) == sum(len(b["index"]) for b in online.batches)
    k, differs = 0, 0
    for batch, mask in zip(online.batches, seen_masks):
        assert mask.all() and mask.numel() == int(batch["mask"].sum())  # the loss sees the batch's positions
        for row, i in enumerate(batch["index"].tolist()):
            e, new = by_index[i], drawn[k]
            k += 1
            assert 1 <= len(new) <= 6
            # the loss sees the prompt's last position onwards: targets are the sampled tokens
            targets = batch["targets"][row][batch["mask"][row]].tolist()
            assert targets == new
            assert batch["input_ids"][row, :e.n_prompt].tolist() == e.ids[:e.n_prompt]
            differs += targets != e.ids[e.n_prompt:]
    assert differs > 0  # samples, not the references


def test_the_step_source_follows_the_shares(examples, tokenizer):
    method = M.Method()
    method.replay_capacity = 3
    op = sampler(method, examples, tokenizer)
    fake = lambda model, idx: [Encoded(examples[i].ids[:examples[i].n_prompt] + [7, 8], examples[i].n_prompt, i)
                               for i in idx]
    op.sample = fake
    window = [collate(examples[:2], tokenizer.pad_token_id)]
    progress = M.Progress(values={"on_policy": 0.3, "replay": 0.4})

    class Draws:  # the step's uniform draw, set by the test; replay picks stay random
        u, choice = 0.0, np.random.default_rng(0).choice

        def random(self):
            return self.u

    op.rng = Draws()

    def step(u):
        op.rng.u = u
        return op.window(window, progress, None)

    out, row = step(0.9)  # above on_policy + replay: the references
    assert out is window and row["on_policy_batch"] == 0.0
    out, row = step(0.5)  # replay share, buffer not full yet: fresh samples, kept
    assert row == {**row, "on_policy_batch": 1.0, "replay_batch": 0.0} and len(op.buffer) == 2
    assert out[0]["targets"][out[0]["mask"]].tolist() == [7, 8, 7, 8]
    step(0.1)  # fresh: kept too; the buffer keeps the last 3
    assert len(op.buffer) == 3
    out, row = step(0.5)  # buffer full: replayed
    assert row["replay_batch"] == 1.0 and len(op.buffer) == 3 and "on_policy" in out[0]
    assert len(out[0]["index"]) == 2


def test_distillm_threshold_rises_with_the_validation_loss():
    d = M.instantiate(METHODS["distillm"], {})
    assert (d.alpha, d.threshold, d.loss_eps, d.replay_capacity) == (0.1, 0.0, 0.1, 1000)
    assert d.schedule(M.Progress(step=5, total_steps=10)) == {"on_policy": 0.0, "replay": 0.0, "sgo_threshold": 0.0}
    for loss in (2.0, 1.9, 2.05):  # the mark is 2.0; 2.05 < 2.0 + 0.1
        d.observe_validation_loss(loss)
    assert d.threshold == 0.0
    d.observe_validation_loss(2.15)  # >= 2.1: θ += 0.1, the mark moves to 2.15
    d.observe_validation_loss(2.2)   # < 2.25
    assert d.threshold == pytest.approx(0.1) and d.mark == 2.15
    v = d.schedule(M.Progress(step=1, total_steps=4))  # fraction 0.25, decreasing: 0.1 * 0.75 fresh
    assert v["on_policy"] == pytest.approx(0.075) and v["replay"] == pytest.approx(0.025)
    for loss in np.arange(2.3, 4.0, 0.15):
        d.observe_validation_loss(float(loss))
    assert d.threshold == 1.0


def test_validation_loss_is_the_reference_token_mean_ce(examples, tokenizer, make_model):
    model = make_model(seed=2)
    got = validation_loss(model, examples[:3], tokenizer.pad_token_id, "fp32", batch_size=2)
    total, n = 0.0, 0
    for e in examples[:3]:  # one example at a time, no padding
        logits = model(input_ids=torch.tensor([e.ids])).logits[0]
        ce = F.cross_entropy(logits[e.n_prompt - 1:-1], torch.tensor(e.ids[e.n_prompt:]), reduction="sum")
        total, n = total + ce.item(), n + e.n_response
    assert got == pytest.approx(total / n, rel=1e-5)
    assert model.training  # restored


def test_distillm_sees_its_validation_loss_each_epoch(examples, tokenizer, make_model):
    d = M.instantiate(METHODS["distillm"], {"init_threshold": 0.5})
    seen = []
    d.observe_validation_loss = seen.append
    student = make_model(seed=1)
    op = sampler(d, examples, tokenizer, model=student, validation=examples[:4])
    res = train(student, examples, BUDGET, seed=0, pad_id=tokenizer.pad_token_id, method=d,
                teacher=Teacher(Recorder(student.config.vocab_size), Recorder(student.config.vocab_size)),
                kd_ratio=1.0, on_policy=op)
    assert len(seen) == 1 + BUDGET["epochs"]
    assert {"on_policy", "replay", "sgo_threshold", "on_policy_batch", "replay_batch", "gen_s"} <= set(res.trace)


def test_sample_ids_caps_new_tokens_and_cuts_after_eos(examples, tokenizer, make_model):
    torch.manual_seed(0)
    prompts = [e.ids[:e.n_prompt] for e in examples[:5]]
    eos = tokenizer.eos_token_id
    for cap in (1, 4):
        for new in sample_ids(make_model(seed=3), prompts, eos_id=eos, pad_id=tokenizer.pad_token_id,
                              max_new_tokens=cap):
            assert 1 <= len(new) <= cap and eos not in new[:-1]


def test_runtime_table_shows_the_sampling_share():
    from kdbench import tables as T
    from test_tables import WALL, make_runs

    runs = make_runs()
    gen = {"cpd": [40, 22, 48]}  # seconds sampling, per seed; shares 0.5, 0.25, 0.5
    runs["train_gen_s"] = [gen.get(m, [0, 0, 0])[s] if m in WALL else np.nan
                           for m, s in zip(runs["method"], runs["seed"])]
    df = T.runtime_table(runs)
    assert df.loc["cpd", "gen_share_mean"] == pytest.approx(1.25 / 3)
    assert df.loc["kd", "gen_share_mean"] == 0.0
    f = T.format_table(df, "md").set_index("method")
    assert f.loc["cpd", "on-policy gen share"] == "0.42"
    assert "gen_share_mean" not in T.runtime_table(runs.drop(columns="train_gen_s")).columns
