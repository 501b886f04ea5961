# Stage: aggregation. Tables 1-8 and Figures 1-13 from the metrics files, each beside the paper's
# published numbers where it has some; table1x (beyond the paper: MIMKD and ITRD) beside their own
# papers' numbers. Named targets: table1 ... table8, table1x, figure1 ... figure13 (one per declaration
# of mcmi.report whose experiment block is configured).
#
# The Snakemake report (snakemake table3 --report report.html, after the run; name the targets that
# ran, several if you like) opens on workflow/report/workflow.rst, a description of the run, and shows
# each table as its HTML page and each figure, with a caption from workflow/report/*.rst.

from mcmi.report import FIGURES, TABLES  # noqa: E402


report: "../report/workflow.rst"


# The config and the package code the results folder is planned with (see PLAN_CONFIG and CODE_STAMP in
# common.smk): written here the first time, rewritten while the Snakefile is read whenever they change.
rule plan_config:
    output:
        plan=PLAN_CONFIG,
        code=CODE_STAMP,
    log:
        P("log_plan_config"),
    localrule: True
    run:
        Path(log[0]).write_text(f"planned config written to {W.record_plan_config(create=True)}, package code "
                                f"to {W.record_code_stamp(create=True)}\n")


rule table:
    input:
        metrics=lambda wc: W.table_inputs(wc.n),
        plan=PLAN_CONFIG,
        code=CODE_STAMP,
    output:
        md=P("table", ext="md"),
        tex=P("table", ext="tex"),
        csv=P("table", ext="csv"),
        html=report(
            P("table", ext="html"),
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "Table {n}", "format": "HTML page (also .md, .tex, .csv)"},
        ),
    params:
        paper=W.paper_dir,
        prefix=lambda wc, output: os.path.splitext(output.md)[0],
        plan=canonical_json(W.config),
        # read by the report's caption (workflow/report/table.rst), not by the command
        title=lambda wc: TABLES[wc.n].title,
        caption=lambda wc: TABLES[wc.n].caption,
        cites=lambda wc: TABLES[wc.n].cites,
    log:
        P("log_table"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        mcmi(
            "table --paper-dir {params.paper} --plan-config {params.plan:q} --out {params.prefix} {wildcards.n} "
            "{input.metrics} > {log} 2>&1"
        )


rule figure:
    input:
        metrics=lambda wc: W.figure_inputs(int(wc.n)),
        plan=PLAN_CONFIG,
        code=CODE_STAMP,
    output:
        pdf=P("figure", ext="pdf"),
        png=report(
            P("figure", ext="png"),
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "Figure {n}", "format": "PNG (also .pdf)"},
        ),
    params:
        paper=W.paper_dir,
        prefix=lambda wc, output: os.path.splitext(output.pdf)[0],
        plan=canonical_json(W.config),
        # read by the report's caption (workflow/report/figure.rst), not by the command
        caption=lambda wc: FIGURES[int(wc.n)].caption,
    log:
        P("log_figure"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        mcmi(
            "figure --paper-dir {params.paper} --plan-config {params.plan:q} --out {params.prefix} {wildcards.n} "
            "{input.metrics} > {log} 2>&1"
        )


for _target, _outputs in W.targets().items():

    rule:
        name:
            _target
        input:
            _outputs,
        localrule: True
