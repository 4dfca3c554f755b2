# The `cv` target: cross-validation of the behaviour models as rules (not part of `all`). Folds are defined once over
# the labelled frames of behaviour.labels; one training-and-scoring job per model and fold; an aggregate per model.

CV = config["cv"]
CV_DIR = RESULTS / "cv"
CV_TARGETS = []

if CV["models"]:
    if not BEHAVE["labels"]:
        _config_error("cv.models is set but behaviour.labels (the labels to cross-validate on) is empty")
    if "pose_classifier" in CV["models"] and not POSE["enabled"]:
        _config_error("cv.models has pose_classifier but pose.enabled is false: the classifier needs keypoints")
    if CV["scheme"] == "group":
        if not CV["group_by"]:
            _config_error("cv.scheme is group but cv.group_by (a videos.tsv column) is not set")
        if CV["group_by"] not in VIDEOS.columns:
            _config_error(f"cv.group_by: {config['videos']} has no column {CV['group_by']!r} "
                          f"(columns: {', '.join(VIDEOS.columns)})")
    from sipec_models.crossval import n_folds as _n_folds

    _CV_VIDEOS = list(dict.fromkeys(e["video"] for e in BEHAVE["labels"]))
    CV_GROUPS = ({v: str(VIDEOS.loc[v, CV["group_by"]]) for v in _CV_VIDEOS} if CV["scheme"] == "group" else {})
    try:
        CV_FOLDS = list(range(_n_folds(CV["scheme"], CV["folds"], _CV_VIDEOS, CV_GROUPS)))
    except ValueError as err:
        _config_error(f"cv: {err}")
    CV_TARGETS = [CV_DIR / "summary.csv"]

    def cv_overrides(model):
        return (BEHAVE["overrides"] if model == BEHAVE["model"] else []) + CV["models"][model]

    rule cv_folds:
        input:
            stores=[RESULTS / v / f"{v}.zarr" for v in _CV_VIDEOS],
            labels=[e["labels"] for e in BEHAVE["labels"]],
            positions=[e["positions"] for e in BEHAVE["labels"] if e["positions"]],
        output:
            CV_DIR / "folds.json",
        params:
            sources=lambda wc: json.dumps(behaviour_sources()),
            groups=lambda wc: json.dumps(CV_GROUPS),
            behaviours=lambda wc: " ".join(f"'{b}'" for b in (BEHAVE["behaviours"] or [])),
        log:
            "logs/cv/folds.log",
        shell:
            "sipec cv-folds --sources {params.sources:q} --scheme {CV[scheme]} --folds {CV[folds]} "
            "--groups {params.groups:q} --purge-frames {CV[purge_frames]} --seed {CV[seed]} "
            "--behaviours {params.behaviours} --max-distance {BEHAVE[max_distance]} --out {output:q} > {log} 2>&1"

    rule cv_fold:
        input:
            folds=CV_DIR / "folds.json",
            pose=lambda wc: ([p for v in _CV_VIDEOS for p in pose_stores_of(v)] if wc.model == "pose_classifier"
                             else []),
        output:
            CV_DIR / "{model}" / "fold_{fold}{labels}.json",
        wildcard_constraints:
            model="|".join(CV["models"]),
            fold=r"\d+",
            labels=r"(_labels_0\.\d+)?",
        params:
            sources=lambda wc: json.dumps(behaviour_sources(with_pose=wc.model == "pose_classifier")),
            behaviours=lambda wc: " ".join(f"'{b}'" for b in (BEHAVE["behaviours"] or [])),
            overrides=lambda wc: " ".join(f"'{o}'" for o in cv_overrides(wc.model)),
            fraction=lambda wc: wc.labels.removeprefix("_labels_") or "1.0",
        threads: 2
        log:
            "logs/cv/{model}_fold_{fold}{labels}.log",
        shell:
            "sipec cv-fold --model {wildcards.model} --folds {input.folds:q} --fold {wildcards.fold} "
            "--sources {params.sources:q} --behaviours {params.behaviours} --max-distance {BEHAVE[max_distance]} "
            "--overrides {params.overrides} --label-fraction {params.fraction} --out {output:q} > {log} 2>&1"

    rule cv_aggregate:
        input:
            [CV_DIR / m / f"fold_{i}.json" for m in CV["models"] for i in CV_FOLDS],
            [CV_DIR / m / f"fold_{i}_labels_{f}.json" for m in CV["models"] for i in CV_FOLDS
             for f in CV["label_fractions"]],
        output:
            csv=report(CV_DIR / "summary.csv", caption="../report/cv.rst", category="Evaluation",
                       subcategory="Cross-validation"),
            json=CV_DIR / "summary.json",
            ablation=CV_DIR / "ablation.csv",
        log:
            "logs/cv/aggregate.log",
        shell:
            "sipec cv-aggregate {input:q} --out {output.json:q} --csv {output.csv:q} --ablation {output.ablation:q} "
            "> {log} 2>&1"


rule cv:
    input:
        CV_TARGETS,
