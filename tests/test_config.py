"""Config validation: defaults filled, bad input stopped with one sentence naming the key."""
import copy

import pytest
import yaml

from kdbench import config as C
from kdbench.errors import UserError


@pytest.fixture(scope="module")
def smoke():
    return yaml.safe_load(open("config/smoke.yaml"))


@pytest.mark.parametrize("name", ["default", "smoke"])
def test_profiles_validate(name):
    cfg = C.load(f"config/{name}.yaml")
    assert cfg["profile"] == name
    assert C.runs(cfg), "a profile runs at least one student"


def test_defaults_are_filled(smoke):
    cfg = C.validate(smoke)
    assert cfg["training"]["student"]["grad_clip"] == 1.0        # from $defs/budget
    assert cfg["pairs"]["tiny"]["student"]["init"] == "scratch"  # from $defs/model
    assert cfg["difficulty"]["rrf_k"] == 60


def test_every_schema_key_is_described():
    def walk(node, path):
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                if "$ref" not in sub:
                    assert "description" in sub, f"{path}.{key} has no description"
                    assert "default" in sub or key in ("teacher", "student"), f"{path}.{key} has no default"
                walk(sub, f"{path}.{key}")
            for sub in node.get("$defs", {}).values():
                walk(sub, path)
    walk(C.schema(), "config")


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["training"]["student"].update(lr="fast"), ["training.student.lr"]),
    (lambda c: c.update(training_seeds=0), ["training_seeds"]),
    (lambda c: c.setdefault("distill", {}).update(fused="yes"), ["distill.fused"]),
    (lambda c: c.update(typo_key=1), ["typo_key"]),
    (lambda c: c.setdefault("methods", {}).update(include=["kd", "nosuch"]), ["nosuch", "available", "kd"]),
    (lambda c: c.setdefault("methods", {}).update(params={"skl": {"gamma": 1}}), ["skl", "gamma"]),
    (lambda c: c["data"].update(benchmarks={"x": "nosplit"}), ["nosplit"]),
    (lambda c: c["pairs"]["tiny"]["student"].update(init="layers_from_teacher"), ["layers"]),
    (lambda c: c.update(pairs={}), ["pairs"]),
    (lambda c: c["tokenizer"].update(train=False), ["tokenizer.train", "scratch"]),
    (lambda c: c["data"].update(source="hub", train="./missing/train.jsonl", benchmarks={"d": "MiniLLM/dolly"}),
     ["data.train", "missing/train.jsonl"]),
])
def test_bad_config_one_sentence(smoke, edit, words):
    raw = copy.deepcopy(smoke)
    edit(raw)
    with pytest.raises(UserError) as err:
        C.validate(raw)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_variants_dedupe_and_slug(smoke):
    raw = copy.deepcopy(smoke)
    raw["methods"] = {"include": ["skl", "cpd"], "grids": {"skl": {"alpha": [0.1, 0.3]}}}
    cfg = C.validate(raw)
    skl = {r.variant for r in C.runs(cfg) if r.method == "skl"}
    assert skl == {"default", "alpha-0.3"}          # 0.1 is the default: same run, one slug
    abl = C.ablation_variants(cfg)
    assert abl["full"][:2] == ("cpd", "default")    # the full ablation row is the default cpd run
    assert abl["no_curriculum"][:2] == ("cpd", "curriculum-none")


def test_seeds_do_not_depend_on_method():
    assert C.derive_seed(1, "tiny", 0, "train") == C.derive_seed(1, "tiny", 0, "train")
    assert C.derive_seed(1, "tiny", 0, "train") != C.derive_seed(1, "tiny", 1, "train")


def test_cli_reports_bad_config(tmp_path, smoke, capsys):
    from kdbench.__main__ import main

    raw = copy.deepcopy(smoke)
    raw["evaluation"]["seeds"] = "ten"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "evaluation.seeds" in err and err.count("\n") == 0


def test_per_method_budget_overrides(smoke):
    raw = copy.deepcopy(smoke)
    raw.setdefault("training", {})["per_method"] = {"pocl": {"epochs": 32, "lr": 1.0e-4}}
    cfg = C.validate(raw)
    pocl, kd = C.student_budget(cfg, "pocl"), C.student_budget(cfg, "kd")
    assert (pocl["epochs"], pocl["lr"]) == (32, 1.0e-4)
    assert kd == cfg["training"]["student"] and pocl["batch_size"] == kd["batch_size"]
    for bad, words in (({"nosuch": {"epochs": 2}}, ["unknown method", "nosuch"]),
                       ({"pocl": {"epoch": 2}}, ["training.per_method.pocl", "epoch"]),
                       ({"pocl": {"lr": -1}}, ["training.per_method.pocl", "-1"])):
        raw["training"]["per_method"] = bad
        with pytest.raises(UserError) as err:
            C.validate(raw)
        assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def test_ablation_row_may_name_another_method(smoke):
    raw = copy.deepcopy(smoke)
    raw["ablations"] = {"method": "cpd", "variants": {
        "full": {}, "kd_budget": {"method": "kd", "data_fraction": 0.5},
        "srkl_pocl": {"method": "pocl", "base": "srkl"}}}
    cfg = C.validate(raw)
    abl = C.ablation_variants(cfg)
    assert abl["kd_budget"] == ("kd", "data_fraction-0.5", {"data_fraction": 0.5})
    assert abl["srkl_pocl"][:2] == ("pocl", "base-srkl")
    runs = {(r.method, r.variant) for r in C.runs(cfg)}
    assert runs >= {("kd", "data_fraction-0.5"), ("pocl", "base-srkl")}
    raw["ablations"]["variants"]["bad"] = {"method": "nosuch"}
    with pytest.raises(UserError, match="unknown method 'nosuch'"):
        C.validate(raw)


def test_teacher_data_broad_needs_the_broad_split(smoke):
    raw = copy.deepcopy(smoke)
    raw["data"]["synthetic_sizes"].pop("broad", None)
    raw.setdefault("training", {})["teacher_data"] = "broad"
    with pytest.raises(UserError, match="synthetic_sizes.broad"):
        C.validate(raw)
    raw["data"]["synthetic_sizes"]["broad"] = 10
    assert C.validate(raw)["training"]["teacher_data"] == "broad"
