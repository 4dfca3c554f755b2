# Segmentation: a background model per video, then one job per chunk writing its own Zarr store.


rule background:
    input:
        video=video_path,
        probe=RESULTS / "{video}/probe.json",
    output:
        RESULTS / "{video}/background.npy",
    params:
        samples=config["segmentation"]["classical"]["background_samples"],
    log:
        "logs/background/{video}.log",
    shell:
        "sipec background {input.video:q} --probe {input.probe:q} --samples {params.samples} "
        "--out {output:q} > {log} 2>&1"


rule segment:
    input:
        video=video_path,
        probe=RESULTS / "{video}/probe.json",
        plan=RESULTS / "{video}/plan.json",
        background=RESULTS / "{video}/background.npy",
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
        "--n-animals {params.n_animals} --options {params.options:q} --tracking {params.tracking:q} "
        "--out {output:q} > {log} 2>&1"
