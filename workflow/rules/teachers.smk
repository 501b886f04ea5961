# Stage: teachers. The MLL teacher (cross-entropy; or a pretrained RepDistiller checkpoint), the
# early-stopped teacher (ES<epochs>), HSAKD's auxiliary heads on a frozen teacher, and the
# measurement of a teacher's accuracy, CMI and LL at a temperature.


rule teacher:
    input:
        unpack(lambda wc: W.teacher_inputs(wc.dataset, wc.teacher, wc.variant)),
    output:
        model=res("{dataset}/teachers/{teacher}/{variant}/model.pt"),
        metrics=res("{dataset}/teachers/{teacher}/{variant}/metrics.json"),
    wildcard_constraints:
        variant="MLL|ES[0-9]+",
    params:
        spec=lambda wc: spec_json(W.teacher_spec(wc.dataset, wc.teacher, wc.variant)),
    log:
        res("logs/{dataset}/teachers/{teacher}/{variant}.log"),
    threads: W.threads
    resources:
        **train_resources("teacher"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()


rule hsakd_heads:
    input:
        ready=res("data/{dataset}.json"),
        model=res("{dataset}/teachers/{teacher}/{variant}/model.pt"),
    output:
        heads=res("{dataset}/teachers/{teacher}/{variant}/hsakd_heads.pt"),
        metrics=res("{dataset}/teachers/{teacher}/{variant}/hsakd_heads.json"),
    params:
        spec=lambda wc: spec_json(W.hsakd_heads_spec(wc.dataset, wc.teacher, wc.variant)),
    log:
        res("logs/{dataset}/teachers/{teacher}/{variant}-hsakd_heads.log"),
    threads: W.threads
    resources:
        **train_resources("hsakd_heads"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()


rule measure:
    input:
        ready=res("data/{dataset}.json"),
        model=res("{dataset}/teachers/{teacher}/{variant}/model.pt"),
    output:
        res("{dataset}/measure/{teacher}/{variant}/T{temp}.json"),
    params:
        spec=lambda wc: spec_json(W.measure_spec(wc.dataset, wc.teacher, wc.variant, wc.temp)),
    log:
        res("logs/{dataset}/measure/{teacher}/{variant}/T{temp}.log"),
    threads: W.threads
    resources:
        **train_resources("measure"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()
