# Segmentation: a background model and calibration per video, then one job per chunk writing its own Zarr store.


rule background:
    input:
        video=video_path,
        probe=RESULTS / "{video}/probe.json",
    output:
        background=RESULTS / "{video}/background.npy",
        calibration=RESULTS / "{video}/segmenter.json",
    params:
        options=lambda wc: options("segmentation", "classical"),
    log:
        "logs/background/{video}.log",
    shell:
        "sipec background {input.video:q} --probe {input.probe:q} --options {params.options:q} "
        "--out {output.background:q} --calibration {output.calibration:q} > {log} 2>&1"


rule segment:
    input:
        video=video_path,
        probe=RESULTS / "{video}/probe.json",
        plan=RESULTS / "{video}/plan.json",
        background=RESULTS / "{video}/background.npy",
        calibration=RESULTS / "{video}/segmenter.json",
    output:
        directory(RESULTS / "{video}/segment/chunk_{chunk}.zarr"),
    params:
        n_animals=n_animals,
        options=lambda wc: options("segmentation"),
        tracking=lambda wc: options("tracking"),
    log:
        "logs/segment/{video}/chunk_{chunk}.log",
    shell:
        "sipec segment {input.video:q} --video-id {wildcards.video} --probe {input.probe:q} "
        "--plan {input.plan:q} --chunk {wildcards.chunk} --background {input.background:q} "
        "--calibration {input.calibration:q} "
        "--n-animals {params.n_animals} --options {params.options:q} --tracking {params.tracking:q} "
        "--out {output:q} > {log} 2>&1"
