# Stage: MCMI fine-tuning. Every lambda of the grid fine-tunes the MLL teacher once; lambda* is then
# chosen by the KD students trained on the grid teachers (Table 6), or taken from the paper
# (mcmi.lambda_selection.mode: paper). The "MCMI" teacher used by the tables is the lambda* one.


rule mcmi_finetune:
    input:
        ready=P("data_ready"),
        mll=P("teacher_model", variant="MLL"),
    output:
        model=P("teacher_model", variant="MCMI_lam{lam}"),
        metrics=P("teacher_metrics", variant="MCMI_lam{lam}"),
    params:
        spec=lambda wc: spec_json(W.mcmi_spec(wc.dataset, wc.teacher, wc.lam)),
    log:
        P("log_teacher", variant="MCMI_lam{lam}"),
    threads: job_threads
    resources:
        **train_resources("mcmi"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()


rule select_lambda:
    input:
        lambda wc: W.selection_inputs(wc.dataset, wc.teacher),
    output:
        P("lambda_star"),
    log:
        P("log_lambda_star"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        mcmi(
            "select-lambda --out {output} --teacher {wildcards.teacher} "
            "--dataset {wildcards.dataset} {input} > {log} 2>&1"
        )


rule mcmi_selected:
    input:
        unpack(lambda wc: W.selected_teacher_inputs(wc.dataset, wc.teacher)),
    output:
        model=P("teacher_model", variant="MCMI"),
        metrics=P("teacher_metrics", variant="MCMI"),
    params:
        choice=lambda wc: W.selected_teacher_choice(wc.dataset, wc.teacher),
    log:
        P("log_teacher", variant="MCMI"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        mcmi(
            "adopt-teacher --models {input.models} --metrics {input.metrics} {params.choice} "
            "--out-model {output.model} --out-metrics {output.metrics} > {log} 2>&1"
        )
