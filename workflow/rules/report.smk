# Stage: aggregation. Tables 1-7 and Figures 1, 2 (and 4, zero-shot confusion matrices) from the
# metrics files, each beside the paper's published numbers. Named targets: table1 ... figure4.


rule table:
    input:
        lambda wc: W.table_inputs(int(wc.n)),
    output:
        md=report(R + "/tables/table{n}.md", category="Tables"),
        tex=R + "/tables/table{n}.tex",
        csv=R + "/tables/table{n}.csv",
    params:
        paper=config["paper_dir"],
        prefix=lambda wc: f"{R}/tables/table{wc.n}",
    log:
        R + "/logs/tables/table{n}.log",
    conda:
        "../../envs/mcmi.yaml"
    shell:
        "python -m mcmi table {wildcards.n} --paper-dir {params.paper} --out {params.prefix} {input} > {log} 2>&1"


rule figure:
    input:
        lambda wc: W.figure_inputs(int(wc.n)),
    output:
        pdf=R + "/figures/figure{n}.pdf",
        png=report(R + "/figures/figure{n}.png", category="Figures"),
    params:
        prefix=lambda wc: f"{R}/figures/figure{wc.n}",
    log:
        R + "/logs/figures/figure{n}.log",
    conda:
        "../../envs/mcmi.yaml"
    shell:
        "python -m mcmi figure {wildcards.n} --out {params.prefix} {input} > {log} 2>&1"


for _target, _outputs in W.targets().items():

    rule:
        name:
            _target
        input:
            _outputs,
        localrule: True
