# Per run (pair, method, variant, seed): one job distils, then samples answers on every test
# set and scores them (kdbench.stages.evaluate, in the same process: a run pays the start-up
# of Python, torch and transformers once).


def distill_inputs(wc):
    cls, meth, tseed = METHODS[wc.method], method_of(wc), P.teacher_seed(wc.seed)
    out = {"init": P.student_init(wc.pair, wc.seed), "train": P.data("train"), "validation": P.data("validation"),
           "test_sets": TEST_SET_FILES, "method_file": f"{CFG['methods_dir']}/{wc.method}.py"}
    if cls.needs_teacher:
        out["teacher"] = (P.teacher_cache(wc.pair, tseed) if C.uses_teacher_cache(CFG, cls)
                          else P.teacher_model(wc.pair, tseed))
    if cls.train_on == "mixed":  # student samples are scored by the teacher model online
        out["teacher_model"] = P.teacher_model(wc.pair, tseed)
    if meth.uses_difficulty:
        out["difficulty"] = P.difficulty(wc.pair)
    if cls.train_on == "teacher_samples":
        out["samples"] = P.teacher_samples(wc.pair, tseed)
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
        directory(P.run_file("model")),
        *[P.run_file(name) for name in TRAIN_FILES[1:]],
        *eval_outputs(),
        timing=P.timing("distill", "{pair}", "{method}", "{variant}", "seed{seed}.tsv"),
    params:
        fp=run_settings,
        key=run_key,
    wildcard_constraints:
        method="|".join(METHODS),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("distill", "{pair}", "{method}", "{variant}", "seed{seed}.log"),
    shell:
        "{KD} distill {STAGE_ARGS} {params.key} --threads {threads} --timing {output.timing:q} 2> {log:q}"
