"""The stages of the DAG. Each is a function of (config, wildcards) that reads and writes the
paths of `kdbench.paths.Paths`; the Snakemake rules and `python -m kdbench <stage>` call them.

    prepare_data ─► train_tokenizer* ─► train_teacher ─► cache_teacher* ─► score_difficulty
    train_teacher (every teacher seed) ─► teacher_gate ─► teacher_samples (SeqKD, DistiLLM-2), distill
    init_student (per seed) ─► sft_init* (per seed) ─► distill (pair, method, variant, seed; ends with evaluate)
    (* only for methods with `starts_from = "sft"`)
    init_student or sft_init ─► student_samples (per start and seed: train_on = "pairs" only) ─► distill
    prepare_data ─► baselines;  collect, baselines ─► tables;  collect ─► figures

Every stage that puts records to a model takes the profile's prompt format
(`kdbench.data.PromptFormat.of(cfg)`) into `kdbench.data.encode`, `kdbench.generate.sample`
and the validator.
"""
from __future__ import annotations

import functools
import platform
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from kdbench import config as C
from kdbench import io
from kdbench import method as M
from kdbench import models
from kdbench.data import PromptFormat, encode, end_token, load_records
from kdbench.errors import UserError
from kdbench.paths import RUN_FILES, TEACHER, Paths, RunKey


# --- data and tokenizer ----------------------------------------------------------------------

def prepare_data(cfg: dict) -> None:
    """Write data/train.jsonl, data/validation.jsonl and data/<benchmark>.jsonl."""
    P, d = Paths(cfg), cfg["data"]
    if d["source"] == "synthetic":
        import shutil

        from kdbench.synthetic import build_suite

        files = build_suite(P.data_dir, seed=C.derive_seed(cfg["seed"], "data"), sizes=d["synthetic_sizes"],
                            noise=d["synthetic_noise"])
        report = {}
        splits = {"train": "train", "validation": "validation", **d["benchmarks"]}
        if d["synthetic_sizes"].get("broad"):
            splits["broad"] = "broad"
        for name, split in splits.items():
            if name != split:
                shutil.copyfile(files[split], P.data(name))
            report[name] = {"split": split, "n": sum(1 for _ in open(files[split]))}
        io.write_json(P.data_report, report)
        return
    _prepare_hub_data(cfg)


def _prepare_hub_data(cfg: dict) -> None:
    """Hub or local instruction data: the training split, its validation split and every
    benchmark, normalised to the record schema (fields as `data.fields` says). Prompts over
    `data.max_prompt_tokens` (counted with the first pair's teacher tokenizer, as the engine
    encodes them) are dropped from the training and validation splits and kept in the test
    sets, where generation cuts them to their first `max_prompt_tokens` tokens (the protocol's
    rule, docs/protocol.md).

    The reading of `data.train` is printed (see `kdbench.loaders.read_training`). Dropped and
    truncated prompts are
    counted per split in data/report.json and logged to stderr.
    """
    import sys

    from kdbench import loaders

    P, d = Paths(cfg), cfg["data"]
    tok = None if cfg["tokenizer"]["train"] else teacher_tokenizer(cfg, next(iter(cfg["pairs"])))
    report = {}
    say = lambda msg: print(f"prepare_data: {msg}", file=sys.stderr)  # noqa: E731

    def keep(name, rows, source, split, test=False):
        kept, n_long = (loaders.filter_by_prompt_length(rows, tok, d["max_prompt_tokens"], PromptFormat.of(cfg))
                        if tok else (rows, 0))
        if test:
            kept = rows
        report[name] = {"source": source, "split": split, "n": len(kept),
                        "dropped_long_prompts": 0 if test else n_long,
                        "truncated_long_prompts": n_long if test else 0}
        say(f"{name} ({source}, {split}): kept {len(kept)}, {'truncated' if test else 'dropped'} {n_long} "
            f"prompt(s) longer than {d['max_prompt_tokens']} tokens"
            + ("" if tok else " (not counted: the tokenizer is trained later)"))
        return kept

    plan, train, validation = loaders.read_training(d, cfg["seed"])
    say(plan)
    train = keep("train", train[:d["train_limit"]] if d["train_limit"] else train, d["train"], "train")
    validation = keep("validation", validation, d["validation"] or d["train"], "validation")
    io.write_jsonl(P.data("train"), train)
    io.write_jsonl(P.data("validation"), validation)
    for name, source in d["benchmarks"].items():
        rows = loaders.load_instruction_split(source, None, limit=d["benchmark_limit"], fields=d["fields"])
        io.write_jsonl(P.data(name), keep(name, rows, source, "test", test=True))
    report["train"]["reading"] = plan
    io.write_json(P.data_report, report)


def train_tokenizer(cfg: dict) -> None:
    from kdbench.tokenizer import train_bpe

    P = Paths(cfg)
    train_bpe(load_records(P.data("train")), cfg["tokenizer"]["vocab_size"], P.tokenizer)


