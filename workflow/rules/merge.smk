# Merge: per-animal tables and figures per video; the cohort summary over all videos.


def merge_inputs(wildcards):
    """Identify chunk stores when identification is on, social chunk stores when social events are, pose
    chunk stores when pose estimation is."""
    inputs = {}
    if IDENT["enabled"]:
        inputs["identify"] = identify_stores(wildcards)
    if POSE["enabled"]:
        inputs["pose"] = pose_stores(wildcards)
    if SOCIAL["enabled"]:
        inputs["social"] = social_stores(wildcards)
    if BEHAVE["enabled"]:
        inputs["behave"] = behave_stores(wildcards)
    if PAIR_BEHAVE["enabled"]:
        inputs["behave_pairs"] = pair_behave_stores(wildcards)
    if POS3D["enabled"]:
        inputs["position3d"] = POS3D_MODEL
    return inputs


def merge_args(wildcards, input, output):
    args = []
    if IDENT["enabled"]:
        # getattr: the chunk lists are unknown until the plan checkpoint has run.
        args += ["--identify", *(f"'{p}'" for p in getattr(input, "identify", [])), "--smoothing",
                 IDENT["smoothing"]]
    if POSE["enabled"]:
        args += ["--pose", *(f"'{p}'" for p in getattr(input, "pose", []))]
    if SOCIAL["enabled"]:
        args += ["--social", *(f"'{p}'" for p in getattr(input, "social", [])), "--social-options", f"'{options('social')}'",
                 "--events", f"'{output.events}'"]
    if BEHAVE["enabled"]:
        args += ["--behave", *(f"'{p}'" for p in getattr(input, "behave", [])), "--bouts", f"'{output.bouts}'",
                 "--ethogram", f"'{output.ethogram}'"]
    if PAIR_BEHAVE["enabled"]:
        args += ["--social-behave", *(f"'{p}'" for p in getattr(input, "behave_pairs", [])), "--pair-behaviour",
                 f"'{output.pair_behaviour}'"]
    if POS3D["enabled"]:
        args += ["--position3d", f"'{POS3D_MODEL}'"]
    return " ".join(args)


rule merge:
    input:
        unpack(merge_inputs),
        store=RESULTS / "{video}/{video}.zarr",
        probe=RESULTS / "{video}/probe.json",
    output:
        csv=RESULTS / "{video}/animals.csv",
        parquet=RESULTS / "{video}/animals.parquet",
        figure=report(
            RESULTS / "{video}/trajectories.png",
            caption="../report/trajectories.rst",
            category="Trajectories",
            subcategory="{video}",
        ),
        **({"events": RESULTS / "{video}/social_events.csv"} if SOCIAL["enabled"] else {}),
        **({"bouts": RESULTS / "{video}/bouts.csv",
            "ethogram": report(RESULTS / "{video}/ethogram.png", caption="../report/ethogram.rst",
                               category="Ethograms", subcategory="{video}")} if BEHAVE["enabled"] else {}),
        **({"pair_behaviour": RESULTS / "{video}/pair_behaviour.csv"} if PAIR_BEHAVE["enabled"] else {}),
    params:
        extra=merge_args,
    log:
        "logs/merge/{video}.log",
    shell:
        "sipec merge {input.store:q} --video-id {wildcards.video} --probe {input.probe:q} "
        "--csv {output.csv:q} --parquet {output.parquet:q} --figure {output.figure:q} {params.extra} > {log} 2>&1"


rule summary:
    input:
        tables=expand(RESULTS / "{video}/animals.parquet", video=VIDEO_IDS),
        videos=config["videos"],
    output:
        report(RESULTS / "cohort_summary.csv", caption="../report/summary.rst", category="Cohort"),
    log:
        "logs/summary/summary.log",
    shell:
        "sipec summary {input.tables:q} --videos {input.videos:q} --out {output:q} > {log} 2>&1"


# Time budgets and bout statistics of each video, animal and behaviour, and their mean and s.e.m. per group
# (summary.group_by columns of the videos table; default: group when it has one).
COHORT_BEHAVIOUR = ([RESULTS / "cohort_behaviour.csv", RESULTS / "cohort_groups.csv"] if BEHAVE["enabled"] else [])
_GROUP_BY = config["summary"]["group_by"]
if BEHAVE["enabled"] and _GROUP_BY:
    for _column in _GROUP_BY:
        if _column not in VIDEOS.columns or _column in ("id", "path"):
            _config_error(f"summary.group_by: {config['videos']} has no column {_column!r} to group by (columns: "
                          f"{', '.join(c for c in VIDEOS.columns if c not in ('id', 'path'))})")


rule cohort_behaviour:
    input:
        tables=expand(RESULTS / "{video}/animals.parquet", video=VIDEO_IDS),
        videos=config["videos"],
    output:
        animals=report(RESULTS / "cohort_behaviour.csv", caption="../report/cohort_behaviour.rst",
                       category="Cohort"),
        groups=report(RESULTS / "cohort_groups.csv", caption="../report/cohort_groups.rst", category="Cohort"),
    params:
        group_by=lambda wildcards: "" if _GROUP_BY is None else "--group-by " + " ".join(f"'{c}'" for c in _GROUP_BY),
    log:
        "logs/summary/cohort_behaviour.log",
    shell:
        "sipec cohort-behaviour {input.tables:q} --videos {input.videos:q} {params.group_by} --out {output.animals:q} "
        "--groups {output.groups:q} > {log} 2>&1"
