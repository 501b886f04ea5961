# Stage: MCMI fine-tuning. Every lambda of the grid fine-tunes the MLL teacher once; lambda* is then
# chosen by the KD students trained on the grid teachers (Table 6), or taken from the paper
# (mcmi.lambda_selection.mode: paper). The "MCMI" teacher used by the tables is the lambda* one.


rule mcmi_finetune:
    input:
        ready=res("data/{dataset}.json"),
        mll=res("{dataset}/teachers/{teacher}/MLL/model.pt"),
    output:
        model=res("{dataset}/teachers/{teacher}/MCMI_lam{lam}/model.pt"),
        metrics=res("{dataset}/teachers/{teacher}/MCMI_lam{lam}/metrics.json"),
    params:
        spec=lambda wc: spec_json(W.mcmi_spec(wc.dataset, wc.teacher, wc.lam)),
    log:
        res("logs/{dataset}/teachers/{teacher}/MCMI_lam{lam}.log"),
    threads: W.threads
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
        res("{dataset}/teachers/{teacher}/lambda_star.json"),
    log:
        res("logs/{dataset}/teachers/{teacher}/lambda_star.log"),
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
        model=res("{dataset}/teachers/{teacher}/MCMI/model.pt"),
        metrics=res("{dataset}/teachers/{teacher}/MCMI/metrics.json"),
    params:
        choice=lambda wc: W.selected_teacher_choice(wc.dataset, wc.teacher),
    log:
        res("logs/{dataset}/teachers/{teacher}/MCMI.log"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        mcmi(
            "adopt-teacher {params.choice} --out-model {output.model} "
            "--out-metrics {output.metrics} > {log} 2>&1"
        )
