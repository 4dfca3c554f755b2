# Behaviour: BehaveNet (pixels) or the pose-based classifier (keypoints), trained from behaviour labels of tracked
# videos, then one behave job per chunk (BehaveNet reads a halo of n frames around its chunk). Calls, bouts and the
# ethogram raster are made when a video is merged.

if BEHAVE["enabled"] and not BEHAVE["checkpoint"]:

    rule train_behaviour:
        name:
            "train_behavenet" if BEHAVE["model"] == "behavenet" else "train_pose_classifier"
        input:
            stores=[RESULTS / e["video"] / f"{e['video']}.zarr" for e in BEHAVE["labels"]],
            labels=[e["labels"] for e in BEHAVE["labels"]],
            positions=[e["positions"] for e in BEHAVE["labels"] if e["positions"]],
            pose=lambda wc: ([p for e in BEHAVE["labels"] for p in pose_stores_of(e["video"])]
                             if BEHAVE["model"] == "pose_classifier" else []),
        output:
            model=BEHAVE_MODEL,
            metrics=MODELS / f"{BEHAVE['model']}_training.json",
        params:
            command="train-behavenet" if BEHAVE["model"] == "behavenet" else "train-pose-classifier",
            sources=lambda wc: json.dumps(behaviour_sources(with_pose=BEHAVE["model"] == "pose_classifier")),
            behaviours=lambda wc: " ".join(f"'{b}'" for b in (BEHAVE["behaviours"] or [])),
            overrides=lambda wc: " ".join(f"'{o}'" for o in BEHAVE["overrides"]),
        threads: 2
        log:
            f"logs/train/{BEHAVE['model']}.log",
        shell:
            "sipec {params.command} --sources {params.sources:q} --behaviours {params.behaviours} "
            "--max-distance {BEHAVE[max_distance]} --overrides {params.overrides} --metrics {output.metrics:q} "
            "--out {output.model:q} > {log} 2>&1"


def behave_inputs(wildcards):
    if BEHAVE["model"] == "pose_classifier":
        return {"pose": pose_stores(wildcards)}
    return {}


def behave_args(wildcards, input):
    if BEHAVE["model"] != "pose_classifier":
        return ""
    pose = " ".join(f"'{p}'" for p in getattr(input, "pose", []))
    return f"--pose {pose} --px-per-cm {_px_per_cm(wildcards.video)}"


rule behave:
    input:
        unpack(behave_inputs),
        store=RESULTS / "{video}/{video}.zarr",
        plan=RESULTS / "{video}/plan.json",
        checkpoint=BEHAVE_MODEL,
    output:
        directory(RESULTS / "{video}/behave/chunk_{chunk}.zarr"),
    params:
        extra=behave_args,
    threads: 2
    log:
        "logs/behave/{video}/chunk_{chunk}.log",
    shell:
        "sipec behave --store {input.store:q} --plan {input.plan:q} --chunk {wildcards.chunk} "
        "--checkpoint {input.checkpoint:q} {params.extra} --out {output:q} > {log} 2>&1"
