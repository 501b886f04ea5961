# Stage: aggregation. Tables 1-7 and Figures 1, 2 (and 4, zero-shot confusion matrices) from the
# metrics files, each beside the paper's published numbers; table1x (beyond the paper: MIMKD and
# ITRD) beside their own papers' numbers. Named targets: table1 ... table7, table1x, figure1 ... figure4.


rule table:
    input:
        lambda wc: W.table_inputs(wc.n),
    output:
        md=report(res("tables/table{n}.md"), category="Tables"),
        tex=res("tables/table{n}.tex"),
        csv=res("tables/table{n}.csv"),
    params:
        paper=W.paper_dir,
        prefix=lambda wc: res(f"tables/table{wc.n}"),
    log:
        res("logs/tables/table{n}.log"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        mcmi(
            "table --paper-dir {params.paper} --out {params.prefix} {wildcards.n} {input} > {log} 2>&1"
        )


rule figure:
    input:
        lambda wc: W.figure_inputs(int(wc.n)),
    output:
        pdf=res("figures/figure{n}.pdf"),
        png=report(res("figures/figure{n}.png"), category="Figures"),
    params:
        prefix=lambda wc: res(f"figures/figure{wc.n}"),
    log:
        res("logs/figures/figure{n}.log"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        mcmi(
            "figure --out {params.prefix} {wildcards.n} {input} > {log} 2>&1"
        )


for _target, _outputs in W.targets().items():

    rule:
        name:
            _target
        input:
            _outputs,
        localrule: True
