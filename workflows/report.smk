# The profile's tables and figures (committed for the default profile).

TABLES = P.tables
LONG_TABLES = [f"{TABLES}/{n}" for n in ("runs.csv", "examples.csv.gz", "trace.csv.gz", "epochs.csv",
                                         "bin_loss.csv", "ablations.csv")]
TABLE_FILES = [f"{TABLES}/{stem}.{ext}" for stem in ("main", "runtime") + (("ablation",) if CFG["ablations"]["method"] else ())
               for ext in ("md", "csv", "tex")]
FIGURES_DONE = f"{P.figures}/.done"


rule collect:
    input:
        [P.run_file("metrics.json", pair=p, method=m, variant=v, seed=s) for p, m, v, s in run_dirs()],
    output:
        LONG_TABLES,
    log:
        P.log("collect.log"),
    shell:
        "{KD} collect --config {CONFIG} 2> {log}"


rule tables:
    input:
        LONG_TABLES,
    output:
        TABLE_FILES,
    log:
        P.log("tables.log"),
    shell:
        "{KD} tables --config {CONFIG} 2> {log}"


rule figures:
    input:
        LONG_TABLES,
    output:
        touch(FIGURES_DONE),
    log:
        P.log("figures.log"),
    shell:
        "{KD} figures --config {CONFIG} 2> {log}"
