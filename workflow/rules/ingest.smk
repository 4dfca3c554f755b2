# Ingest: the demo videos (when enabled), probing and the chunk plan of each video.


if DEMO_VIDEOS:

    rule demo:
        output:
            DEMO_VIDEOS,
            DEMO_TRUTH,
        params:
            outdir=DEMO_DIR,
            d=config["demo"],
        log:
            "logs/demo/demo.log",
        shell:
            "sipec demo --outdir {params.outdir} --n-videos {params.d[n_videos]} "
            "--n-frames {params.d[n_frames]} --n-animals {params.d[n_animals]} "
            "--size {params.d[size]} --seed {params.d[seed]} > {log} 2>&1"


rule probe:
    input:
        video_path,
    output:
        RESULTS / "{video}/probe.json",
    log:
        "logs/probe/{video}.log",
    shell:
        "sipec probe {input:q} --out {output:q} > {log} 2>&1"


checkpoint plan:
    input:
        RESULTS / "{video}/probe.json",
    output:
        RESULTS / "{video}/plan.json",
    params:
        size=config["chunks"]["size"],
    log:
        "logs/plan/{video}.log",
    shell:
        "sipec plan {input:q} --chunk-size {params.size} --out {output:q} > {log} 2>&1"
