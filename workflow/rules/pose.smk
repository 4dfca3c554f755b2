# Pose estimation (PoseNet or LEAP, top-down on each animal's centre of mass): one job per chunk reading
# the consolidated video store; the merged keypoints of a video exported for SLEAP and DeepLabCut
# and to NWB (ndx-pose) for neuroscience archives.

POSE_EXPORTS = ([RESULTS / f"{v}/{name}" for v in VIDEO_IDS for name in ("pose.slp", "pose_dlc.csv", "pose.nwb")]
                if POSE["enabled"] else [])


rule pose:
    input:
        video=video_path,
        store=RESULTS / "{video}/{video}.zarr",
        plan=RESULTS / "{video}/plan.json",
        checkpoint=POSE_MODEL,
    output:
        directory(RESULTS / "{video}/pose/chunk_{chunk}.zarr"),
    threads: 2
    log:
        "logs/pose/{video}/chunk_{chunk}.log",
    shell:
        "sipec pose {input.video:q} --store {input.store:q} --plan {input.plan:q} --chunk {wildcards.chunk} "
        "--checkpoint {input.checkpoint:q} --out {output:q} > {log} 2>&1"


rule export_pose:
    input:
        table=RESULTS / "{video}/animals.parquet",
        video=video_path,
    output:
        slp=RESULTS / "{video}/pose.slp",
        dlc=RESULTS / "{video}/pose_dlc.csv",
    log:
        "logs/export_pose/{video}.log",
    shell:
        "sipec export-pose {input.table:q} --video {input.video:q} --slp {output.slp:q} --dlc-csv {output.dlc:q} "
        "> {log} 2>&1"


rule export_nwb:
    input:
        table=RESULTS / "{video}/animals.parquet",
        probe=RESULTS / "{video}/probe.json",
        videos=config["videos"],
        video=video_path,
    output:
        RESULTS / "{video}/pose.nwb",
    log:
        "logs/export_nwb/{video}.log",
    shell:
        "sipec export-nwb {input.table:q} --video-id {wildcards.video} --probe {input.probe:q} "
        "--videos {input.videos:q} --video {input.video:q} --out {output:q} > {log} 2>&1"
