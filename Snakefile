# kdbench: the whole benchmark as one DAG.
#   snakemake --cores all                                   # the embedded default profile (config/default.yaml)
#   snakemake --cores all --configfile config/<name>.yaml   # any other profile (replaces the default)
# Rules live in workflows/*.smk, the layout in kdbench/paths.py, the logic in the kdbench package.
from snakemake.utils import min_version

min_version("8.0")


include: "workflows/common.smk"
include: "workflows/data.smk"
include: "workflows/models.smk"
include: "workflows/runs.smk"
include: "workflows/report.smk"
include: "workflows/tuning.smk"


# The runs themselves are targets too: tables/ and figures/ are committed for the default
# profile, so on a fresh clone only the (git-ignored) runs are missing; asking for them makes
# `snakemake` rebuild every run and then, their inputs updated, the tables and figures.
rule all:
    default_target: True
    input:
        METRICS,
        rules.tables.output,
        P.figures_done,
