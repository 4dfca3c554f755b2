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


def segmenter_inputs(wildcards):
    """SegNet: the model; classical: the background and calibration of the video."""
    if SEGNET:
        return {"model": SEGNET_MODEL}
    return {
        "background": RESULTS / f"{wildcards.video}/background.npy",
        "calibration": RESULTS / f"{wildcards.video}/segmenter.json",
    }


def segmenter_args(wildcards, input):
    if SEGNET:
        return f"--model '{input.model}'"
    return f"--background '{input.background}' --calibration '{input.calibration}'"


rule segment:
    input:
        unpack(segmenter_inputs),
        video=video_path,
        probe=RESULTS / "{video}/probe.json",
        plan=RESULTS / "{video}/plan.json",
    output:
        directory(RESULTS / "{video}/segment/chunk_{chunk}.zarr"),
    params:
        n_animals=n_animals,
        options=lambda wc: options("segmentation"),
        tracking=lambda wc: options("tracking"),
        segmenter=segmenter_args,
    log:
        "logs/segment/{video}/chunk_{chunk}.log",
    shell:
        "sipec segment {input.video:q} --video-id {wildcards.video} --probe {input.probe:q} "
        "--plan {input.plan:q} --chunk {wildcards.chunk} {params.segmenter} "
        "--n-animals {params.n_animals} --options {params.options:q} --tracking {params.tracking:q} "
        "--out {output:q} > {log} 2>&1"
