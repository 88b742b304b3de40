"""Command line: `python -m kdbench <stage> --config FILE [--pair P --method M --variant V --seed K]`.

Every DAG rule is one such line, so any stage can be rerun by hand. Extra commands:
`validate` checks a config, `methods` lists the discovered methods and their defaults.
"""
from __future__ import annotations

import argparse
import sys

from kdbench import config as C
from kdbench import offline
from kdbench.errors import UserError

# stage -> the wildcards it takes
STAGES = {
    "prepare_data": (), "train_tokenizer": (), "collect": (), "tables": (), "figures": (),
    "train_teacher": ("pair",), "cache_teacher": ("pair",), "teacher_samples": ("pair",),
    "score_difficulty": ("pair",), "init_student": ("pair", "seed"),
    "distill": ("pair", "method", "variant", "seed"), "generate": ("pair", "method", "variant", "seed"),
    "score": ("pair", "method", "variant", "seed"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    for stage, wildcards in {**STAGES, "validate": (), "methods": ()}.items():
        s = sub.add_parser(stage)
        s.add_argument("--config", default="config/default.yaml", help="profile YAML (default: %(default)s)")
        s.add_argument("--threads", type=int, help="CPU threads for this job (overrides the config's `threads`)")
        for w in wildcards:
            s.add_argument(f"--{w}", required=True, type=int if w == "seed" else str)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = C.load(args.config)
        if args.threads:
            cfg["threads"] = args.threads
        offline.apply(cfg)  # before any stage imports the Hugging Face libraries
        if args.stage == "validate":
            n = len(C.runs(cfg))
            print(f"{args.config}: valid; profile {cfg['profile']!r}, {len(cfg['pairs'])} pair(s), {n} student runs.")
            return 0
        if args.stage == "methods":
            from kdbench import method as M

            for name, cls in M.discover(cfg["methods_dir"]).items():
                print(f"{name:16s} {M.defaults(cls)}")
            return 0
        from kdbench import stages

        kwargs = {w: getattr(args, w) for w in STAGES[args.stage]}
        getattr(stages, args.stage)(cfg, **kwargs)
    except UserError as exc:
        print(f"kdbench {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
