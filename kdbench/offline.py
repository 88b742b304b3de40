"""Offline by construction: a profile whose data and models are all local never touches the
network, whatever the shell exports.

The Hugging Face libraries reach out even when everything is local (`datasets.load_dataset`
sends a download-count request for its own `json` builder; `transformers` and `huggingface_hub`
check the hub for updates and send telemetry). Their offline switches stop that, but they are
read when the libraries are imported, so `apply` runs before any stage imports them.
"""
from __future__ import annotations

import os
from pathlib import Path

SWITCHES = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}


def hub_sources(cfg: dict) -> list[str]:
    """The data sources and model paths of a profile that are not local files or folders
    (hub ids); empty for a profile that needs no network."""
    out = []
    d = cfg["data"]
    if d["source"] == "hub":
        out += [s for s in (d["train"], *d["benchmarks"].values()) if s and not Path(s).expanduser().exists()]
    for spec in cfg["pairs"].values():
        for role in ("teacher", "student"):
            m = spec[role]
            if m["init"] == "pretrained" and m["path"] and not Path(m["path"]).expanduser().exists():
                out.append(m["path"])
    return out


def apply(cfg: dict) -> bool:
    """Set the offline switches when the profile needs no hub access; True if set."""
    if hub_sources(cfg):
        return False
    os.environ.update(SWITCHES)
    return True
