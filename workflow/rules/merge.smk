# Merge: per-animal tables and figures per video; the cohort summary over all videos.


rule merge:
    input:
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
    log:
        "logs/merge/{video}.log",
    shell:
        "sipec merge {input.store:q} --video-id {wildcards.video} --probe {input.probe:q} "
        "--csv {output.csv:q} --parquet {output.parquet:q} --figure {output.figure:q} > {log} 2>&1"


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
