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
