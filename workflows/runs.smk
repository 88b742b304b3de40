# One distill job trains a student for every training seed of one (pair, method, variant) in
# turn (`distill.group_seeds`, the default: Python, torch and transformers start once, about
# 4 s on a 2-core Xeon, a quarter of what one run of the default costs), or for one seed
# (`group_seeds: false`, so that seeds run side by side on a cluster). Each run then samples
# answers on every test set and scores them (kdbench.stages.evaluate, in the same process).
GROUP_SEEDS = CFG["distill"]["group_seeds"]
SEEDS = list(range(CFG["training_seeds"]))  # every (pair, method, variant) runs each of them


def job_seeds(wc):
    return SEEDS if GROUP_SEEDS else [int(wc.seed)]


def distill_inputs(wc):
    return {**student_inputs(wc, job_seeds(wc)), "test_sets": TEST_SET_FILES}


def student_inputs(wc, seeds):
    """What training the students of (pair, method, variant) with these seeds reads."""
    cls, meth = METHODS[wc.method], method_of(wc)
    tseeds = sorted({P.teacher_seed(s) for s in seeds})
    out = {"init": [P.student_start(cls.starts_from, wc.pair, s) for s in seeds], "train": P.data("train"),
           "validation": P.data("validation"), "method_file": f"{CFG['methods_dir']}/{wc.method}.py",
           "gate": P.teacher_gate(wc.pair),  # no student of a teacher that failed the gate
           # the teacher that judges the answers' fluency (kdbench/fluency.py), every method's
           "judge": [P.teacher_model(wc.pair, t) for t in tseeds]}
    if cls.needs_teacher:
        out["teacher"] = [P.teacher_cache(wc.pair, t) if C.uses_teacher_cache(CFG, cls) else P.teacher_model(wc.pair, t)
                          for t in tseeds]
    if cls.train_on == "mixed":  # student samples are scored by the teacher model online
        out["teacher_model"] = [P.teacher_model(wc.pair, t) for t in tseeds]
    if meth.uses_difficulty:
        out["difficulty"] = P.difficulty(wc.pair)
    # samples made before training, with their cost beside them (the run records it: pregen_wall_s)
    if cls.train_on in ("teacher_samples", "pairs"):
        out["samples"] = [f for t in tseeds for f in (P.teacher_samples(wc.pair, t),
                                                      P.samples_stats(P.teacher_samples(wc.pair, t)))]
    if cls.train_on == "pairs":  # and the student's own, from its start
        out["student_samples"] = [f for s in seeds for f in (P.student_samples(wc.pair, cls.starts_from, s),
                                                             P.samples_stats(P.student_samples(wc.pair, cls.starts_from, s)))]
    return out


def run_key(wc):
    """Command-line words naming a distill job's runs: pair, method, variant and its seeds
    (quoted, although the schema already restricts names)."""
    return " ".join([*(f"--{k} {shlex.quote(str(v))}" for k, v in
                       (("pair", wc.pair), ("method", wc.method), ("variant", wc.variant))),
                     "--seed", *map(str, job_seeds(wc))])


# a job's files: every seed's run folder, or the one of its {seed}
JOB_RUNS = [{"seed": s} for s in SEEDS] if GROUP_SEEDS else [{}]
JOB = "{variant}" if GROUP_SEEDS else "{variant}/seed{seed}"  # its timing and log file names


def run_settings(wc, set_by_job=()):
    # distill.fused only picks how the same losses are evaluated (equal up to float rounding,
    # tests/test_fused.py), like the thread count, and group_seeds how runs share processes:
    # not reasons to rerun a finished run (nor the budget's C.HOW_ONLY keys); `set_by_job` names
    # budget keys the job sets itself
    # (a tuning run's lr)
    distill = {k: v for k, v in CFG["distill"].items() if k not in ("fused", "group_seeds")}
    budget = {k: v for k, v in C.budget_settings(C.student_budget(CFG, wc.method)).items() if k not in set_by_job}
    return fp(run_of(wc).params, budget, distill, CFG["data"]["max_length"], CFG["evaluation"], CFG["seed"], PROMPTS)


rule distill:
    input:
        unpack(distill_inputs),
    output:
        *[directory(P.run_file("model", **r)) for r in JOB_RUNS],
        *[P.run_file(name, **r) for r in JOB_RUNS for name in TRAIN_FILES[1:]],
        *[f for r in JOB_RUNS for f in eval_outputs(**r)],
        timing=P.timing("distill", "{pair}", "{method}", JOB + ".tsv"),
    params:
        fp=run_settings,
        key=run_key,
    wildcard_constraints:
        method="|".join(METHODS),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("distill", "{pair}", "{method}", JOB + ".log"),
    shell:
        "{KD} distill {STAGE_ARGS} {params.key} --threads {threads} --timing {output.timing:q} 2> {log:q}"