def teacher_tokenizer(cfg: dict, pair: str):
    """The tokenizer every model of the pair uses: the trained BPE (embedded default) or the
    teacher's own (hub id, local folder, or the tokenizer inside the teacher's GGUF file).

    Read-only, so any stage may call it before or while train_teacher runs."""
    if cfg["tokenizer"]["train"]:
        return models.load_tokenizer(Paths(cfg).tokenizer)
    t = cfg["pairs"][pair]["teacher"]
    if t["init"] != "pretrained":
        raise UserError(f"pair {pair}: a scratch teacher needs `tokenizer.train: true`.")
    return models.load_tokenizer(t["path"], t["gguf_file"])


def _config_vocab_size(spec: dict) -> int:
    """`config.vocab_size` (output logits) of a pretrained model, read from its config only."""
    from transformers import AutoConfig

    kwargs = {"gguf_file": spec["gguf_file"]} if spec.get("gguf_file") else {}
    try:
        conf = AutoConfig.from_pretrained(spec["path"], **kwargs)
    except OSError as exc:
        raise UserError(f"cannot read the config of {spec['path']!r} ({exc}); check the path, or download "
                        "it where there is network and set the config's path to the local folder.") from exc
    return int(getattr(conf, "vocab_size", None) or conf.get_text_config().vocab_size)


def _model_name(cfg: dict, pair: str, role: str) -> str:
    spec = cfg["pairs"][pair][role]
    where = spec["path"] if spec["init"] == "pretrained" else spec["init"]
    return f"{pair}.{role} ({where}{'/' + spec['gguf_file'] if spec.get('gguf_file') else ''})"


VOCAB_FILE = "kdbench.json"  # in each student_init folder: {"shared_vocab_size": V, ...}


def _setup(cfg) -> torch.device:
    models.setup_threads(cfg["threads"])
    return models.device()


# --- models ----------------------------------------------------------------------------------

def _teacher_seed(cfg: dict, pair: str, tseed: int, *purpose) -> int:
    """Seed of teacher seed `tseed` for `purpose`; teacher seed 0 keeps the derivation of the
    single teacher of earlier versions, so a profile with one teacher seed is unchanged."""
    return C.derive_seed(cfg["seed"], pair, "teacher", *([tseed] if tseed else []), *purpose)


def train_teacher(cfg: dict, pair: str, tseed: int) -> None:
    """SFT of teacher seed `tseed` on the training split (skipped for an already fine-tuned
    teacher). A teacher seed changes the initialisation of a scratch teacher and the data order.

    The saved folder is the teacher every later stage loads; a GGUF teacher is dequantized
    here, once per pair and seed, and saved as plain safetensors."""
    P, dev = Paths(cfg), _setup(cfg)
    tok = teacher_tokenizer(cfg, pair)
    spec = dict(cfg["pairs"][pair]["teacher"])
    model = models.build(spec, tok, _teacher_seed(cfg, pair, tseed), f"{pair}.teacher").to(dev)
    run = RunKey(pair, TEACHER, "default", tseed)
    budget = cfg["training"]["teacher"]
    res, ckpt, pre_ckpt = None, None, None
    if not spec["finetuned"] and budget["epochs"] > 0:
        from kdbench.train import train

        pre_ckpt = _pretrain(cfg, model, tok, cfg["training"]["teacher_pretrain"], _broad_corpus(cfg, tok),
                             _teacher_seed(cfg, pair, tseed, "pretrain"), f"{pair} teacher seed{tseed} pre-training",
                             (pair, "teacher_pretrain", f"seed{tseed}"))
        examples = encode(tok, load_records(P.data(cfg["training"]["teacher_data"])), cfg["data"]["max_length"],
                          fmt=PromptFormat.of(cfg))
        seed = _teacher_seed(cfg, pair, tseed, "train")
        ckpt = _checkpoint(cfg, (pair, TEACHER, f"seed{tseed}"), (budget, seed, cfg["evaluation"]), model, examples)
        res = train(model, examples, budget, seed=seed, pad_id=tok.pad_token_id,
                    validate=_validator(cfg, tok, pair, "teacher"), desc=f"{pair} teacher seed{tseed} SFT",
                    checkpoint=ckpt)
    with io.staged(P.run_dir(**run._asdict()), marker=RUN_FILES["train"]) as tmp:  # fine-tuned: empty tables
        _write_run_tables(tmp, res)
        models.save(model, tok, tmp / RUN_FILES["model"])
        io.write_json(tmp / RUN_FILES["train"], {**(res.stats if res else {}), **provenance(cfg),
                                                 "params": models.n_params(model)})
    for c in (pre_ckpt, ckpt):
        if c is not None:
            c.remove()
    evaluate(cfg, pair, TEACHER, "default", tseed, model, tok)


