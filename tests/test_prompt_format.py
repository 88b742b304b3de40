"""The prompt format (`data.prompt_format`, kdbench.data) and the teacher gate (kdbench/gate.py),
with a tiny local model whose tokenizer has a chat template (ChatML, built here, no download):
the same record renders the same prompt in every stage, answers end with the template's
end-of-turn token, stop strings cut answers, and a teacher that never emits its end token
stops the DAG before any student is distilled."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fixtures_hub import make_chat_model, make_chat_tokenizer
from kdbench_cli import tiny_profile
from kdbench import config as C
from kdbench import data as D
from kdbench import generate as G
from kdbench import io
from kdbench import stages as S
from kdbench.errors import UserError
from kdbench.gate import verdict
from kdbench.paths import Paths
from kdbench.synthetic import generate_split

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "Answer briefly."


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
    return make_chat_tokenizer(tmp_path_factory.mktemp("chat") / "tok", generate_split("train", 60, seed=0))


def chat_pair(folder: Path, tok, never_ends: bool = False) -> dict:
    """`pairs` of a profile: a tiny pretrained teacher and student over `tok` (ChatML)."""
    make_chat_model(folder / "teacher", tok, seed=0, never_ends=never_ends)
    make_chat_model(folder / "student", tok, seed=1)
    return {"tiny": {"teacher": {"init": "pretrained", "path": str(folder / "teacher"), "finetuned": never_ends},
                     "student": {"init": "pretrained", "path": str(folder / "student")}}}


def chat_profile(tmp: Path, tok, never_ends: bool = False, **over) -> dict:
    cfg = tiny_profile(tmp, tokenizer={"train": False}, pairs=chat_pair(tmp, tok, never_ends), **over)
    cfg["data"].update(prompt_format="chat", system_prompt=SYSTEM)
    cfg["results_dir"] = str(tmp / "results")
    return cfg


# --- the format itself ------------------------------------------------------------------------

def test_chat_prompt_is_the_template_and_answers_end_with_its_end_of_turn(chat_tok):
    rec = {"instruction": "Sort the words.", "input": "pear, apple", "output": ["apple, pear"]}
    fmt = D.PromptFormat("chat", system=SYSTEM)
    text = D.render_prompt(chat_tok, rec, fmt)
    assert text == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nSort the words.\n\npear, apple"
                    "<|im_end|>\n<|im_start|>assistant\n")
    end = chat_tok.convert_tokens_to_ids("<|im_end|>")
    assert D.end_token(chat_tok, fmt) == end != chat_tok.eos_token_id
    (ex,) = D.encode(chat_tok, [rec], 256, fmt=fmt)
    assert ex.ids[:ex.n_prompt] == chat_tok(text, add_special_tokens=False)["input_ids"]  # nothing added
    assert ex.ids[-1] == end and chat_tok.decode(ex.ids[ex.n_prompt:-1]) == "apple, pear"
    # alpaca, the default, is the protocol's text and EOS, as before
    (alp,) = D.encode(chat_tok, [rec], 256)
    assert chat_tok.decode(alp.ids[:alp.n_prompt]) == D.format_prompt("Sort the words.", "pear, apple")
    assert alp.ids[-1] == chat_tok.eos_token_id


def test_a_tokenizer_without_a_usable_template_is_one_sentence(chat_tok, tokenizer):
    rec = {"instruction": "x", "output": ["y"]}
    with pytest.raises(UserError, match="has no chat template; use `prompt_format: alpaca`"):
        D.encode_prompts(tokenizer, [rec], D.PromptFormat("chat"))
    chat_tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # no end of turn
    try:
        with pytest.raises(UserError, match="writes no control token after an assistant's answer"):
            D.end_token(chat_tok, D.PromptFormat("chat"))
    finally:
        from fixtures_hub import CHATML
        chat_tok.chat_template = CHATML


def test_config_refuses_chat_with_a_trained_tokenizer_and_a_system_prompt_with_alpaca(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    raw["data"]["prompt_format"] = "chat"
    with pytest.raises(UserError, match="`data.prompt_format: chat` needs the teacher's own tokenizer"):
        C.validate(raw)
    raw["data"].update(prompt_format="alpaca", system_prompt="Be brief.")
    with pytest.raises(UserError, match="`data.system_prompt` is a chat template's system message"):
        C.validate(raw)


def test_stop_strings_cut_the_answer_count_as_ended_and_are_recorded(chat_tok, monkeypatch, make_model):
    fmt = D.PromptFormat(stop_strings=("### Instruction:", "STOP"))
    assert fmt.cut("yes\n\n### Instruction:\nmore STOP") == ("yes\n\n", "### Instruction:")
    assert fmt.cut("no stop here") == ("no stop here", None)
    text = chat_tok("the answer\n\n### Instruction:\nwrite more", add_special_tokens=False)["input_ids"]
    # every answer is `text` and runs to its cap: only the stop string ends it
    monkeypatch.setattr(G, "sample_batch", lambda model, prompts, limits, **kw: [text[:lim] for lim in limits])
    recs = generate_split("id", 2, seed=0)
    answers, st = G.sample(make_model(), chat_tok, recs, seed=1, max_new_tokens=len(text), fmt=fmt)
    assert answers == ["the answer"] * 2 and st["ended"] == [True] * 2 and st["stop"] == ["### Instruction:"] * 2
    answers, st = G.sample(make_model(), chat_tok, recs, seed=1, max_new_tokens=len(text))  # no stop strings
    assert st["ended"] == [False] * 2 and st["stop"] == [None] * 2 and "write more" in answers[0]


# --- every stage ----------------------------------------------------------------------------

def test_the_same_record_renders_the_same_prompt_in_every_stage(chat_tok, tmp_path, monkeypatch):
    """One record in the training, validation and test splits; every stage that puts records to
    a model (teacher SFT and evaluation, logit cache, teacher samples, difficulty scoring, a
    distillation run with on-policy samples, its validation and evaluation) renders it through
    the chat template to the same text, and every sampler stops at <|im_end|>."""
    cfg = C.validate(chat_profile(tmp_path, chat_tok, methods={"include": ["gkd"], "params": {"gkd": {"lmbda": 1.0}}}))
    P = Paths(cfg)
    S.prepare_data(cfg)
    shared = {**io.read_jsonl(P.data("train"))[0], "id": "shared"}
    for split in ("train", "validation", "id"):
        io.write_jsonl(P.data(split), [shared] + io.read_jsonl(P.data(split))[1:])

    stage, rendered, stops, ends = [None], [], [], []
    render, sample_batch, end_token = D.render_prompt, G.sample_batch, D.end_token

    def spy_render(tokenizer, record, fmt=D.PROTOCOL):
        text = render(tokenizer, record, fmt)
        rendered.append((stage[0], record["instruction"], record.get("input"), fmt.kind, text))
        return text

    def spy_sample_batch(model, prompts, limits, **kw):
        stops.append((stage[0], kw["eos"]))
        return sample_batch(model, prompts, limits, **kw)

    def spy_end(tokenizer, fmt=D.PROTOCOL):
        ends.append((stage[0], end_token(tokenizer, fmt)))
        return ends[-1][1]

    monkeypatch.setattr(D, "render_prompt", spy_render)
    monkeypatch.setattr(D, "end_token", spy_end)
    monkeypatch.setattr(G, "sample_batch", spy_sample_batch)
    for name, call in [("train_teacher", lambda: S.train_teacher(cfg, "tiny", 0)),
                       ("init_student", lambda: S.init_student(cfg, "tiny", 0)),
                       ("sft_init", lambda: S.sft_init(cfg, "tiny", 0)),  # gkd's start
                       ("cache_teacher", lambda: S.cache_teacher(cfg, "tiny", 0)),
                       ("teacher_samples", lambda: S.teacher_samples(cfg, "tiny", 0)),
                       ("score_difficulty", lambda: S.score_difficulty(cfg, "tiny")),
                       ("distill", lambda: S.distill(cfg, "tiny", "gkd", "lmbda-1.0", 0))]:
        stage[0] = name
        call()

    end = chat_tok.convert_tokens_to_ids("<|im_end|>")
    assert {kind for *_, kind, _ in rendered} == {"chat"}
    mine = {(st, text) for st, ins, inp, _, text in rendered if (ins, inp) == (shared["instruction"], shared["input"])}
    assert {st for st, _ in mine} == {"train_teacher", "sft_init", "cache_teacher", "teacher_samples",
                                      "score_difficulty", "distill"}
    (text,) = {text for _, text in mine}
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{shared['instruction']}")
    assert text.endswith("<|im_start|>assistant\n")
    assert {e for _, e in ends} == {end} and {e for _, e in stops} == {end}
    assert {st for st, _ in stops} == {"train_teacher", "sft_init", "teacher_samples", "score_difficulty", "distill"}
    trace = pd.read_csv(P.run_file("trace", pair="tiny", method="gkd", variant="lmbda-1.0", seed=0))
    assert trace["on_policy_batch"].eq(1).all()  # λ = 1: every step trained on the student's samples
    rows = io.read_jsonl(P.answers("id", pair="tiny", method="gkd", variant="lmbda-1.0", seed=0))
    assert all("stop" in r and r["stop"] is None for r in rows)


# --- the teacher gate -------------------------------------------------------------------------

def test_gate_verdict_closed_form():
    answers = [{"answer": "a b c", "ended": True}, {"answer": "x y", "ended": False},
               {"answer": "go go go go go", "ended": True}, {"answer": "p", "ended": None}]
    v = verdict(answers, max_capped=0.25, max_repetition=0.25)
    # 1 of the 3 recorded answers capped; "go go go go go": trigrams 3, distinct 1 -> 2/3
    assert v["capped"] == pytest.approx(1 / 3) and v["repetition"] == pytest.approx((2 / 3) / 4)
    assert v["too_long"] and not v["loops"] and not v["passed"] and v["example"] == "x y"
    v = verdict(answers, max_capped=0.5, max_repetition=0.1)
    assert not v["too_long"] and v["loops"] and v["example"] == "go go go go go"
    assert verdict(answers, max_capped=0.5, max_repetition=0.5)["passed"]


def test_gate_stops_a_teacher_that_never_emits_its_end_token(chat_tok, tmp_path):
    cfg = C.validate(chat_profile(tmp_path, chat_tok, never_ends=True))
    P = Paths(cfg)
    S.prepare_data(cfg)
    S.train_teacher(cfg, "tiny", 0)  # finetuned: loaded and evaluated as it is
    metrics = io.read_json(P.teacher_file("metrics", "tiny", 0))
    assert metrics["benchmarks"]["id"]["capped"] == 1.0
    with pytest.raises(UserError) as exc:
        S.teacher_gate(cfg, "tiny")
    msg = str(exc.value)
    assert msg.startswith("pair tiny, teacher seed 0: 100% of its 4 test answers ran to the 4-token cap without ending")
    assert "`data.prompt_format: chat`" in msg and "`teacher_gate.on_failure: warn`" in msg
    assert "\n" not in msg and msg.endswith(".")  # one sentence
    assert not Path(P.teacher_gate("tiny")).exists()
    cfg["teacher_gate"]["on_failure"] = "warn"
    S.teacher_gate(cfg, "tiny")
    written = io.read_json(P.teacher_gate("tiny"))
    assert written["passed"] is False and written["teacher_seeds"]["0"]["capped"] == 1.0


# --- through Snakemake ------------------------------------------------------------------------

@pytest.mark.slow
def test_the_gate_stops_the_dag_before_any_student(chat_tok, tmp_path):
    from test_e2e import snakemake

    cfg = chat_profile(tmp_path, chat_tok, never_ends=True)
    (tmp_path / "gate.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "--cores", "2", configfile=tmp_path / "gate.yaml", check=False)
    assert out.returncode != 0
    assert "ran to the 4-token cap without ending" in out.stdout + out.stderr
    runs = tmp_path / "results" / "tiny" / "runs" / "tiny"
    assert (runs / "teacher" / "default" / "seed0" / "metrics.json").is_file()  # the teacher's run is kept
    assert not (runs / "kd").exists() and not list((tmp_path / "results" / "tiny").glob("pairs/tiny/teacher_gate.json"))


@pytest.mark.slow
def test_chat_format_runs_the_smoke_dag_with_the_template_in_every_stage(chat_tok, tmp_path):
    """The smoke profile (every path of the DAG: teacher samples, cached logits, difficulty,
    student samples before and during training, rollouts, ablations) with a pretrained chat-template pair and `prompt_format: chat`: every
    stage's log shows the same chat prompt, none an Alpaca one."""
    from test_e2e import snakemake

    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    raw.update(tokenizer={"train": False}, pairs=chat_pair(tmp_path, chat_tok))
    raw["data"].update(prompt_format="chat", system_prompt=SYSTEM)
    # one method per way a prompt reaches a model: cpd (cached teacher logits, difficulty),
    # gkd (samples during training), distillm2 (the SFT init, teacher and student samples before
    # training), minillm (its own rollouts); the others and the ablation row add no new one
    raw["methods"]["include"] = ["cpd", "gkd", "distillm2", "minillm"]
    raw.pop("ablations")
    (tmp_path / "chat.yaml").write_text(yaml.safe_dump(raw))
    snakemake(tmp_path, "--cores", "2", "tables", configfile=tmp_path / "chat.yaml")  # the figures read no prompt
    results = tmp_path / "results" / "smoke"
    logs = {p.relative_to(results / "logs"): p.read_text() for p in (results / "logs").rglob("*.log")}
    prompting = {str(p).split("/")[0] for p, text in logs.items() if "prompt format " in text}
    assert prompting == {"train_teacher", "sft_init", "cache_teacher", "teacher_samples", "student_samples",
                         "score_difficulty", "distill"}
    assert not any("prompt format alpaca" in text for text in logs.values())
    first = {line for text in logs.values() for line in text.splitlines() if line.startswith("prompt format chat: ")}
    assert all(line.startswith(f"prompt format chat: '<|im_start|>system\\n{SYSTEM}<|im_end|>") for line in first)
    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert runs["teacher_nll"].notna().any() and "trivial: frequent words" in (results / "tables" / "main.md").read_text()
    answers = [json.loads(line) for line in open(results / "runs/tiny/cpd/default/seed0/answers/id.jsonl")]
    assert answers and all("<|im_start|>" not in a["answer"] for a in answers)
