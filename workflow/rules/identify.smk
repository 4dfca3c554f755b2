# Identification (IdNet) and social interaction events: one job per chunk, reading the consolidated video store.


rule identify:
    input:
        video=video_path,
        store=RESULTS / "{video}/{video}.zarr",
        plan=RESULTS / "{video}/plan.json",
        model=IDNET_MODEL,
    output:
        directory(RESULTS / "{video}/identify/chunk_{chunk}.zarr"),
    threads: 2
    log:
        "logs/identify/{video}/chunk_{chunk}.log",
    shell:
        "sipec identify {input.video:q} --store {input.store:q} --plan {input.plan:q} --chunk {wildcards.chunk} "
        "--model {input.model:q} --out {output:q} > {log} 2>&1"


rule social:
    input:
        video=video_path,
        store=RESULTS / "{video}/{video}.zarr",
        probe=RESULTS / "{video}/probe.json",
        plan=RESULTS / "{video}/plan.json",
    output:
        directory(RESULTS / "{video}/social/chunk_{chunk}.zarr"),
    params:
        options=lambda wc: options("social"),
    log:
        "logs/social/{video}/chunk_{chunk}.log",
    shell:
        "sipec social {input.video:q} --store {input.store:q} --probe {input.probe:q} --plan {input.plan:q} "
        "--chunk {wildcards.chunk} --options {params.options:q} --out {output:q} > {log} 2>&1"