def init_student(cfg: dict, pair: str, seed: int) -> None:
    """The student every method starts from for this seed (built, loaded or cut from the teacher;
    a scratch student is pre-trained as a language model when `training.pretrain.epochs` > 0).

    A pretrained student's OWN tokenizer is checked against the teacher's (`checkpoints.check_vocab`)
    before its weights are loaded: a mismatch stops here, naming both models, with nothing
    written. Only then is the student saved, with the teacher's tokenizer, plus `kdbench.json`
    holding the vocabulary size distillation compares logits over (`shared_vocab_size`).
    """
    from kdbench import checkpoints

    P, dev = Paths(cfg), _setup(cfg)
    tok = teacher_tokenizer(cfg, pair)
    spec = dict(cfg["pairs"][pair]["student"])
    s = C.derive_seed(cfg["seed"], pair, seed, "student")
    names = _model_name(cfg, pair, "teacher"), _model_name(cfg, pair, "student")
    if spec["init"] == "layers_from_teacher":  # the saved teacher (converted once by train_teacher)
        teacher = models.load_model(P.teacher_model(pair, P.teacher_seed(seed)))
        t_vocab = teacher.config.vocab_size
        model = checkpoints.student_from_teacher_layers(teacher, spec["layers"])
        del teacher
        shared = checkpoints.check_vocab(tok, tok, t_vocab, model.config.vocab_size, *names)
    elif spec["init"] == "pretrained":
        own = models.load_tokenizer(spec["path"], spec["gguf_file"])
        shared = checkpoints.check_vocab(tok, own, _teacher_vocab_size(cfg, pair, tok), _config_vocab_size(spec), *names)
        model = models.build(spec, tok, s, f"{pair}.student")
    else:
        model = models.build(spec, tok, s, f"{pair}.student")
        shared = checkpoints.check_vocab(tok, tok, _teacher_vocab_size(cfg, pair, tok), model.config.vocab_size, *names)
    model.to(dev)
    ckpt = None
    if spec["init"] == "scratch":
        ckpt = _pretrain(cfg, model, tok, cfg["training"]["pretrain"], _train_examples(cfg, tok), s,
                         f"{pair} student pre-training seed{seed}", (pair, "student_init", f"seed{seed}"))
    with io.atomic_path(P.student_init(pair, seed)) as tmp:
        models.save(model, tok, tmp)
        io.write_json(tmp / VOCAB_FILE, {"shared_vocab_size": shared, "teacher": names[0], "student": names[1]})
    if ckpt is not None:
        ckpt.remove()


def sft_init(cfg: dict, pair: str, seed: int) -> None:
    """The *init* student of methods with `starts_from = "sft"`: the pre-trained student of this
    seed fine-tuned on the training split (references only, cross-entropy) with the budget
    `training.init` (`config.init_budget`), as DistiLLM's and MiniLLM's scripts do before their
    on-policy methods (docs/protocol.md, "Starting points"). Saved with the student's
    `kdbench.json`, so distillation reads the shared vocabulary from whichever start it loads."""
    from kdbench.train import train

    P, dev = Paths(cfg), _setup(cfg)
    src = Path(P.student_init(pair, seed))
    model = models.load_model(src).to(dev)
    tok = models.load_tokenizer(src)
    budget, train_seed = C.init_budget(cfg), C.derive_seed(cfg["seed"], pair, seed, "sft_init")
    examples = _train_examples(cfg, tok)
    validate = _validator(cfg, tok, pair, seed) if budget["selection"] == "best" else None
    ckpt = _checkpoint(cfg, (pair, "sft_init", f"seed{seed}"), (budget, train_seed, cfg["evaluation"]), model, examples)
    res = train(model, examples, budget, seed=train_seed, pad_id=tok.pad_token_id, validate=validate,
                desc=f"{pair} student SFT init seed{seed}", checkpoint=ckpt)
    with io.atomic_path(P.student_sft(pair, seed)) as tmp:
        models.save(model, tok, tmp)
        io.write_json(tmp / VOCAB_FILE, {**io.read_json(src / VOCAB_FILE), "sft_init": res.stats})
    if ckpt is not None:
        ckpt.remove()


def _teacher_vocab_size(cfg: dict, pair: str, tok) -> int:
    """The teacher's output size without loading its weights (a scratch teacher is built with
    one logit per token of the trained tokenizer, or its `config.vocab_size`)."""
    t = cfg["pairs"][pair]["teacher"]
    return _config_vocab_size(t) if t["init"] == "pretrained" else models.scratch_vocab_size(t, len(tok), f"{pair}.teacher")


def _pretrain(cfg: dict, model, tok, budget: dict, examples, seed: int, desc: str, parts: tuple):
    """Language-model pre-training of a scratch model: every token carries the loss.

    Its checkpoint (named by `parts`) is returned for the caller to remove once the stage's
    outputs are written: a job killed after pre-training resumes past it."""
    if budget["epochs"] == 0:
        return None
    from kdbench.train import train

    budget = {**budget, "loss_on": "all"}
    ckpt = _checkpoint(cfg, parts, (budget, seed), model, examples)
    train(model, examples, budget, seed=seed, pad_id=tok.pad_token_id, desc=desc, checkpoint=ckpt)
    return ckpt


def _broad_corpus(cfg, tok):
    """The teacher's pre-training text: the broad split as plain text where the profile has one
    (the teacher's broader pre-training), else the training split in the prompt format."""
    from kdbench.data import encode_corpus

    if cfg["data"]["source"] == "synthetic" and cfg["data"]["synthetic_sizes"].get("broad"):
        return encode_corpus(tok, load_records(Paths(cfg).data("broad")), cfg["data"]["max_length"])
    return _train_examples(cfg, tok)


def _train_examples(cfg, tok):
    """The tokenised training split, references as responses."""
    return encode(tok, load_records(Paths(cfg).data("train")), cfg["data"]["max_length"], fmt=PromptFormat.of(cfg))


