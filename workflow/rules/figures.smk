# The `figures` target: paper-figure analogues (SIPEC Fig. 2b-d, 3c-d, 4b; DeepEthogram bout statistics) from the
# evaluation outputs of this config, each a PNG in the report with its numbers in a CSV beside it (not part of `all`).

FIGURES = RESULTS / "figures"
FIGURE_TARGETS = []
_SEGNET_ABLATION = [EVALUATION / "segnet_ablation.csv"] if SEG["segnet"]["labels"] else []
_IDENTITY_EVAL = ([EVALUATION / f"identity_{v}.json" for v in EVAL["identity_truth"]]
                  if IDENT["enabled"] and EVAL["identity_truth"] else [])

_IDNET_ABLATION = [EVALUATION / "idnet_ablation.csv"] if IDNET_ABLATION else []

if _SEGNET_ABLATION or _IDENTITY_EVAL or _IDNET_ABLATION:
    FIGURE_TARGETS.append(FIGURES / "segmentation_identity.png")

    rule figure_segmentation_identity:
        input:
            ablation=_SEGNET_ABLATION,
            identity=_IDENTITY_EVAL,
            idnet_ablation=_IDNET_ABLATION,
        output:
            figure=report(FIGURES / "segmentation_identity.png", caption="../report/figure_segmentation_identity.rst",
                          category="Figures"),
            table=report(FIGURES / "segmentation_identity.csv", caption="../report/figure_table.rst",
                         category="Figures"),
        params:
            ablation=lambda wc, input: f"--ablation '{input.ablation[0]}'" if input.ablation else "",
            identity=lambda wc, input: ("--identity " + " ".join(f"'{p}'" for p in input.identity)
                                        if input.identity else ""),
            idnet_ablation=lambda wc, input: (f"--idnet-ablation '{input.idnet_ablation[0]}'"
                                              if input.idnet_ablation else ""),
        log:
            "logs/figures/segmentation_identity.log",
        shell:
            "sipec figure segmentation-identity {params.ablation} {params.identity} {params.idnet_ablation} "
            "--out {output.figure:q} "
            "> {log} 2>&1"

if {"behavenet", "pose_classifier"} <= set(CV["models"]):
    FIGURE_TARGETS.append(FIGURES / "behaviour_compare.png")

    rule figure_behaviour_compare:
        input:
            [CV_DIR / m / f"fold_{i}.json" for m in ("behavenet", "pose_classifier") for i in CV_FOLDS],
        output:
            figure=report(FIGURES / "behaviour_compare.png", caption="../report/figure_behaviour_compare.rst",
                          category="Figures"),
            table=report(FIGURES / "behaviour_compare.csv", caption="../report/figure_table.rst", category="Figures"),
            test=FIGURES / "behaviour_compare.json",
        log:
            "logs/figures/behaviour_compare.log",
        shell:
            "sipec figure behaviour-compare --folds {input:q} --out {output.figure:q} > {log} 2>&1"

if CV["models"] and CV["label_fractions"]:
    FIGURE_TARGETS.append(FIGURES / "behaviour_ablation.png")

    rule figure_behaviour_ablation:
        input:
            CV_DIR / "ablation.csv",
        output:
            figure=report(FIGURES / "behaviour_ablation.png", caption="../report/figure_behaviour_ablation.rst",
                          category="Figures"),
            table=report(FIGURES / "behaviour_ablation.csv", caption="../report/figure_table.rst",
                         category="Figures"),
        log:
            "logs/figures/behaviour_ablation.log",
        shell:
            "sipec figure behaviour-ablation --cv-ablation {input:q} --out {output.figure:q} > {log} 2>&1"

if POS3D["enabled"] and not POS3D["model"]:
    FIGURE_TARGETS.append(FIGURES / "position3d_error.png")

    rule figure_position3d:
        input:
            MODELS / "position3d_cv.json",
        output:
            figure=report(FIGURES / "position3d_error.png", caption="../report/figure_position3d.rst",
                          category="Figures"),
            table=report(FIGURES / "position3d_error.csv", caption="../report/figure_table.rst", category="Figures"),
        log:
            "logs/figures/position3d.log",
        shell:
            "sipec figure position3d --position3d {input:q} --out {output.figure:q} > {log} 2>&1"

if BEHAVE["enabled"]:
    FIGURE_TARGETS.append(FIGURES / "bout_statistics.png")

    rule figure_bout_statistics:
        input:
            RESULTS / "cohort_behaviour.csv",
        output:
            figure=report(FIGURES / "bout_statistics.png", caption="../report/figure_bout_statistics.rst",
                          category="Figures"),
            table=report(FIGURES / "bout_statistics.csv", caption="../report/figure_table.rst", category="Figures"),
        log:
            "logs/figures/bout_statistics.log",
        shell:
            "sipec figure bout-statistics --cohort {input:q} --out {output.figure:q} > {log} 2>&1"


rule figures:
    input:
        FIGURE_TARGETS,
