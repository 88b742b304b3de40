# Per pair: the teachers (one per teacher seed), the student initialisation of each seed (and,
# for methods that start from it, that student fine-tuned on the training split), and
# what the student runs share: cached teacher logits and the teacher's samples (SeqKD) per
# teacher seed, the difficulty profile.

TRAIN_FILES = ("model", "train", "trace", "epochs", "bin_loss")  # what a training stage writes into a run


def eval_outputs(**run):
    """What evaluating a run adds to its folder (a training job ends with it): the answers
    and their statistics per test set, scores.csv and metrics.json."""
    return ([P.answers(b, **run) for b in TEST_SETS] + [P.answer_stats(b, **run) for b in TEST_SETS]
            + [P.run_file("scores", **run), P.run_file("metrics", **run)])


rule train_teacher:
    input:
        tokenizer_inputs(),
        broad_inputs(),
        train=P.data("train"),
        validation=P.data("validation"),
        test_sets=TEST_SET_FILES,
    output:
        directory(P.teacher_model()),
        *[P.teacher_file(name) for name in TRAIN_FILES[1:]],
        *eval_outputs(pair="{pair}", method=TEACHER, variant="default", seed="{tseed}"),
        timing=P.timing("train_teacher", "{pair}", "seed{tseed}.tsv"),
    params:
        fp=lambda wc: fp(CFG["pairs"][wc.pair]["teacher"], C.budget_settings(CFG["training"]["teacher"]),
                         C.budget_settings(CFG["training"]["teacher_pretrain"]),
                         CFG["training"]["teacher_data"], CFG["data"]["max_length"], CFG["evaluation"], CFG["seed"],
                         PROMPTS),
    threads: max(CFG["threads"], workflow.cores // CFG["teacher_seeds"])  # the teacher seeds share the cores, each with at least `threads`
    priority: 10  # the critical path: every distillation waits for the teacher
    resources:
        gpu=GPU,
    log:
        P.log("train_teacher", "{pair}", "seed{tseed}.log"),
    shell:
        "{KD} train_teacher {STAGE_ARGS} --pair {wildcards.pair:q} --tseed {wildcards.tseed} --threads {threads} --timing {output.timing:q} 2> {log:q}"


def init_inputs(wc):
    student = CFG["pairs"][wc.pair]["student"]
    extra = [P.teacher_model(wc.pair, P.teacher_seed(wc.seed))] if student["init"] == "layers_from_teacher" else []
    return tokenizer_inputs() + extra + [P.data("train")]


rule init_student:
    input:
        init_inputs,
    output:
        directory(P.student_init()),
        timing=P.timing("init_student", "{pair}", "seed{seed}.tsv"),
    params:
        fp=lambda wc: fp(CFG["pairs"][wc.pair]["student"], C.budget_settings(CFG["training"]["pretrain"]), CFG["data"]["max_length"],
                         CFG["seed"], PROMPTS),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("init_student", "{pair}", "seed{seed}.log"),
    shell:
        "{KD} init_student {STAGE_ARGS} --pair {wildcards.pair:q} --seed {wildcards.seed} --threads {threads} --timing {output.timing:q} 2> {log:q}"


rule sft_init:
    # the *init* student of methods with `starts_from = "sft"` (built only if one runs)
    input:
        P.student_init(),
        train=P.data("train"),
        validation=P.data("validation"),
    output:
        directory(P.student_sft()),
        timing=P.timing("sft_init", "{pair}", "seed{seed}.tsv"),
    params:
        fp=fp(C.budget_settings(C.init_budget(CFG)), CFG["data"]["max_length"], CFG["evaluation"], CFG["seed"]),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("sft_init", "{pair}", "seed{seed}.log"),
    shell:
        "{KD} sft_init {STAGE_ARGS} --pair {wildcards.pair:q} --seed {wildcards.seed} --threads {threads} --timing {output.timing:q} 2> {log:q}"


rule cache_teacher:
    input:
        teacher=P.teacher_model(),
        train=P.data("train"),
    output:
        directory(P.teacher_cache()),
        timing=P.timing("cache_teacher", "{pair}", "seed{tseed}.tsv"),
    params:
        fp=fp(CFG["training"]["student"]["precision"], CFG["data"]["max_length"], PROMPTS),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("cache_teacher", "{pair}", "seed{tseed}.log"),
    shell:
        "{KD} cache_teacher {STAGE_ARGS} --pair {wildcards.pair:q} --tseed {wildcards.tseed} --threads {threads} --timing {output.timing:q} 2> {log:q}"


def teacher_answers(wc):
    """Every teacher seed's answers on every test set (what the gate reads)."""
    return [P.answers(b, pair=wc.pair, method=TEACHER, variant="default", seed=t)
            for t in range(CFG["teacher_seeds"]) for b in TEST_SETS]


# Before anything is distilled: do the teachers end their answers (kdbench/gate.py)? The
# verdict file is written only when they do (or the profile says to go on), and the distill
# jobs and the teacher's samples depend on it, so a failed gate stops the DAG before them.
rule teacher_gate:
    input:
        teacher_answers,
    output:
        P.teacher_gate(),
        timing=P.timing("teacher_gate", "{pair}.tsv"),
    params:
        fp=fp(CFG["teacher_gate"]),
    priority: 10  # on the critical path, like the teachers
    log:
        P.log("teacher_gate", "{pair}.log"),
    shell:
        "{KD} teacher_gate {STAGE_ARGS} --pair {wildcards.pair:q} --timing {output.timing:q} 2> {log:q}"


rule teacher_samples:
    input:
        teacher=P.teacher_model(),
        gate=P.teacher_gate(),
        train=P.data("train"),
    output:
        P.teacher_samples(),
        P.samples_stats(P.teacher_samples()),
        timing=P.timing("teacher_samples", "{pair}", "seed{tseed}.tsv"),
    params:
        fp=fp(CFG["evaluation"], CFG["data"]["max_length"], CFG["seed"], PROMPTS),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("teacher_samples", "{pair}", "seed{tseed}.log"),
    shell:
        "{KD} teacher_samples {STAGE_ARGS} --pair {wildcards.pair:q} --tseed {wildcards.tseed} --threads {threads} --timing {output.timing:q} 2> {log:q}"


rule student_samples:
    # the student's own answers of train_on = "pairs" methods (DistiLLM-2), sampled from the
    # start the method trains from (built only if one runs)
    input:
        lambda wc: P.student_start(wc.start, wc.pair, wc.seed),
        train=P.data("train"),
    output:
        P.student_samples(),
        P.samples_stats(P.student_samples()),
        timing=P.timing("student_samples", "{pair}", "{start}", "seed{seed}.tsv"),
    params:
        fp=fp(CFG["evaluation"], CFG["data"]["max_length"], CFG["seed"], PROMPTS),
    wildcard_constraints:
        start="|".join(M.STARTS),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("student_samples", "{pair}", "{start}", "seed{seed}.log"),
    shell:
        "{KD} student_samples {STAGE_ARGS} --pair {wildcards.pair:q} --start {wildcards.start:q} --seed {wildcards.seed} --threads {threads} --timing {output.timing:q} 2> {log:q}"


def difficulty_inputs(wc):
    # one profile per pair: student seed 0, and teacher seed 0 for a scorer that needs a teacher
    extra = [P.teacher_model(wc.pair, 0)] if CFG["difficulty"]["scorer"] == "teacher_student_kl" else []
    return [P.student_init(wc.pair, 0), P.data("train")] + extra


rule score_difficulty:
    input:
        difficulty_inputs,
    output:
        P.difficulty(),
        timing=P.timing("score_difficulty", "{pair}.tsv"),
    params:
        fp=fp(CFG["difficulty"], CFG["evaluation"]["precision"], CFG["evaluation"]["max_new_tokens"],
              CFG["data"]["max_length"], CFG["seed"], PROMPTS),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("score_difficulty", "{pair}.log"),
    shell:
        "{KD} score_difficulty {STAGE_ARGS} --pair {wildcards.pair:q} --threads {threads} --timing {output.timing:q} 2> {log:q}"