def _validator(cfg: dict, tok, pair: str, seed):
    """The per-epoch validation pass (loss and sampled Rouge-L on the validation split) that
    model selection reads; the sampling seed depends on the pair and seed only, so every method
    of a seed is judged on the same draws."""
    from kdbench.validation import validator

    return validator(tok, load_records(Paths(cfg).data("validation")), max_length=cfg["data"]["max_length"],
                     evaluation=cfg["evaluation"], seed=C.derive_seed(cfg["seed"], pair, seed, "validation"),
                     desc=f"{pair} validate", fmt=PromptFormat.of(cfg))


def _shared_vocab(start: str, pair: str, student) -> int:
    """The vocabulary size init_student checked for this pair (`kdbench.json` of the `start`
    folder the student was loaded from: student_init, or student_sft, which copies it)."""
    path = Path(start) / VOCAB_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing (the student was initialised by an older kdbench); rerun "
                        f"init_student for pair {pair} (delete {path.parent} and run snakemake again).")
    shared = int(io.read_json(path)["shared_vocab_size"])
    if shared > student.config.vocab_size:
        raise UserError(f"{path} says the pair shares {shared} logits but the student has "
                        f"{student.config.vocab_size}; rerun init_student for pair {pair}.")
    return shared


def cache_teacher(cfg: dict, pair: str, tseed: int) -> None:
    from kdbench.teacher import build_cache

    P, dev = Paths(cfg), _setup(cfg)
    teacher = models.load_model(P.teacher_model(pair, tseed)).to(dev)
    tok = models.load_tokenizer(P.teacher_model(pair, tseed))
    build_cache(teacher, _train_examples(cfg, tok), tok.pad_token_id, P.teacher_cache(pair, tseed),
                cfg["training"]["student"]["precision"], dev)


def teacher_samples(cfg: dict, pair: str, tseed: int) -> None:
    """Teacher seed `tseed`'s own sampled answers to the training prompts (SeqKD's targets,
    DistiLLM-2's teacher responses)."""
    P = Paths(cfg)
    _sample_answers(cfg, P.teacher_model(pair, tseed), _teacher_seed(cfg, pair, tseed, "teacher_samples"),
                    P.teacher_samples(pair, tseed), f"{pair} teacher samples")


def student_samples(cfg: dict, pair: str, start: str, seed: int) -> None:
    """The answers of seed `seed`'s student at `start` (a `Method.starts_from` value: the
    pre-trained student, or it fine-tuned by sft_init) to the training prompts, sampled once
    before training with the settings of teacher_samples: the student responses of
    train_on = "pairs" methods (DistiLLM-2), built only for them."""
    if start not in M.STARTS:
        raise UserError(f"student_samples: unknown start {start!r}; use one of {', '.join(M.STARTS)}.")
    P = Paths(cfg)
    _sample_answers(cfg, P.student_start(start, pair, seed),
                    C.derive_seed(cfg["seed"], pair, seed, start, "student_samples"),
                    P.student_samples(pair, start, seed), f"{pair} student samples seed{seed}")


def _sample_answers(cfg: dict, folder: str, seed: int, out: str, desc: str) -> None:
    """Sample the model saved in `folder` once on every training prompt, with the evaluation
    settings (temperature, top_p, top_k, max_new_tokens), into `out` ({"id", "answer"} per
    record) and its cost beside it (`Paths.samples_stats`: gen_wall_s, gen_tokens), which the
    runs that train on the samples record (train.json `pregen_wall_s`, the runtime table)."""
    from kdbench.generate import sample

    dev, ev = _setup(cfg), cfg["evaluation"]
    model = models.load_model(folder).to(dev)
    tok = models.load_tokenizer(folder)
    records = load_records(Paths(cfg).data("train"))
    answers, stats = sample(model, tok, records, seed=seed, temperature=ev["temperature"], top_p=ev["top_p"],
                            top_k=ev["top_k"], max_length=cfg["data"]["max_length"],
                            max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"],
                            precision=ev["precision"], desc=desc, fmt=PromptFormat.of(cfg))
    io.write_json(Paths.samples_stats(out), {"gen_wall_s": stats["gen_wall_s"], "gen_tokens": stats["gen_tokens"],
                                            "n": len(records), "device": models.device_name(dev)})
    io.write_jsonl(out, [{"id": r["id"], "answer": a} for r, a in zip(records, answers)])


def _samples(path: str, records: list[dict]) -> list[str]:
    """The sampled answers of a samples file, in the order of `records`."""
    answers = {r["id"]: r["answer"] for r in io.read_jsonl(path)}
    return [answers[r["id"]] for r in records]


def teacher_gate(cfg: dict, pair: str) -> None:
    """The teacher gate of `pair` (kdbench/gate.py), on every teacher seed's test answers:
    writes `Paths.teacher_gate` when each passes, or with `teacher_gate.on_failure: warn`
    (a warning per failed seed on stderr); otherwise stops with one sentence (UserError)."""
    import sys

    from kdbench import gate

    P, g = Paths(cfg), cfg["teacher_gate"]
    limits = g["max_capped"], g["max_repetition"]
    seeds, failures = {}, []
    for t in range(cfg["teacher_seeds"]):
        rows = [a for bench in cfg["data"]["benchmarks"]
                for a in io.read_jsonl(P.answers(bench, pair=pair, method=TEACHER, variant="default", seed=t))]
        seeds[t] = v = gate.verdict(rows, *limits)
        if not v["passed"]:
            failures.append(gate.failure_sentence(pair, t, v, *limits, cfg["evaluation"]["max_new_tokens"],
                                                  stops=g["on_failure"] == "stop"))
    Path(P.teacher_gate(pair)).unlink(missing_ok=True)  # a verdict of earlier teachers no longer holds
    if failures and g["on_failure"] == "stop":
        raise UserError(failures[0])
    for text in failures:
        print(f"teacher_gate: warning: {text}", file=sys.stderr)
    io.write_json(P.teacher_gate(pair), {"pair": pair, "passed": not failures, **g, "teacher_seeds": seeds})


