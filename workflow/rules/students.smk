# Stage: students. One job per (pair, method, teacher variant, setting, seed); setting is
# "full", "fs<alpha>" (few-shot), "T<temperature>" (KD at that temperature) or "zs" (zero-shot).


rule student:
    input:
        unpack(lambda wc: W.student_inputs(wc)),
    output:
        metrics=res("{dataset}/students/{teacher}-{student}/{method}/{variant}/{setting}/seed{seed}/metrics.json"),
        model=res("{dataset}/students/{teacher}-{student}/{method}/{variant}/{setting}/seed{seed}/model.pt"),
    params:
        spec=lambda wc: spec_json(
            W.student_spec(wc.dataset, wc.teacher, wc.student, wc.method, wc.variant, wc.setting, wc.seed)
        ),
    log:
        res("logs/{dataset}/students/{teacher}-{student}/{method}/{variant}/{setting}/seed{seed}.log"),
    threads: W.threads
    resources:
        **train_resources("student"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()


rule student_vanilla:
    input:
        ready=res("data/{dataset}.json"),
    output:
        metrics=res("{dataset}/students/vanilla/{student}/seed{seed}/metrics.json"),
        model=res("{dataset}/students/vanilla/{student}/seed{seed}/model.pt"),
    params:
        spec=lambda wc: spec_json(W.vanilla_spec(wc.dataset, wc.student, wc.seed)),
    log:
        res("logs/{dataset}/students/vanilla/{student}/seed{seed}.log"),
    threads: W.threads
    resources:
        **train_resources("student"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()
