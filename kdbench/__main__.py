"""Command line: `python -m kdbench <stage> --config FILE [--pair P --method M --variant V --seed K]`
(the teacher's stages take `--pair P --tseed T`, T the teacher seed; `distill` takes one or more
seeds, `--seed 0 1 2`, and runs them one after the other in the same process).

Every DAG rule is one such line, so any stage can be rerun by hand. Extra commands:
`validate` checks a config, `methods` lists the discovered methods, their defaults and references,
`convert_gguf --path DIR_OR_REPO --gguf-file FILE --out DIR` writes a GGUF checkpoint as a
plain safetensors folder (the DAG does not need it: train_teacher saves a GGUF teacher itself).
"""
from __future__ import annotations

import argparse
import errno
import gc
import sys
import time

_T0 = time.perf_counter()  # the job's start, for --timing

from kdbench import config as C
from kdbench import offline
from kdbench.errors import UserError

# stage -> the wildcards it takes
STAGES = {
    "prepare_data": (), "train_tokenizer": (), "collect": (), "tables": (), "figures": (),
    "train_teacher": ("pair", "tseed"), "cache_teacher": ("pair", "tseed"), "teacher_samples": ("pair", "tseed"),
    "teacher_gate": ("pair",), "baselines": (), "score_difficulty": ("pair",), "init_student": ("pair", "seed"),
    "sft_init": ("pair", "seed"),
    "distill": ("pair", "method", "variant", "seed"), "evaluate": ("pair", "method", "variant", "seed"),
    "tune": ("pair", "method", "variant", "lr"), "tuning_table": (),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    for stage, wildcards in {**STAGES, "validate": (), "methods": ()}.items():
        s = sub.add_parser(stage)
        s.add_argument("--config", default="config/default.yaml", help="profile YAML (default: %(default)s)")
        s.add_argument("--threads", type=int, help="CPU threads for this job (overrides the config's `threads`)")
        s.add_argument("--fingerprint", help="stop unless the config has this fingerprint (the DAG passes the "
                                              "one it decided with)")
        for w in wildcards:
            many = (stage, w) == ("distill", "seed")
            s.add_argument(f"--{w}", required=True, type={"seed": int, "tseed": int, "lr": float}.get(w, str),
                           nargs="+" if many else None)
        s.add_argument("--timing", help="write the job's wall seconds, CPU seconds and peak memory to this TSV "
                                        "when the stage succeeds (the DAG's timings/ files)")
    g = sub.add_parser("convert_gguf", help="dequantize a GGUF checkpoint into a safetensors folder")
    g.add_argument("--path", required=True, help="local folder holding the .gguf file, or a hub model repo")
    g.add_argument("--gguf-file", required=True, help="file name of the checkpoint inside --path")
    g.add_argument("--out", required=True, help="folder to write (replaced atomically when complete)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.stage == "convert_gguf":
            from kdbench.checkpoints import convert_gguf

            convert_gguf(args.path, args.gguf_file, args.out, progress=print)
            return 0
        cfg = C.load(args.config)
        if args.fingerprint:
            C.check_fingerprint(cfg, args.fingerprint, args.config)
        if args.threads:
            cfg["threads"] = args.threads
        offline.apply(cfg)  # before any stage imports the Hugging Face libraries
        if args.stage == "validate":
            from kdbench import preflight
            from kdbench.models import check_scratch_config

            for pair, spec in cfg["pairs"].items():
                for role in ("teacher", "student"):
                    if spec[role]["init"] == "scratch":
                        check_scratch_config(spec[role], f"{pair}.{role}")
            for line in preflight.data_report(cfg):
                print(line)
            for warning in preflight.schedule_warnings(cfg):
                print(f"kdbench validate: warning: {warning}", file=sys.stderr)
            n = len(C.runs(cfg))
            print(f"{args.config}: valid; profile {cfg['profile']!r}, {len(cfg['pairs'])} pair(s), {n} student runs.")
            return 0
        if args.stage == "methods":
            from kdbench import method as M

            for name, cls in M.discover(cfg["methods_dir"]).items():
                print(f"{name:16s} {M.defaults(cls)}")
                for ref in cls.references:
                    print(f"{'':16s} {ref}")
            return 0
        from kdbench import stages

        kwargs = {w: getattr(args, w) for w in STAGES[args.stage]}
        if args.stage == "distill":
            for seed in kwargs.pop("seed"):
                stages.distill(cfg, **kwargs, seed=seed)
        else:
            getattr(stages, args.stage)(cfg, **kwargs)
        if args.timing:
            write_timing(args.timing)
        # everything is written: spare the interpreter's exit its collection passes over every
        # object torch and transformers created (exit 1.5 -> 0.4 s per job on a 2-core Xeon)
        gc.freeze()
    except UserError as exc:
        print(f"kdbench {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        reason = storage_error(exc)
        if reason is None:
            raise
        print(f"kdbench {args.stage}: error: the results could not be written ({reason}); free disk space "
              "or make the results folder writable, then rerun (nothing was half-written).", file=sys.stderr)
        return 2
    return 0


def write_timing(path: str) -> None:
    """This command's wall seconds (from when Python imported this module), CPU seconds (user +
    system, children included) and peak resident memory, as a one-row TSV with the column
    names of Snakemake's `benchmark:` files (s, cpu_time, max_rss in MB). The job measures
    itself instead of a `benchmark:` directive, whose threads poll every job's process tree
    from Snakemake's own process (and sample CPU time, missing what falls between polls)."""
    import resource

    from kdbench import io

    wall = time.perf_counter() - _T0
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    rss_mb = max(own.ru_maxrss, children.ru_maxrss) / 1024  # kB on Linux
    io.write_text(path, f"s\tcpu_time\tmax_rss\n{wall:.2f}\t{cpu:.2f}\t{rss_mb:.1f}\n")


# errno values and library messages (torch, safetensors) of a write the file system refused
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
_STORAGE_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large", "Read-only file system",
                  "StorageFull", "Permission denied", "file write failed", "Operation not permitted",
                  "unexpected pos")  # torch.save's zip writer when a write came up short


def storage_error(exc: BaseException) -> str | None:
    """A short reason when `exc` (or an exception it was raised from) is a refused write."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        text = str(exc)
        for t in _STORAGE_TEXTS:
            if t in text:
                return t
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
