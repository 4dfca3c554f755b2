# The `evaluate` target: cross-validation and label-count ablations of the trained models, and
# identity accuracy of the merged tables on videos with identity labels (not part of `all`).

EVAL = config["evaluation"]
EVALUATION = RESULTS / "evaluation"
EVAL_TARGETS = []

if SEG["segnet"]["labels"]:
    EVAL_TARGETS.append(EVALUATION / "segnet_cv.csv")

    rule evaluate_segnet:
        input:
            labels=SEG["segnet"]["labels"],
            video=[resolve_video(SEG["segnet"]["video"])] if SEG["segnet"]["video"] else [],
        output:
            cv=EVALUATION / "segnet_cv.csv",
            ablation=report(
                EVALUATION / "segnet_ablation.csv",
                caption="../report/segnet_ablation_table.rst",
                category="Evaluation",
                subcategory="SegNet",
            ),
            figure=report(
                EVALUATION / "segnet_ablation.png",
                caption="../report/segnet_ablation.rst",
                category="Evaluation",
                subcategory="SegNet",
            ),
        params:
            video=lambda wc, input: f"--video '{input.video[0]}'" if input.video else "",
            counts=" ".join(map(str, EVAL["segnet_label_counts"])),
            overrides=lambda wc: " ".join(f"'{o}'" for o in SEG["segnet"]["overrides"]),
        threads: 2
        log:
            "logs/evaluate/segnet.log",
        shell:
            "sipec evaluate-segnet --labels {input.labels:q} {params.video} --folds {EVAL[folds]} "
            "--frames {EVAL[segnet_frames]} --label-counts {params.counts} --overrides {params.overrides} "
            "--cv {output.cv:q} --ablation {output.ablation:q} --figure {output.figure:q} > {log} 2>&1"


if EVAL["pose_models"]:
    EVAL_TARGETS += [EVALUATION / f"pose_{m}_cv.csv" for m in EVAL["pose_models"]]
    EVAL_TARGETS.append(EVALUATION / "pose_ablation.png")

    rule evaluate_pose:
        input:
            labels=POSE["labels"],
            video=[resolve_video(POSE["video"])] if POSE["video"] else [],
        output:
            cv=EVALUATION / "pose_{model}_cv.csv",
            ablation=report(
                EVALUATION / "pose_{model}_ablation.csv",
                caption="../report/pose_ablation_table.rst",
                category="Evaluation",
                subcategory="Pose",
            ),
        wildcard_constraints:
            model="|".join(EVAL["pose_models"]),
        params:
            video=lambda wc, input: f"--video '{input.video[0]}'" if input.video else "",
            counts=" ".join(map(str, EVAL["pose_label_counts"])),
            ablation_folds=(f"--ablation-folds {EVAL['pose_ablation_folds']}" if EVAL["pose_ablation_folds"]
                            else ""),
            overrides=lambda wc: " ".join(f"'{o}'" for o in EVAL["pose_models"][wc.model]),
        threads: 1
        log:
            "logs/evaluate/pose_{model}.log",
        shell:
            "sipec evaluate-pose --labels {input.labels:q} --model {wildcards.model} {params.video} "
            "--folds {EVAL[folds]} --label-counts {params.counts} --radius {EVAL[pose_radius]} "
            "{params.ablation_folds} --overrides {params.overrides} --cv {output.cv:q} --ablation {output.ablation:q} > {log} 2>&1"

    rule pose_ablation_figure:
        input:
            [EVALUATION / f"pose_{m}_ablation.csv" for m in EVAL["pose_models"]],
        output:
            report(EVALUATION / "pose_ablation.png", caption="../report/pose_ablation.rst", category="Evaluation",
                   subcategory="Pose"),
        log:
            "logs/evaluate/pose_ablation_figure.log",
        shell:
            "sipec pose-ablation-figure {input:q} --radius {EVAL[pose_radius]} --figure {output:q} > {log} 2>&1"


if IDENT["enabled"] and EVAL["identity_truth"]:
    EVAL_TARGETS += [EVALUATION / f"identity_{v}.json" for v in EVAL["identity_truth"]]

    rule evaluate_identity:
        input:
            store=RESULTS / "{video}/{video}.zarr",
            probe=RESULTS / "{video}/probe.json",
            identify=identify_stores,
            truth=lambda wc: EVAL["identity_truth"][wc.video],
        output:
            report(EVALUATION / "identity_{video}.json", caption="../report/identity.rst", category="Evaluation",
                   subcategory="IdNet"),
        log:
            "logs/evaluate/identity_{video}.log",
        shell:
            "sipec evaluate-identity --video-id {wildcards.video} --store {input.store:q} --probe {input.probe:q} "
            "--identify {input.identify:q} --truth {input.truth:q} --out {output:q} > {log} 2>&1"


IDNET_ABLATION = bool(IDENT["enabled"] and not IDENT["model"] and IDENT["labels"] and EVAL["identity_truth"]
                      and EVAL["idnet_label_counts"])
if IDNET_ABLATION:
    EVAL_TARGETS.append(EVALUATION / "idnet_ablation.csv")

    rule evaluate_idnet:
        input:
            videos=[resolve_video(e["video"]) for e in IDENT["labels"]],
            stores=[RESULTS / e["video"] / f"{e['video']}.zarr" for e in IDENT["labels"]],
            labels=[e["labels"] for e in IDENT["labels"]],
            test_stores=[RESULTS / v / f"{v}.zarr" for v in EVAL["identity_truth"]],
            truth=list(EVAL["identity_truth"].values()),
        output:
            ablation=report(
                EVALUATION / "idnet_ablation.csv",
                caption="../report/idnet_ablation_table.rst",
                category="Evaluation",
                subcategory="IdNet",
            ),
            figure=report(
                EVALUATION / "idnet_ablation.png",
                caption="../report/idnet_ablation.rst",
                category="Evaluation",
                subcategory="IdNet",
            ),
        params:
            sources=lambda wc: json.dumps(idnet_sources()),
            tests=lambda wc: json.dumps([
                {"video_id": v, "video": str(resolve_video(v)), "store": str(RESULTS / v / f"{v}.zarr"),
                 "truth": t} for v, t in EVAL["identity_truth"].items()]),
            counts=" ".join(map(str, EVAL["idnet_label_counts"])),
            overrides=lambda wc: " ".join(f"'{o}'" for o in IDENT["overrides"]),
        threads: 2
        log:
            "logs/evaluate/idnet_ablation.log",
        shell:
            "sipec evaluate-idnet --sources {params.sources:q} --tests {params.tests:q} "
            "--label-counts {params.counts} --repeats {EVAL[idnet_repeats]} --overrides {params.overrides} "
            "--out {output.ablation:q} --figure {output.figure:q} > {log} 2>&1"


rule evaluate:
    input:
        EVAL_TARGETS,
