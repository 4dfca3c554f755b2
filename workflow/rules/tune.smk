# The `tune` target (snakemake tune; not part of `all`): a Ray Tune sweep (random search, ASHA) of each model in
# tuning.models, on the behaviour labels of behaviour.labels, over the search space of the `tune` section of
# config/models/<model>.yaml. Ray runs inside the one job, on its threads (and the GPUs of its allocation).
# Outputs per model in results/tune/<model>/: best_overrides.yaml (YAML list of Hydra override strings),
# trials.csv (one row per trial), best_config.yaml (a Snakemake config file: `snakemake --configfile
# results/tune/<model>/best_config.yaml` trains behaviour.model <model> with behaviour.overrides = the sweep's
# base overrides + the best ones), ray/ (Ray Tune's experiment folder).

TUNING = config["tuning"]
TUNE_DIR = RESULTS / "tune"

for _model in TUNING["models"]:
    if not BEHAVE["labels"]:
        _config_error(f"tuning.models names {_model} but behaviour.labels (the labels to sweep on) is empty")
    if _model == "pose_classifier":
        if not POSE["enabled"]:
            _config_error("tuning.models names pose_classifier but pose.enabled is false: the classifier needs "
                          "keypoints")
        for _entry in BEHAVE["labels"]:
            if not _px_per_cm(_entry["video"]):
                _config_error(f"tuning.models names pose_classifier but video {_entry['video']!r} has no "
                              "px_per_cm: set behaviour.px_per_cm or a px_per_cm column in videos.tsv")


def tune_base_overrides(model):
    """Overrides of every trial: behaviour.overrides when behaviour.model is this model, then tuning.overrides."""
    base = list(BEHAVE["overrides"]) if BEHAVE["model"] == model else []
    return base + list(TUNING["overrides"].get(model, []))


if TUNING["models"]:

    rule tune_model:
        input:
            stores=[RESULTS / e["video"] / f"{e['video']}.zarr" for e in BEHAVE["labels"]],
            labels=[e["labels"] for e in BEHAVE["labels"]],
            positions=[e["positions"] for e in BEHAVE["labels"] if e["positions"]],
            pose=lambda wc: ([p for e in BEHAVE["labels"] for p in pose_stores_of(e["video"])]
                             if wc.model == "pose_classifier" else []),
        output:
            best=TUNE_DIR / "{model}/best_overrides.yaml",
            trials=TUNE_DIR / "{model}/trials.csv",
            config=TUNE_DIR / "{model}/best_config.yaml",
        wildcard_constraints:
            model="|".join(TUNING["models"]),
        params:
            sources=lambda wc: json.dumps(behaviour_sources(with_pose=wc.model == "pose_classifier")),
            behaviours=lambda wc: " ".join(f"'{b}'" for b in (BEHAVE["behaviours"] or [])),
            overrides=lambda wc: " ".join(f"'{o}'" for o in tune_base_overrides(wc.model)),
            num_samples=f"--num-samples {TUNING['num_samples']}" if TUNING["num_samples"] else "",
            out_dir=lambda wc: TUNE_DIR / wc.model,
        threads: TUNING["threads"]
        resources:
            runtime=TUNING["runtime"],
            mem_mb=TUNING["mem_mb"],
            gpu=TUNING["gpus"],
        log:
            "logs/tune/{model}.log",
        shell:
            "sipec tune --model {wildcards.model} --sources {params.sources:q} --behaviours {params.behaviours} "
            "--max-distance {BEHAVE[max_distance]} --overrides {params.overrides} {params.num_samples} "
            "--threads {threads} --workflow-config {output.config:q} --out-dir {params.out_dir:q} > {log} 2>&1"


rule tune:
    input:
        expand(TUNE_DIR / "{model}/best_overrides.yaml", model=TUNING["models"]),
