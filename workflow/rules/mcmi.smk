# Stage: MCMI fine-tuning. Every lambda of the grid fine-tunes the MLL teacher once; lambda* is then
# chosen by the KD students trained on the grid teachers (Table 6), or taken from the paper
# (mcmi.lambda_selection.mode: paper). The "MCMI" teacher used by the tables is the lambda* one.
# The same rule fine-tunes the MLL teacher with the MCMI recipe but another regulariser (Figure 7:
# ENT<beta>, LS<eps>, LSKL<eps>w<weight>), and a teacher of a labelled subset (Figure 9: the variant's
# _lab<count>s<seed>) from the MLL teacher of that subset.


rule mcmi_finetune:
    input:
        ready=P("data_ready"),
        mll=lambda wc: W.teacher_model(wc.dataset, wc.teacher, Variant.parse(wc.variant).parent),
    output:
        model=P("teacher_model"),
        metrics=P("teacher_metrics"),
    wildcard_constraints:
        variant=FINETUNED_TEACHER_VARIANT,
    params:
        spec=lambda wc: spec_json(W.finetune_spec(wc.dataset, wc.teacher, wc.variant)),
    log:
        P("log_teacher"),
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
