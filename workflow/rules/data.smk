# Stage: data. Checks (and where configured downloads or generates) each dataset once, before any
# training job that needs it; a missing dataset fails here with the config key to fix.


rule prepare_data:
    output:
        res("data/{dataset}.json"),
    params:
        spec=lambda wc: spec_json(W.data_spec(wc.dataset)),
    log:
        res("logs/data/{dataset}.log"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()
