# Per (pair, method, variant): one job distils a student for every training seed in turn, each
# then sampling answers on every test set and scoring them (kdbench.stages.evaluate, in the same
# process). A job pays the start-up of Python, torch and transformers once for all its seeds
# (about 4 s on a 2-core Xeon, a quarter of what one run of the default costs).


def distill_inputs(wc):
    cls, meth = METHODS[wc.method], method_of(wc)
    tseeds = sorted({P.teacher_seed(s) for s in SEEDS})
    out = {"init": [P.student_init(wc.pair, s) for s in SEEDS], "train": P.data("train"),
           "validation": P.data("validation"), "test_sets": TEST_SET_FILES,
           "method_file": f"{CFG['methods_dir']}/{wc.method}.py"}
    if cls.needs_teacher:
        out["teacher"] = [P.teacher_cache(wc.pair, t) if C.uses_teacher_cache(CFG, cls) else P.teacher_model(wc.pair, t)
                          for t in tseeds]
    if cls.train_on == "mixed":  # student samples are scored by the teacher model online
        out["teacher_model"] = [P.teacher_model(wc.pair, t) for t in tseeds]
    if meth.uses_difficulty:
        out["difficulty"] = P.difficulty(wc.pair)
    if cls.train_on == "teacher_samples":
        out["samples"] = [P.teacher_samples(wc.pair, t) for t in tseeds]
    return out


def run_settings(wc):
    # distill.fused only picks how the same losses are evaluated (equal up to float rounding,
    # tests/test_fused.py), like the thread count: not a reason to rerun a finished run
    distill = {k: v for k, v in CFG["distill"].items() if k != "fused"}
    return fp(run_of(wc).params, C.student_budget(CFG, wc.method), distill, CFG["data"]["max_length"],
              CFG["evaluation"], CFG["seed"])


rule distill:
    input:
        unpack(distill_inputs),
    output:
        *[directory(P.run_file("model", seed=s)) for s in SEEDS],
        *[P.run_file(name, seed=s) for s in SEEDS for name in TRAIN_FILES[1:]],
        *[f for s in SEEDS for f in eval_outputs(seed=s)],
        timing=P.timing("distill", "{pair}", "{method}", "{variant}.tsv"),
    params:
        fp=run_settings,
        key=run_key,
    wildcard_constraints:
        method="|".join(METHODS),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("distill", "{pair}", "{method}", "{variant}.log"),
    shell:
        "{KD} distill {STAGE_ARGS} {params.key} --threads {threads} --timing {output.timing:q} 2> {log:q}"
