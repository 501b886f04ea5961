# Stage: the synthetic Gaussian task (Table 5). One job per delta_mu trains every seed's MLL and
# MCMI teachers and the four students together (batched over seeds) on the CPU.


rule synthetic:
    output:
        res("synthetic/dmu{dmu}.json"),
    params:
        spec=lambda wc: spec_json(W.synthetic_spec(wc.dmu)),
    log:
        res("logs/synthetic/dmu{dmu}.log"),
    threads: W.synthetic_threads
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()