def score_difficulty(cfg: dict, pair: str) -> None:
    """Per training example: the initial student's NLL on the reference, the Rouge-L of its
    near-greedy answer, their reciprocal-rank fusion (POCL), and the difficulty used.
    One profile per pair, shared by every seed: student seed 0 (and teacher seed 0 for a
    scorer that needs the teacher)."""
    from kdbench.difficulty import score

    P, dev = Paths(cfg), _setup(cfg)
    student = models.load_model(P.student_init(pair, 0)).to(dev)
    tok = models.load_tokenizer(P.student_init(pair, 0))
    teacher = None
    if cfg["difficulty"]["scorer"] == "teacher_student_kl":
        teacher = models.load_model(P.teacher_model(pair, 0)).to(dev)
    records = load_records(P.data("train"))
    table = score(student, tok, records, cfg, teacher=teacher, seed=C.derive_seed(cfg["seed"], pair, "difficulty"))
    io.write_csv(P.difficulty(pair), table)


def load_difficulty(cfg: dict, pair: str) -> np.ndarray:
    path = Paths(cfg).difficulty(pair)
    if not Path(path).is_file():
        raise UserError(f"difficulty profile {path} is missing; run the score_difficulty stage first.")
    return pd.read_csv(path).sort_values("example_index")["difficulty"].to_numpy(dtype=float)


# --- runs ------------------------------------------------------------------------------------

def distill(cfg: dict, pair: str, method: str, variant: str, seed: int) -> None:
    """Train one student run with one method, variant and seed (distilling from teacher seed
    seed mod teacher_seeds), then sample and score its answers on the test sets."""
    P = Paths(cfg)
    t = _train_student(cfg, pair, method, variant, seed, C.student_budget(cfg, method),
                       (pair, method, variant, f"seed{seed}"))
    with io.staged(P.run_dir(pair, method, variant, seed), marker=RUN_FILES["train"]) as tmp:
        _write_run_tables(tmp, t.result)
        models.save(t.student, t.tok, tmp / RUN_FILES["model"])
        io.write_json(tmp / RUN_FILES["train"], {**t.result.stats, **t.info, **provenance(cfg)})
    if t.checkpoint is not None:
        t.checkpoint.remove()
    evaluate(cfg, pair, method, variant, seed, t.student, t.tok, judge=t.teacher_model)


def tune(cfg: dict, pair: str, method: str, variant: str, lr: float) -> None:
    """One point of the learning-rate grid (`snakemake tune`, `tuning.lr`): the run of seed
    `tuning.seed` trained at `lr`, judged by its validation Rouge-L only. Nothing is sampled on
    the test sets, so no test score can take part in the choice (docs/protocol.md, "Tuning")."""
    P, seed = Paths(cfg), cfg["tuning"]["seed"]
    budget = {**C.student_budget(cfg, method), "lr": float(lr)}
    t = _train_student(cfg, pair, method, variant, seed, budget, (pair, "tuning", method, variant, f"lr{lr}"))
    curve = t.result.epochs[["epoch", "val_loss", "val_rouge_l"]].to_dict("records")
    io.write_json(P.tuning_result(pair, method, variant, lr), {**t.result.stats, **t.info, "lr": float(lr),
                                                               "seed": seed, "epochs": curve, **provenance(cfg)})
    if t.checkpoint is not None:
        t.checkpoint.remove()


class Trained(NamedTuple):
    """A trained student and what its caller writes or evaluates with it."""

    student: object
    tok: object
    result: object        # kdbench.train.Result
    info: dict            # what the run's train.json records about it
    checkpoint: object    # the run's checkpoint (or None), removed once the outputs are written
    teacher_model: object  # the teacher model if it was loaded online (the fluency judge), else None


