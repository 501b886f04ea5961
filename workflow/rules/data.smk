# Stage: data. Checks (and where configured downloads or generates) each dataset once, before any
# training job that needs it; a missing dataset fails here with the config key to fix.


rule prepare_data:
    output:
        P("data_ready"),
    params:
        spec=lambda wc: spec_json(W.data_spec(wc.dataset)),
    log:
        P("log_data"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()
