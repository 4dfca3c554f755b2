# Tracking: stitch chunk-local tracks across chunk borders and consolidate the video's Zarr store.


rule track:
    input:
        chunks=chunk_stores,
        probe=RESULTS / "{video}/probe.json",
        plan=RESULTS / "{video}/plan.json",
    output:
        directory(RESULTS / "{video}/{video}.zarr"),
    params:
        n_animals=n_animals,
        tracking=lambda wc: options("tracking"),
    log:
        "logs/track/{video}.log",
    shell:
        "sipec track {input.chunks:q} --video-id {wildcards.video} --probe {input.probe:q} "
        "--plan {input.plan:q} --n-animals {params.n_animals} --options {params.tracking:q} "
        "--out {output:q} > {log} 2>&1"