def _train_student(cfg: dict, pair: str, method: str, variant: str, seed: int, budget: dict,
                   ckpt_parts: tuple) -> Trained:
    """Train the student of one run with `budget`."""
    from kdbench.fused import use_fused
    from kdbench.teacher import CachedTeacher, OnlineTeacher
    from kdbench.train import train

    P, dev = Paths(cfg), _setup(cfg)
    run = C.find_run(cfg, pair, method, variant, seed)
    tseed = P.teacher_seed(seed)
    cls = M.get(method, cfg["methods_dir"])
    meth = M.instantiate(cls, run.params, method)
    start = P.student_start(cls.starts_from, pair, seed)  # pre-trained, or fine-tuned first (sft_init)
    student = models.load_model(start).to(dev)
    tok = models.load_tokenizer(start)
    records = load_records(P.data("train"))
    # the samples generated before training that the run reads (their cost: pregen_wall_s)
    samples = {"teacher_samples": [P.teacher_samples(pair, tseed)],
               "pairs": [P.teacher_samples(pair, tseed), P.student_samples(pair, cls.starts_from, seed)],
               }.get(cls.train_on, [])
    responses = _samples(samples[0], records) if samples else None
    examples = encode(tok, records, cfg["data"]["max_length"], responses=responses, fmt=PromptFormat.of(cfg))
    teacher, vocab, online, t_model = None, None, None, None
    if cls.needs_teacher:
        if cls.train_on == "mixed" or not C.uses_teacher_cache(cfg, cls):
            t_model = models.load_model(P.teacher_model(pair, tseed)).to(dev)
            online = OnlineTeacher(t_model, cfg["training"]["student"]["precision"], dev)
            vocab = _shared_vocab(start, pair, student)
        teacher = CachedTeacher(P.teacher_cache(pair, tseed), examples) if C.uses_teacher_cache(cfg, cls) else online
    difficulty = load_difficulty(cfg, pair) if meth.uses_difficulty else None
    train_seed = C.derive_seed(cfg["seed"], pair, seed, "train")
    kd_ratio = cfg["distill"]["kd_ratio"] if cls.needs_teacher else 0.0
    fused = use_fused(cfg["distill"]["fused"], student, vocab or student.config.vocab_size)
    on_policy = _on_policy(cfg, meth, examples, tok, student, train_seed) if cls.train_on == "mixed" else None
    if cls.train_on == "pairs":  # every batch: the teacher's responses, then the student's own
        from kdbench.onpolicy import Pairs

        own = encode(tok, records, cfg["data"]["max_length"], responses=_samples(samples[1], records),
                     fmt=PromptFormat.of(cfg))
        on_policy = Pairs(examples, own, pad_id=tok.pad_token_id)
    rollouts = _rollouts(cfg, meth, tok, student, t_model, vocab, train_seed) if cls.train_on == "rollouts" else None
    if on_policy is not None and teacher is not online:
        from kdbench.onpolicy import Teacher

        teacher = Teacher(teacher, online)
    # a retrained teacher or a rescored difficulty profile makes an older checkpoint another run's
    ckpt = _checkpoint(cfg, ckpt_parts, (budget, train_seed, method, run.params, kd_ratio, vocab, tseed, cfg["evaluation"]),
                       student, examples, P.teacher_model(pair, tseed) if cls.needs_teacher else None, difficulty,
                       *samples)
    res = train(student, examples, budget, seed=train_seed, pad_id=tok.pad_token_id, method=meth, teacher=teacher,
                kd_ratio=kd_ratio, difficulty=difficulty, vocab_size=vocab, on_policy=on_policy, rollouts=rollouts,
                validate=_validator(cfg, tok, pair, seed),
                desc=f"{pair}/{method}/{variant}/seed{seed}", checkpoint=ckpt, fused=fused)
    info = {"method": method, "variant": variant, "fused": fused, "lr": budget["lr"],
            "method_params": {**M.defaults(cls), **run.params},
            "teacher_seed": tseed if cls.needs_teacher else None, "starts_from": cls.starts_from,
            "params": models.n_params(student),
            "pregen_wall_s": sum(io.read_json(Paths.samples_stats(f))["gen_wall_s"] for f in samples)}
    return Trained(student, tok, res, info, ckpt, t_model)


def _on_policy(cfg: dict, meth, examples, tok, student, seed: int):
    """The student sampler of a train_on = "mixed" method (kdbench/onpolicy.py)."""
    from kdbench.onpolicy import OnPolicy

    validation = None
    if meth.uses_validation_loss:
        validation = encode(tok, load_records(Paths(cfg).data("validation")), cfg["data"]["max_length"],
                            fmt=PromptFormat.of(cfg))
    return OnPolicy(meth, examples, pad_id=tok.pad_token_id, eos_id=end_token(tok, PromptFormat.of(cfg)),
                    max_length=cfg["data"]["max_length"], max_new_tokens=cfg["evaluation"]["max_new_tokens"],
                    precision=cfg["training"]["student"]["precision"], seed=seed,
                    validation=validation, model=student)


def _rollouts(cfg: dict, meth, tok, student, teacher, vocab: int, seed: int):
    """What a train_on = "rollouts" method samples and scores with (kdbench/rollouts.py). Its
    pre-training text is the training split as the student's language-model pre-training reads
    it (every token, `_pretrain`): the embedded default's own student pre-training corpus, and in
    the paper profiles a stand-in for the reference's OpenWebText (docs/protocol.md, "MiniLLM")."""
    from kdbench.rollouts import Rollouts

    return Rollouts(student, teacher, corpus=_train_examples(cfg, tok), pad_id=tok.pad_token_id,
                    eos_id=end_token(tok, PromptFormat.of(cfg)), max_length=cfg["data"]["max_length"],
                    max_new_tokens=meth.max_new_tokens or cfg["evaluation"]["max_new_tokens"],
                    precision=cfg["training"]["student"]["precision"], seed=seed, vocab_size=vocab)


