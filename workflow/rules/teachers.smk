# Stage: teachers. The MLL teacher (cross-entropy; or a pretrained checkpoint: RepDistiller's format,
# or torchvision's weights), the early-stopped teacher (ES<epochs>), HSAKD's auxiliary heads on a
# frozen teacher, and the measurement of a teacher's accuracy, CMI and LL at a temperature.


# torchvision's weights of a pretrained teacher (teachers.pretrained: torchvision:<WEIGHTS>): fetched
# into torch's hub cache on the submitting node (compute nodes often have no network) with the hash
# check, or found there; the output records the file and its SHA-256 (mcmi.models.pretrained).
from mcmi.models.pretrained import fetch_and_record  # noqa: E402


rule pretrained_weights:
    output:
        P("pretrained_weights"),
    log:
        P("log_pretrained_weights"),
    localrule: True
    run:
        fetch_and_record(W.weights_of(wildcards.weights), output[0], log[0])


rule teacher:
    input:
        unpack(lambda wc: W.teacher_inputs(wc.dataset, wc.teacher, wc.variant)),
    output:
        model=P("teacher_model"),
        metrics=P("teacher_metrics"),
    wildcard_constraints:
        variant=TRAINED_TEACHER_VARIANT,
    params:
        spec=lambda wc: spec_json(W.teacher_spec(wc.dataset, wc.teacher, wc.variant)),
    log:
        P("log_teacher"),
    threads: job_threads
    resources:
        **train_resources("teacher"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()


rule hsakd_heads:
    input:
        ready=P("data_ready"),
        model=P("teacher_model"),
    output:
        heads=P("hsakd_heads"),
        metrics=P("hsakd_heads_metrics"),
    params:
        spec=lambda wc: spec_json(W.hsakd_heads_spec(wc.dataset, wc.teacher, wc.variant)),
    log:
        P("log_hsakd_heads"),
    threads: job_threads
    resources:
        **train_resources("hsakd_heads"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()


rule measure:
    input:
        ready=P("data_ready"),
        model=P("teacher_model"),
    output:
        P("measure"),
    params:
        spec=lambda wc: spec_json(W.measure_spec(wc.dataset, wc.teacher, wc.variant, wc.temp)),
    log:
        P("log_measure"),
    threads: job_threads
    resources:
        **train_resources("measure"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()


# Per-class CMI of a teacher over a few classes' images (Table 8); the classes and split are the
# experiment's, so the spec comes from its declaration (W.declared_spec of the output).
rule class_cmi:
    input:
        ready=P("data_ready"),
        model=P("teacher_model"),
    output:
        P("class_cmi"),
    params:
        spec=lambda wc, output: spec_json(W.declared_spec(output[0])),
    log:
        P("log_class_cmi"),
    threads: W.threads
    resources:
        **train_resources("analysis"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()
