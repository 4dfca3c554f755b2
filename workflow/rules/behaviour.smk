# Behaviour: BehaveNet (pixels) or the pose-based classifier (keypoints), trained from behaviour labels of tracked
# videos, then one behave job per chunk (BehaveNet reads a halo of n frames around its chunk). Calls, bouts and the
# ethogram raster are made when a video is merged.

if BEHAVE["enabled"] and not BEHAVE["checkpoint"] and BEHAVE["model"] != "deepethogram":

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


# DeepEthogram (behaviour.model: deepethogram): flow generator, feature extractor and sequence model trained in
# series on the animals' crops, features extracted per chunk, and the sequence model run by behave.
DEG_FLOW_MODEL = MODELS / "deg_flow.pt"
DEG_FEATURES_MODEL = MODELS / "deg_features.pt"

if BEHAVE["enabled"] and not BEHAVE["checkpoint"] and BEHAVE["model"] == "deepethogram":

    rule train_flow:
        input:
            stores=[RESULTS / e["video"] / f"{e['video']}.zarr" for e in BEHAVE["labels"]],
        output:
            model=DEG_FLOW_MODEL,
            metrics=MODELS / "deg_flow_training.json",
            figure=report(MODELS / "deg_flow.png", caption="../report/deg_flow.rst", category="DeepEthogram"),
        params:
            sources=lambda wc: json.dumps(behaviour_sources()),
            overrides=lambda wc: " ".join(f"'{o}'" for o in BEHAVE["overrides"]),
        threads: 2
        log:
            "logs/train/deg_flow.log",
        shell:
            "sipec train-flow --sources {params.sources:q} --overrides {params.overrides} "
            "--metrics {output.metrics:q} --figure {output.figure:q} --out {output.model:q} > {log} 2>&1"

    rule train_features:
        input:
            stores=[RESULTS / e["video"] / f"{e['video']}.zarr" for e in BEHAVE["labels"]],
            labels=[e["labels"] for e in BEHAVE["labels"]],
            positions=[e["positions"] for e in BEHAVE["labels"] if e["positions"]],
            flow=DEG_FLOW_MODEL,
        output:
            model=DEG_FEATURES_MODEL,
            metrics=MODELS / "deg_features_training.json",
        params:
            sources=lambda wc: json.dumps(behaviour_sources()),
            behaviours=lambda wc: " ".join(f"'{b}'" for b in (BEHAVE["behaviours"] or [])),
            overrides=lambda wc: " ".join(f"'{o}'" for o in BEHAVE["overrides"]),
        threads: 2
        log:
            "logs/train/deg_features.log",
        shell:
            "sipec train-features --sources {params.sources:q} --flow {input.flow:q} "
            "--behaviours {params.behaviours} --max-distance {BEHAVE[max_distance]} --overrides {params.overrides} "
            "--metrics {output.metrics:q} --out {output.model:q} > {log} 2>&1"

    rule train_sequence:
        input:
            stores=[RESULTS / e["video"] / f"{e['video']}.zarr" for e in BEHAVE["labels"]],
            labels=[e["labels"] for e in BEHAVE["labels"]],
            positions=[e["positions"] for e in BEHAVE["labels"] if e["positions"]],
            features=lambda wc: [p for e in BEHAVE["labels"] for p in deg_feature_stores_of(e["video"])],
        output:
            model=BEHAVE_MODEL,
            metrics=MODELS / "deepethogram_training.json",
        params:
            sources=lambda wc: json.dumps(behaviour_sources(with_features=True)),
            behaviours=lambda wc: " ".join(f"'{b}'" for b in (BEHAVE["behaviours"] or [])),
            overrides=lambda wc: " ".join(f"'{o}'" for o in BEHAVE["overrides"]),
        threads: 2
        log:
            "logs/train/deepethogram.log",
        shell:
            "sipec train-sequence --sources {params.sources:q} --behaviours {params.behaviours} "
            "--max-distance {BEHAVE[max_distance]} --overrides {params.overrides} --metrics {output.metrics:q} "
            "--out {output.model:q} > {log} 2>&1"


rule extract_features:
    input:
        store=RESULTS / "{video}/{video}.zarr",
        plan=RESULTS / "{video}/plan.json",
        flow=DEG_FLOW_MODEL,
        features=DEG_FEATURES_MODEL,
    output:
        directory(RESULTS / "{video}/deg_features/chunk_{chunk}.zarr"),
    threads: 2
    log:
        "logs/extract_features/{video}/chunk_{chunk}.log",
    shell:
        "sipec extract-features --store {input.store:q} --plan {input.plan:q} --chunk {wildcards.chunk} "
        "--flow {input.flow:q} --features {input.features:q} --out {output:q} > {log} 2>&1"


def behave_inputs(wildcards):
    if BEHAVE["model"] == "pose_classifier":
        return {"pose": pose_stores(wildcards)}
    if BEHAVE["model"] == "deepethogram":
        return {"features": deg_feature_stores_of(wildcards.video)}
    return {}


def behave_args(wildcards, input):
    if BEHAVE["model"] == "deepethogram":
        return "--features " + " ".join(f"'{p}'" for p in getattr(input, "features", []))
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


# Pair behaviour (SIPEC): BehaveNet on the pair crops of the social events, trained from pair labels, then one
# behave_pairs job per chunk (its halo comes from the neighbouring social chunk stores).

if PAIR_BEHAVE["enabled"] and not PAIR_BEHAVE["checkpoint"]:

    rule train_behavenet_pairs:
        input:
            stores=[RESULTS / e["video"] / f"{e['video']}.zarr" for e in PAIR_BEHAVE["labels"]],
            social=lambda wc: [p for e in PAIR_BEHAVE["labels"] for p in social_stores_of(e["video"])],
            labels=[e["labels"] for e in PAIR_BEHAVE["labels"]],
            positions=[e["positions"] for e in PAIR_BEHAVE["labels"]],
        output:
            model=PAIR_BEHAVE_MODEL,
            metrics=MODELS / "behavenet_pairs_training.json",
        params:
            sources=lambda wc: json.dumps(pair_behaviour_sources()),
            behaviours=lambda wc: " ".join(f"'{b}'" for b in (PAIR_BEHAVE["behaviours"] or [])),
            overrides=lambda wc: " ".join(f"'{o}'" for o in PAIR_BEHAVE["overrides"]),
        threads: 2
        log:
            "logs/train/behavenet_pairs.log",
        shell:
            "sipec train-behavenet --pairs --sources {params.sources:q} --behaviours {params.behaviours} "
            "--max-distance {BEHAVE[max_distance]} --overrides {params.overrides} --metrics {output.metrics:q} "
            "--out {output.model:q} > {log} 2>&1"


rule behave_pairs:
    input:
        social=social_stores,
        store=RESULTS / "{video}/{video}.zarr",
        plan=RESULTS / "{video}/plan.json",
        checkpoint=PAIR_BEHAVE_MODEL,
    output:
        directory(RESULTS / "{video}/behave_pairs/chunk_{chunk}.zarr"),
    threads: 2
    log:
        "logs/behave_pairs/{video}/chunk_{chunk}.log",
    shell:
        "sipec behave-pairs --social {input.social:q} --store {input.store:q} --plan {input.plan:q} "
        "--chunk {wildcards.chunk} --checkpoint {input.checkpoint:q} --out {output:q} > {log} 2>&1"
