"""Helpers for tests that drive the real entry points (`python -m kdbench`) in a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).resolve().parent / "netguard"
HF_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")

MODEL = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 1, "num_key_value_heads": 1, "max_position_embeddings": 256}


def tiny_profile(tmp: Path, **over) -> dict:
    """A profile small enough that each stage takes a second or two; `over` replaces top-level keys."""
    cfg = {"profile": "tiny", "seed": 1, "threads": 1, "methods_dir": str(REPO / "methods"),
           "data": {"source": "synthetic", "benchmarks": {"id": "id"}, "max_length": 256,
                    "synthetic_sizes": {"train": 24, "validation": 4, "id": 4, "paraphrase": 4, "hard": 4}},
           "tokenizer": {"train": True, "vocab_size": 300},
           "pairs": {"tiny": {"teacher": {"config": dict(MODEL)}, "student": {"config": dict(MODEL)}}},
           "training": {"teacher": {"epochs": 1, "batch_size": 8, "lr": 0.003, "precision": "fp32"},
                        "pretrain": {"epochs": 0},
                        "student": {"epochs": 1, "batch_size": 8, "lr": 0.003, "precision": "fp32"}},
           "evaluation": {"seeds": [1], "max_new_tokens": 4, "batch_size": 8, "precision": "fp32"},
           "training_seeds": 1, "methods": {"include": ["kd"]}, "ablations": {"method": None}}
    cfg.update(over)
    return cfg


def write_profile(tmp: Path, cfg: dict, name: str = "profile.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def env(netguard_log: Path | None = None, **extra) -> dict:
    """The test's environment without the Hugging Face switches (the suite must set them
    itself), single-threaded, with this checkout's kdbench first on the path."""
    e = {k: v for k, v in os.environ.items() if k not in HF_VARS}
    paths = [str(REPO)] + ([str(NETGUARD)] if netguard_log else [])
    if netguard_log:
        paths.reverse()
        e["KDBENCH_NETGUARD_LOG"] = str(netguard_log)
    e["PYTHONPATH"] = os.pathsep.join(paths + [e.get("PYTHONPATH", "")])
    e.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", **extra)
    return e


def kdbench(cwd: Path, *args, check=True, netguard_log=None, **popen) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "kdbench", *map(str, args)], cwd=cwd, capture_output=True,
                         text=True, env=env(netguard_log), **popen)
    if check and out.returncode != 0:
        raise AssertionError(f"kdbench {' '.join(map(str, args))} failed:\n{out.stderr[-3000:]}")
    return out


def prepare_tree(tmp: Path, cfg: dict, stages=("prepare_data", "train_tokenizer", "train_teacher", "init_student")) -> dict:
    """Run the first stages of `cfg` in this process (results under tmp/results); the validated config."""
    from kdbench import config as C
    from kdbench import stages as S

    cfg = C.validate({**cfg, "results_dir": str(tmp / "results")})
    for stage in stages:
        if stage in ("train_teacher", "cache_teacher"):
            getattr(S, stage)(cfg, "tiny", 0)
        elif stage == "init_student":
            S.init_student(cfg, "tiny", 0)
        else:
            getattr(S, stage)(cfg)
    return cfg


def files_under(root: Path) -> dict:
    """{relative path: (size, mtime_ns)} of every file below root (hidden temporaries included)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}