def _checkpoint(cfg: dict, parts: tuple, settings: tuple, model, examples, *inputs):
    """The checkpoint of one training job, keyed by what its result depends on: the given
    settings (budget, seeds, method, and the evaluation settings per-epoch validation samples
    with), the initial weights, the tokenised data and further `inputs` (files, folders,
    arrays: `kdbench.resume.digest`) (None when checkpoints are off)."""
    from kdbench.resume import Checkpoint, digest, signature

    ck = cfg["checkpoint"]
    if not ck["enabled"]:
        return None
    key = C.fingerprint([settings, signature(model, examples), digest(*inputs)])
    return Checkpoint(Paths(cfg).checkpoint(*parts), ck["every_minutes"], key)


def _write_run_tables(folder: Path, res) -> None:
    """The trace, epochs and bin_loss tables of a training result into `folder` (a run's
    staging folder), empty for None."""
    for name in ("trace", "epochs", "bin_loss"):
        io.write_csv(Path(folder) / RUN_FILES[name], getattr(res, name) if res is not None else pd.DataFrame())


def evaluate(cfg: dict, pair: str, method: str, variant: str, seed: int, model=None, tok=None,
             judge=None) -> None:
    """Sample answers on every test set with every evaluation seed and score them: the run's
    answers/ (`Paths.answers`, `Paths.answer_stats`), scores.csv and metrics.json.

    The training stages (train_teacher, distill) call it on the model they have just trained
    and saved, so a run is one process; `python -m kdbench evaluate` reruns it by hand on a
    saved run's model (the answers are the same: the sampler is seeded per evaluation seed).

    scores.csv holds Rouge-L, the shape of every answer (`kdbench.metrics.answer_shape`) and
    its fluency, the judging teacher's mean NLL per token (`kdbench.fluency`; `judge`: that
    teacher if the caller holds it, else loaded: the run's own teacher seed, or the teacher
    run itself); metrics.json, per benchmark: Rouge-L (mean over eval seeds), length_ratio
    (mean answer words / mean reference words), capped (share of answers that hit the length
    cap without ending), repetition (mean repeated-trigram share) and teacher_nll (mean over
    non-empty answers), with the run's train.json and provenance. Each answer row records the
    stop string that cut it (`stop`, None for none).
    """
    from kdbench.fluency import answer_nll
    from kdbench.generate import sample
    from kdbench.metrics import answer_shape, rouge_l_per_example

    P, dev, ev = Paths(cfg), _setup(cfg), cfg["evaluation"]
    fmt = PromptFormat.of(cfg)
    key = dict(pair=pair, method=method, variant=variant, seed=seed)
    if model is None:
        model = models.load_model(P.run_file("model", **key)).to(dev)
        tok = models.load_tokenizer(P.run_file("model", **key))
    model.eval()
    if judge is None:
        judge = model if method == TEACHER else _judge(P.teacher_model(pair, P.teacher_seed(seed)), dev)
    frames, summary, outputs = [], {}, {}
    for bench in cfg["data"]["benchmarks"]:
        records = load_records(P.data(bench))
        rows, stats = [], {"gen_tokens": 0, "gen_wall_s": 0.0}
        for es in ev["seeds"]:
            texts, st = sample(model, tok, records, seed=es, temperature=ev["temperature"], top_p=ev["top_p"],
                               top_k=ev["top_k"], max_length=cfg["data"]["max_length"],
                               max_prompt_tokens=cfg["data"]["max_prompt_tokens"],
                               max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"],
                               precision=ev["precision"], desc=f"{method}/{variant}/seed{seed} {bench} s{es}",
                               fmt=fmt)
            rows += [{"id": r["id"], "eval_seed": es, "answer": a, "ended": e, "stop": s}
                     for r, a, e, s in zip(records, texts, st["ended"], st["stop"])]
            stats = {k: stats[k] + st[k] for k in stats}
        outputs[bench] = rows, stats
        by_id = {r["id"]: r for r in records}
        answers = pd.DataFrame(rows)
        refs = [by_id[i]["output"] for i in answers["id"]]
        texts = answers["answer"].fillna("").tolist()
        answers["rouge_l"] = rouge_l_per_example(texts, refs)
        answers = pd.concat([answers, answer_shape(texts, refs, answers["ended"].tolist())], axis=1)
        t0 = time.perf_counter()
        answers["teacher_nll"] = answer_nll(judge, tok, [by_id[i] for i in answers["id"]], texts,
                                            max_length=cfg["data"]["max_length"],
                                            max_prompt_tokens=cfg["data"]["max_prompt_tokens"],
                                            precision=ev["precision"], fmt=fmt)
        stats["nll_wall_s"] = time.perf_counter() - t0
        answers["benchmark"] = bench
        answers["task"] = [by_id[i].get("task") for i in answers["id"]]
        answers["difficulty"] = [by_id[i].get("difficulty") for i in answers["id"]]
        frames.append(answers.drop(columns=["answer", "ended", "stop"]).rename(columns={"id": "example_id"}))
        per_seed = answers.groupby("eval_seed")["rouge_l"].mean()
        summary[bench] = {"rouge_l": float(per_seed.mean()), "rouge_l_eval_std": float(per_seed.std(ddof=0)),
                          "n_eval_seeds": int(len(per_seed)), "n_examples": len(records),
                          "gen_tokens_per_s": stats["gen_tokens"] / max(stats["gen_wall_s"], 1e-9),
                          "answer_words": float(answers["answer_words"].mean()),
                          "length_ratio": float(answers["answer_words"].mean() / max(answers["reference_words"].mean(), 1e-9)),
                          "capped": float(answers["capped"].mean()),
                          "repetition": float(answers["repetition"].mean()),
                          "teacher_nll": float(answers["teacher_nll"].mean())}
    train_info = io.read_json(P.run_file("train", **key))
    with io.staged(P.run_dir(**key), marker=RUN_FILES["metrics"]) as tmp:  # answers, scores and metrics, or none
        answers_dir = tmp / Path(P.answers(next(iter(outputs)), **key)).parent.name
        answers_dir.mkdir()
        for bench, (rows, stats) in outputs.items():
            io.write_jsonl(answers_dir / Path(P.answers(bench, **key)).name, rows)
            io.write_json(answers_dir / Path(P.answer_stats(bench, **key)).name, stats)
        io.write_csv(tmp / RUN_FILES["scores"], pd.concat(frames, ignore_index=True))
        io.write_json(tmp / RUN_FILES["metrics"], {**key, "benchmarks": summary, "train": train_info})


