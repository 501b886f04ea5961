# Stage: aggregation. Tables 1-7 and Figures 1, 2 (and 4, zero-shot confusion matrices) from the
# metrics files, each beside the paper's published numbers; table1x (beyond the paper: MIMKD and
# ITRD) beside their own papers' numbers. Named targets: table1 ... table7, table1x, figure1 ... figure4.


rule table:
    input:
        metrics=lambda wc: W.table_inputs(wc.n),
        plan=PLAN_CONFIG,
    output:
        md=report(P("table", ext="md"), category="Tables"),
        tex=P("table", ext="tex"),
        csv=P("table", ext="csv"),
    params:
        paper=W.paper_dir,
        prefix=lambda wc, output: os.path.splitext(output.md)[0],
        plan=canonical_json(W.config),
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
    output:
        pdf=P("figure", ext="pdf"),
        png=report(P("figure", ext="png"), category="Figures"),
    params:
        prefix=lambda wc, output: os.path.splitext(output.pdf)[0],
        plan=canonical_json(W.config),
    log:
        P("log_figure"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        mcmi(
            "figure --plan-config {params.plan:q} --out {params.prefix} {wildcards.n} {input.metrics} > {log} 2>&1"
        )


for _target, _outputs in W.targets().items():

    rule:
        name:
            _target
        input:
            _outputs,
        localrule: True
