# Reproduction of "Bayes Conditional Distribution Estimation for Knowledge Distillation" (ICLR 2024).
#   snakemake --cores all --use-conda                     the paper (config/config.yaml), on a GPU box
#   snakemake --cores 2 --configfile config/demo.yaml     every table and figure on a CPU, in minutes
#   snakemake table3                                      one table
import os
import sys

sys.path.insert(0, os.path.join(workflow.basedir, "workflow"))

# The paper's config unless the user names another: --configfile replaces it rather than being
# merged into it, so a demo or test config never inherits the paper's grid.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/mcmi.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


localrules: all, prepare_data, select_lambda, mcmi_selected, table, figure


rule all:
    input:
        [path for outputs in W.targets().values() for path in outputs],
    default_target: True
