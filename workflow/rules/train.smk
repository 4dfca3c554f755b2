# Training: models the inference rules depend on. Skipped when a trained checkpoint is configured.


if SEGNET and not SEG["segnet"]["model"]:

    rule train_segnet:
        input:
            labels=SEG["segnet"]["labels"],
            video=[resolve_video(SEG["segnet"]["video"])] if SEG["segnet"]["video"] else [],
        output:
            model=MODELS / "segnet.pt",
            metrics=MODELS / "segnet_training.json",
        params:
            video=lambda wc, input: f"--video '{input.video[0]}'" if input.video else "",
            frames=lambda wc: "--frames {} {}".format(*SEG["segnet"]["frames"]) if SEG["segnet"]["frames"] else "",
            overrides=lambda wc: " ".join(f"'{o}'" for o in SEG["segnet"]["overrides"]),
        threads: 2
        log:
            "logs/train/segnet.log",
        shell:
            "sipec train-segnet --labels {input.labels:q} {params.video} {params.frames} "
            "--overrides {params.overrides} --metrics {output.metrics:q} --out {output.model:q} > {log} 2>&1"


if IDENT["enabled"] and not IDENT["model"]:

    rule train_idnet:
        input:
            videos=[resolve_video(e["video"]) for e in IDENT["labels"]],
            stores=[RESULTS / e["video"] / f"{e['video']}.zarr" for e in IDENT["labels"]],
            labels=[e["labels"] for e in IDENT["labels"]],
        output:
            model=MODELS / "idnet.pt",
            metrics=MODELS / "idnet_training.json",
        params:
            sources=lambda wc: json.dumps(idnet_sources()),
            overrides=lambda wc: " ".join(f"'{o}'" for o in IDENT["overrides"]),
        threads: 2
        log:
            "logs/train/idnet.log",
        shell:
            "sipec train-idnet --sources {params.sources:q} --overrides {params.overrides} "
            "--metrics {output.metrics:q} --out {output.model:q} > {log} 2>&1"


if POSE["enabled"] and not POSE["checkpoint"]:

    rule train_pose:
        input:
            labels=POSE["labels"],
            video=[resolve_video(POSE["video"])] if POSE["video"] else [],
        output:
            model=POSE_MODEL,
            metrics=MODELS / f"{POSE['model']}_training.json",
        params:
            video=lambda wc, input: f"--video '{input.video[0]}'" if input.video else "",
            frames=lambda wc: "--frames {} {}".format(*POSE["frames"]) if POSE["frames"] else "",
            overrides=lambda wc: " ".join(f"'{o}'" for o in POSE["overrides"]),
        threads: 2
        log:
            "logs/train/pose.log",
        shell:
            "sipec train-pose --labels {input.labels:q} --model {POSE[model]} {params.video} {params.frames} "
            "--overrides {params.overrides} --metrics {output.metrics:q} --out {output.model:q} > {log} 2>&1"


if POS3D["enabled"] and not POS3D["model"]:

    rule train_position3d:
        input:
            stores=[RESULTS / e["video"] / f"{e['video']}.zarr" for e in POS3D["labels"]],
            labels=[e["labels"] for e in POS3D["labels"]],
            positions=[e["positions"] for e in POS3D["labels"] if e["positions"]],
        output:
            model=POS3D_MODEL,
            metrics=report(MODELS / "position3d_cv.json", caption="../report/position3d.rst", category="3D position"),
        params:
            sources=lambda wc: json.dumps(position3d_sources()),
            overrides=lambda wc: " ".join(f"'{o}'" for o in POS3D["overrides"]),
        log:
            "logs/train/position3d.log",
        shell:
            "sipec train-position3d --sources {params.sources:q} --overrides {params.overrides} "
            "--max-distance {POS3D[max_distance]} --metrics {output.metrics:q} --out {output.model:q} > {log} 2>&1"