def _judge(path: str, dev):
    """The teacher that judges a run's fluency (kdbench/fluency.py), loaded once per process
    for a job's runs and again where its folder was rewritten."""
    if not Path(path).is_dir():
        raise UserError(f"the teacher {path} is missing, and it scores the fluency of every run's answers; "
                        "run train_teacher first (snakemake does).")
    return _load_judge(path, Path(path).stat().st_mtime_ns, dev)


@functools.lru_cache(maxsize=1)
def _load_judge(path: str, stamp: int, dev):
    return models.load_model(path).to(dev).eval()


def provenance(cfg: dict) -> dict:
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    dev = models.device()
    return {"config": cfg, "git_commit": commit, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "device": models.device_name(dev),
            "threads": torch.get_num_threads()}


# --- the profile's tables ----------------------------------------------------------------------

def all_runs(cfg: dict) -> list[RunKey]:
    """Every teacher seed's run and every student run of the profile."""
    return Paths(cfg).teacher_runs() + [RunKey(r.pair, r.method, r.variant, r.seed) for r in C.runs(cfg)]


def collect(cfg: dict) -> None:
    """Gather every run into the long tables of results/<profile>/tables/ (`paths.LONG_TABLES`)."""
    P = Paths(cfg)
    runs, examples, traces, epochs, bins = [], [], [], [], []
    for run in all_runs(cfg):
        keys = run._asdict()
        m = io.read_json(P.run_file("metrics", **keys))
        t = m["train"]
        for bench, b in m["benchmarks"].items():
            runs.append({**keys, "benchmark": bench, **b, "train_wall_s": t.get("train_wall_s", np.nan),
                         "train_tokens": t.get("train_tokens", np.nan), "train_examples": t.get("train_examples", np.nan),
                         "train_tokens_per_s": t.get("train_tokens_per_s", np.nan),
                         "train_gen_s": t.get("train_gen_s", 0.0), "pregen_wall_s": t.get("pregen_wall_s", 0.0),
                         "student_params": t.get("params"),
                         "selected_epoch": t.get("selected_epoch"), "n_epochs": t.get("n_epochs"), "lr": t.get("lr"),
                         "val_loss_change_last20": t.get("val_loss_change_last20")})
        examples.append(io.read_csv(P.run_file("scores", **keys)).assign(**keys))
        for name, bucket in (("trace", traces), ("epochs", epochs), ("bin_loss", bins)):
            path = Path(P.run_file(name, **keys))
            if path.is_file() and path.stat().st_size > 1:
                bucket.append(io.read_csv(path).assign(**keys))
    key_cols = list(RunKey._fields)
    front = lambda df: df[key_cols + [c for c in df.columns if c not in key_cols]]  # noqa: E731
    io.write_csv(P.long_table("runs"), pd.DataFrame(runs))
    io.write_csv(P.long_table("examples"), front(pd.concat(examples, ignore_index=True)))
    for name, bucket in (("trace", traces), ("epochs", epochs), ("bin_loss", bins)):
        io.write_csv(P.long_table(name), front(pd.concat(bucket, ignore_index=True)) if bucket
                     else pd.DataFrame(columns=key_cols))
    abl = [{"ablation": row, "method": method, "variant": slug}
           for row, (method, slug, _) in C.ablation_variants(cfg).items()]
    io.write_csv(P.long_table("ablations"), pd.DataFrame(abl, columns=["ablation", "method", "variant"]))


def tuning_table(cfg: dict) -> None:
    from kdbench import tuning

    tuning.write(cfg)


def baselines(cfg: dict) -> None:
    """The trivial baselines' scores on every test set (kdbench/baselines.py), `Paths.baselines`."""
    from kdbench.baselines import score

    P = Paths(cfg)
    io.write_csv(P.baselines, score(load_records(P.data("train")),
                                    {b: load_records(P.data(b)) for b in cfg["data"]["benchmarks"]}))


def tables(cfg: dict) -> None:
    from kdbench import tables as T

    T.build_all(Paths(cfg).tables)


def figures(cfg: dict) -> None:
    from kdbench import plots

    P = Paths(cfg)
    plots.build_all(P.tables, P.figures, method=cfg["ablations"]["method"])
