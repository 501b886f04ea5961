# Stage: looking at trained teachers, for the appendix's figures. Each job's spec comes from the
# experiment that declares it (its declaration's `jobs`: W.declared_spec of the job's output), since
# its settings (perplexity, images, classes, ...) are that experiment's, not the path's.


rule embedding:
    input:
        ready=P("data_ready"),
        model=P("teacher_model"),
    output:
        P("embedding"),
    params:
        spec=lambda wc, output: spec_json(W.declared_spec(output[0])),
    log:
        P("log_embedding"),
    threads: W.threads
    resources:
        **train_resources("analysis"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()


rule eigen_cam:
    input:
        ready=P("data_ready"),
        model=P("teacher_model"),
    output:
        metrics=P("cam"),
        maps=P("cam_maps"),
    params:
        spec=lambda wc, output: spec_json(W.declared_spec(output.metrics)),
    log:
        P("log_cam"),
    threads: W.threads
    resources:
        **train_resources("analysis"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()
