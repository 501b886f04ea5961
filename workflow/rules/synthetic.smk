# Stage: the synthetic Gaussian task (Table 5). One job per (preset, delta_mu) trains every seed's MLL and
# MCMI teachers and the four students together (batched over seeds) on the CPU. Presets (as_written,
# authors_code) are named key sets of mcmi.synthetic.PRESETS; their outputs live in separate folders.


rule synthetic:
    output:
        P("synthetic"),
    params:
        spec=lambda wc: spec_json(W.synthetic_spec(wc.preset, wc.dmu)),
    log:
        P("log_synthetic"),
    threads: W.synthetic_threads
    priority: lambda wildcards: W.synthetic_priority(wildcards.preset)
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()
