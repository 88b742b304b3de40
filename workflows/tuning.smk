# `snakemake tune`: the learning-rate grid (`tuning.lr`), one validation-only run per main-table
# method, variant and value (kdbench.stages.tune), then the choices (kdbench.tuning). Not part
# of the default target: the chosen values are written into the profile by hand.
TUNING = [dict(zip(("pair", "method", "variant", "lr"), (*key, str(lr)))) for *key, lr in C.tuning_runs(CFG)]


rule tune_run:
    input:
        unpack(lambda wc: student_inputs(wc, [CFG["tuning"]["seed"]])),
    output:
        P.tuning_result(),
        timing=P.timing("tune", "{pair}", "{method}", "{variant}", "lr{lr}.tsv"),
    params:
        fp=lambda wc: fp(run_settings(wc, set_by_job=("lr",)), CFG["tuning"]["seed"]),
        key=lambda wc: f"--pair {shlex.quote(wc.pair)} --method {shlex.quote(wc.method)} --variant {shlex.quote(wc.variant)}",
    wildcard_constraints:
        method="|".join(METHODS),
        lr=r"[0-9][0-9.e+-]*",
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("tune", "{pair}", "{method}", "{variant}", "lr{lr}.log"),
    shell:
        "{KD} tune {STAGE_ARGS} {params.key} --lr {wildcards.lr:q} --threads {threads} --timing {output.timing:q} 2> {log:q}"


rule tune:
    input:
        [P.tuning_result(**t) for t in TUNING],
    output:
        P.tuning_table,
        P.tuning_report,
    log:
        P.log("tuning_table.log"),
    shell:
        "{KD} tuning_table {STAGE_ARGS} 2> {log:q}"
