# Stage: students. A student is a (pair, method, teacher variant, setting, seed); setting is
# "full", "fs<alpha>" (few-shot), "T<temperature>" (KD at that temperature) or "zs" (zero-shot).


# One job per group of students that share (dataset, teacher checkpoint, training subset, seed); the
# teacher runs once per batch for all of them (config student_groups: by pair, by teacher or none).
# Each student's files keep their own paths, so tables and figures are unchanged.
for _group in W.student_groups():

    rule:
        name:
            _group.name
        input:
            **W.group_inputs(_group),
        output:
            W.group_outputs(_group),
        params:
            spec=spec_json(W.group_spec(_group)),
        log:
            P("log_student_group", group=_group.name),
        threads: W.group_threads(_group)
        resources:
            **W.group_resources(_group),
        conda:
            "../../envs/mcmi.yaml"
        shell:
            stage_command()


rule student_vanilla:
    input:
        ready=P("data_ready"),
    output:
        metrics=P("vanilla_metrics"),
        model=P("vanilla_model"),
    params:
        spec=lambda wc: spec_json(W.vanilla_spec(wc.dataset, wc.student, wc.seed)),
    log:
        P("log_vanilla"),
    threads: job_threads
    resources:
        **train_resources("student"),
    conda:
        "../../envs/mcmi.yaml"
    shell:
        stage_command()
