# The profile's tables and figures (committed for the default profile).
from kdbench.paths import ABLATION_TABLE, LONG_TABLES, MAIN_TABLE, RUNTIME_TABLE, RunKey

ALL_RUNS = P.teacher_runs() + [RunKey(r.pair, r.method, r.variant, r.seed) for r in RUNS]
METRICS = [P.run_file("metrics", **r._asdict()) for r in ALL_RUNS]
LONG_TABLE_FILES = [P.long_table(name) for name in LONG_TABLES]
TABLE_KINDS = (MAIN_TABLE, RUNTIME_TABLE) + ((ABLATION_TABLE,) if CFG["ablations"]["method"] else ())


report: "report/workflow.rst"


def report_tables():
    """The table files, the .md (shown in its caption) and numeric .csv of each flagged for
    `snakemake --report` under "Tables"; the .tex stays out."""
    out = []
    for kind in TABLE_KINDS:
        for pair in PAIRS:
            stem = Path(P.table(kind, pair, "md")).stem
            out.append(P.table(kind, pair, "tex"))
            out += [report(P.table(kind, pair, ext), caption=f"report/{kind}_table.rst", category="Tables",
                           labels={"table": stem, "format": ext}) for ext in ("md", "csv")]
    return out


rule collect:
    input:
        METRICS,
    output:
        LONG_TABLE_FILES,
        timing=P.timing("collect.tsv"),
    params:
        # the ablation rows (ablations.csv); the runs themselves are the inputs
        fp=fp(C.ablation_variants(CFG)),
    log:
        P.log("collect.log"),
    shell:
        "{KD} collect {STAGE_ARGS} --timing {output.timing:q} 2> {log:q}"


# answers that need no model (kdbench/baselines.py): rows of every main table
rule baselines:
    input:
        train=P.data("train"),
        test_sets=TEST_SET_FILES,
    output:
        P.baselines,
        timing=P.timing("baselines.tsv"),
    log:
        P.log("baselines.log"),
    shell:
        "{KD} baselines {STAGE_ARGS} --timing {output.timing:q} 2> {log:q}"


rule tables:
    input:
        LONG_TABLE_FILES,
        P.baselines,
    output:
        report_tables(),
        timing=P.timing("tables.tsv"),
    log:
        P.log("tables.log"),
    shell:
        "{KD} tables {STAGE_ARGS} --timing {output.timing:q} 2> {log:q}"


rule figures:
    input:
        LONG_TABLE_FILES,
    output:
        # build_all skips a figure whose inputs are absent (e.g. the schedule without an
        # ablation method), so the rule declares the folder, not the PNGs; the report takes
        # whatever PNGs are in it.
        report(directory(P.figures), patterns=["{name}.png"], caption="report/figures.rst",
               category="Figures", labels={"figure": "{name}"}),
        touch(P.figures_done),
        timing=P.timing("figures.tsv"),
    params:
        fp=fp(CFG["ablations"]["method"]),
    log:
        P.log("figures.log"),
    shell:
        "{KD} figures {STAGE_ARGS} --timing {output.timing:q} 2> {log:q}"
