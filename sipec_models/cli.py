"""The ``sipec`` command: one sub-command per pipeline step (what the Snakemake rules run).

Every step writes its output atomically, so a failed step leaves no output
that looks finished; errors print one clear line naming the file and the
problem and exit with status 1.

    sipec demo        render the synthetic demo arena with ground truth
    sipec validate    check config.yaml and videos.tsv
    sipec probe       frame count, fps, size, codec and checksum of a video
    sipec plan        cut a video into chunks
    sipec background  background image and segmenter calibration of a video
    sipec segment     segment one chunk (classical segmenter or SegNet) into a Zarr store
    sipec track       stitch chunk tracks and consolidate the video's Zarr store
    sipec identify    identity probabilities of each animal of one chunk (IdNet)
    sipec social      social interaction events of one chunk (pairs of animals)
    sipec pose        keypoints of each animal of one chunk (PoseNet or LEAP)
    sipec behave      behaviour probabilities of each animal of one chunk (BehaveNet or pose classifier)
    sipec behave-pairs  pair-behaviour probabilities of the social events of one chunk (BehaveNet on pair crops)
    sipec merge       per-animal table (CSV + Parquet), social events, trajectory figure
    sipec summary     cohort summary over the per-animal tables
    sipec cohort-behaviour  time budgets and bout statistics per animal, video and group
    sipec train-segnet    train SegNet from COCO or VIA instance polygons
    sipec train-idnet     train IdNet from identity labels (table or SLEAP tracks)
    sipec train-pose      train PoseNet or LEAP from SLEAP or DeepLabCut keypoint labels
    sipec train-behavenet  train BehaveNet from behaviour labels (--pairs: pair labels of social events)
    sipec train-pose-classifier  train the pose-based behaviour classifier from behaviour labels
    sipec tune            Ray Tune sweep (random search, ASHA) of a model's config: best overrides, trials table
    sipec train-flow / train-features / train-sequence  train DeepEthogram's three stages in series
    sipec extract-features  DeepEthogram features of each animal of one chunk
    sipec figure          a paper-figure analogue (PNG) with its numbers (CSV) from evaluation outputs
    sipec cv-folds / cv-fold / cv-aggregate  cross-validation of the behaviour models (the `cv` target)
    sipec train-position3d  fit and cross-validate the one-camera 3D position regressor
    sipec export-pose     a video's merged keypoints to SLEAP (.slp) and DeepLabCut (CSV)
    sipec export-nwb      a video's merged keypoints to NWB (ndx-pose)
    sipec evaluate-segnet k-fold mask AP and label-count ablation of SegNet
    sipec evaluate-pose   k-fold pose error and label-count ablation of PoseNet or LEAP
    sipec pose-ablation-figure  PCK against labelled frames of the evaluated pose models
    sipec evaluate-identity  identity accuracy of merged tables against labels
    sipec evaluate-idnet  label-count ablation of IdNet: identity accuracy against labelled frames
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sipec_models import __version__

log = logging.getLogger("sipec")


def _json_value(text: str, kind: type, name: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise argparse.ArgumentTypeError(f"expected a JSON {name}")
    return value


def _json_arg(text: str) -> dict:
    return _json_value(text, dict, "object")


def _json_list(text: str) -> list:
    return _json_value(text, list, "list")


def cmd_demo(args) -> None:
    from sipec_models.demo import render_demo

    videos = render_demo(
        args.outdir, n_videos=args.n_videos, n_frames=args.n_frames, n_animals=args.n_animals,
        size=args.size, seed=args.seed, progress=not args.quiet,
    )
    for v in videos:
        print(f"{v.id}\t{v.video}\t{v.n_animals}")


def cmd_validate(args) -> None:
    from sipec_models.config import load_config, load_videos

    config = load_config(args.config)
    videos_path = args.videos or config["videos"]
    demo = config["demo"]
    producible = set()
    if demo["enabled"]:
        producible = {str(Path(demo["outdir"]) / f"arena_{i}.mp4") for i in range(demo["n_videos"])}
    table = load_videos(videos_path, producible=producible)
    print(f"{args.config}: valid; {videos_path}: {len(table)} video(s) valid")


def cmd_probe(args) -> None:
    from sipec_models.inference.ingest import run_probe

    run_probe(args.video, args.out, count=args.count)


def cmd_plan(args) -> None:
    from sipec_models.inference.ingest import run_plan

    run_plan(args.probe, args.chunk_size, args.out)


def cmd_background(args) -> None:
    from sipec_models.inference.segment import run_background

    run_background(args.video, args.probe, args.options, args.out, args.calibration)


def cmd_segment(args) -> None:
    from sipec_models.inference.segment import run_segment

    run_segment(
        video=args.video, video_id=args.video_id, probe=args.probe, plan=args.plan, chunk=args.chunk,
        background=args.background, calibration=args.calibration, model=args.model, n_animals=args.n_animals,
        options=args.options, tracking=args.tracking, out=args.out,
    )


def cmd_track(args) -> None:
    from sipec_models.inference.track import run_track

    run_track(
        chunks=args.chunks, video_id=args.video_id, probe=args.probe, plan=args.plan,
        n_animals=args.n_animals, options=args.options, out=args.out,
    )


def cmd_merge(args) -> None:
    from sipec_models.tables import run_merge

    run_merge(args.store, args.video_id, args.probe, args.csv, args.parquet, args.figure,
              identify=args.identify, smoothing=args.smoothing, social=args.social,
              social_options=args.social_options, events_csv=args.events, pose=args.pose,
              behave=args.behave, bouts_csv=args.bouts, ethogram_figure=args.ethogram,
              social_behave=args.social_behave, pair_behaviour_csv=args.pair_behaviour,
              position3d=args.position3d)


def cmd_cv_folds(args) -> None:
    from sipec_models.crossval import run_cv_folds

    run_cv_folds(args.sources, args.out, args.scheme, args.folds, groups=args.groups, purge_frames=args.purge_frames,
                 behaviours=args.behaviours or None, max_distance=args.max_distance, seed=args.seed)


def cmd_cv_fold(args) -> None:
    from sipec_models.crossval import run_cv_fold

    run_cv_fold(args.model, args.folds, args.fold, args.sources, args.out, overrides=args.overrides,
                behaviours=args.behaviours or None, max_distance=args.max_distance, label_fraction=args.label_fraction)


def cmd_cv_aggregate(args) -> None:
    from sipec_models.crossval import run_cv_aggregate

    run_cv_aggregate(args.metrics, args.out, args.csv, args.ablation)


def cmd_figure(args) -> None:
    from sipec_models import figures

    def need(value, flag):
        if not value:
            raise ValueError(f"sipec figure {args.kind} needs {flag}")
        return value

    if args.kind == "segmentation-identity":
        figures.segmentation_id(args.ablation, args.identity, args.out, idnet_ablation_csv=args.idnet_ablation)
    elif args.kind == "behaviour-compare":
        figures.behaviour_compare(need(args.folds, "--folds"), args.out, models=args.models)
    elif args.kind == "behaviour-ablation":
        figures.behaviour_ablation(need(args.cv_ablation, "--cv-ablation"), args.out)
    elif args.kind == "position3d":
        figures.position3d_error(need(args.position3d, "--position3d"), args.out)
    else:
        figures.bout_statistics(need(args.cohort, "--cohort"), args.out)


def cmd_train_position3d(args) -> None:
    from sipec_models.position3d import run_train_position3d

    run_train_position3d(args.sources, args.overrides, out=args.out, metrics=args.metrics,
                         max_distance=args.max_distance)


def cmd_train_behaviour(args) -> None:
    from sipec_models.training.behaviour import run_train_behavenet, run_train_pose_classifier

    if args.model == "behavenet":
        run_train_behavenet(args.sources, args.out, overrides=args.overrides, behaviours=args.behaviours or None,
                            max_distance=args.max_distance, metrics_out=args.metrics, pairs=args.pairs)
    else:
        run_train_pose_classifier(args.sources, args.out, overrides=args.overrides,
                                  behaviours=args.behaviours or None, max_distance=args.max_distance,
                                  metrics_out=args.metrics)


def cmd_tune(args) -> None:
    from sipec_models.tuning import TUNABLES, run_sweep, write_workflow_config

    data = TUNABLES[args.model].load(args.sources, args.behaviours or None, args.max_distance, args.overrides)
    table = run_sweep(args.model, data, args.out_dir, overrides=args.overrides, num_samples=args.num_samples,
                      threads=args.threads, gpus=args.gpus, seed=args.seed)
    if args.workflow_config:
        from sipec_models.tuning import read_overrides

        write_workflow_config(args.workflow_config, args.model, args.overrides,
                              read_overrides(args.out_dir / "best_overrides.yaml"))
    log.info("%d trials -> %s", len(table), args.out_dir)


def cmd_behave(args) -> None:
    from sipec_models.inference.behave import run_behave

    run_behave(args.store, args.plan, args.chunk, args.checkpoint, args.out, pose=args.pose, px_per_cm=args.px_per_cm,
               features=args.features)


def cmd_train_flow(args) -> None:
    from sipec_models.training.deepethogram import run_train_deg_flow

    run_train_deg_flow(args.sources, args.out, overrides=args.overrides, metrics_out=args.metrics, figure=args.figure)


def cmd_train_features(args) -> None:
    from sipec_models.training.deepethogram import run_train_deg_features

    run_train_deg_features(args.sources, args.flow, args.out, overrides=args.overrides,
                           behaviours=args.behaviours or None, max_distance=args.max_distance,
                           metrics_out=args.metrics)


def cmd_extract_features(args) -> None:
    from sipec_models.training.deepethogram import run_extract_deg_features

    run_extract_deg_features(args.store, args.plan, args.chunk, args.flow, args.features, args.out)


def cmd_train_sequence(args) -> None:
    from sipec_models.training.deepethogram import run_train_deg_sequence

    run_train_deg_sequence(args.sources, args.out, overrides=args.overrides, behaviours=args.behaviours or None,
                           max_distance=args.max_distance, metrics_out=args.metrics)


def cmd_behave_pairs(args) -> None:
    from sipec_models.inference.behave import run_behave_pairs

    run_behave_pairs(args.social, args.store, args.plan, args.chunk, args.checkpoint, args.out)


def cmd_identify(args) -> None:
    from sipec_models.inference.identify import run_identify

    run_identify(args.video, args.store, args.plan, args.chunk, args.model, args.out)


def cmd_social(args) -> None:
    from sipec_models.social import run_social

    run_social(args.video, args.store, args.probe, args.plan, args.chunk, args.options, args.out)


def cmd_pose(args) -> None:
    from sipec_models.inference.pose import run_pose

    run_pose(args.video, args.store, args.plan, args.chunk, args.checkpoint, args.out)


def cmd_train_pose(args) -> None:
    from sipec_models.training.pose import run_train_pose

    run_train_pose(args.labels, args.out, model=args.model, video=args.video, overrides=args.overrides,
                   frames=args.frames, metrics_out=args.metrics)


def cmd_export_pose(args) -> None:
    from sipec_models.tables import run_export_pose

    run_export_pose(args.table, args.video, slp=args.slp, dlc_csv=args.dlc_csv)


def cmd_export_nwb(args) -> None:
    from sipec_models.io.nwb import run_export_nwb

    run_export_nwb(args.table, args.out, video_id=args.video_id, fps=args.fps, probe=args.probe, video=args.video,
                   videos_tsv=args.videos, edges=[tuple(e) for e in args.edges])


def cmd_train_segnet(args) -> None:
    from sipec_models.training.segnet import run_train_segnet

    run_train_segnet(args.labels, args.out, video=args.video, image_root=args.image_root,
                     overrides=args.overrides, frames=args.frames, metrics_out=args.metrics)


def cmd_train_idnet(args) -> None:
    from sipec_models.training.idnet import run_train_idnet

    run_train_idnet(args.sources, args.out, overrides=args.overrides, metrics_out=args.metrics)


def cmd_evaluate_segnet(args) -> None:
    from sipec_models.evaluation import run_evaluate_segnet

    run_evaluate_segnet(args.labels, video=args.video, folds=args.folds, n_frames=args.frames,
                        label_counts=args.label_counts,
                        overrides=args.overrides, cv_out=args.cv, ablation_out=args.ablation,
                        figure=args.figure, seed=args.seed)


def cmd_evaluate_pose(args) -> None:
    from sipec_models.evaluation import run_evaluate_pose

    run_evaluate_pose(args.labels, model=args.model, video=args.video, folds=args.folds,
                      label_counts=args.label_counts, overrides=args.overrides, radius=args.radius,
                      ablation_folds=args.ablation_folds, cv_out=args.cv, ablation_out=args.ablation, seed=args.seed)


def cmd_pose_ablation_figure(args) -> None:
    from sipec_models.evaluation import pose_ablation_figure

    pose_ablation_figure(args.ablations, args.figure, radius=args.radius)


def cmd_evaluate_idnet(args) -> None:
    from sipec_models.evaluation import run_evaluate_idnet_ablation

    run_evaluate_idnet_ablation(args.sources, args.tests, label_counts=args.label_counts, repeats=args.repeats,
                                overrides=args.overrides, out=args.out, figure=args.figure, seed=args.seed)


def cmd_evaluate_identity(args) -> None:
    from sipec_models.evaluation import run_evaluate_identity

    run_evaluate_identity(args.video_id, args.store, args.probe, args.identify, args.truth, args.out)


def cmd_summary(args) -> None:
    from sipec_models.tables import run_summary

    run_summary(args.tables, args.videos, args.out)


def cmd_cohort_behaviour(args) -> None:
    from sipec_models.cohort import run_cohort_behaviour

    run_cohort_behaviour(args.tables, args.videos, args.out, args.groups, group_by=args.group_by)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sipec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="render the synthetic demo arena and its ground truth")
    p.add_argument("--outdir", default="resources/demo", type=Path)
    p.add_argument("--n-videos", type=int, default=2)
    p.add_argument("--n-frames", type=int, default=600)
    p.add_argument("--n-animals", type=int, default=3)
    p.add_argument("--size", type=int, default=256, help="frame width and height, pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("validate", help="check config.yaml and the videos table")
    p.add_argument("--config", default="config/config.yaml", type=Path)
    p.add_argument("--videos", default=None, help="videos table (default: the one the config names)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("probe", help="probe a video: frames, fps, size, codec, checksum")
    p.add_argument("video", type=Path)
    p.add_argument("--out", required=True, type=Path, help="probe JSON")
    p.add_argument("--count", action="store_true", help="always count frames by decoding")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("plan", help="cut a video into chunks of --chunk-size frames")
    p.add_argument("probe", type=Path)
    p.add_argument("--chunk-size", type=int, required=True)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("background", help="median background image of a video")
    p.add_argument("video", type=Path)
    p.add_argument("--probe", required=True, type=Path)
    p.add_argument("--options", type=_json_arg, default={}, help="segmentation.classical options (JSON)")
    p.add_argument("--out", required=True, type=Path, help=".npy file, float32 (H, W)")
    p.add_argument("--calibration", required=True, type=Path, help="JSON: options with thresholds resolved")
    p.set_defaults(func=cmd_background)

    p = sub.add_parser("segment", help="segment one chunk (classical or SegNet) into its own Zarr store")
    p.add_argument("video", type=Path)
    p.add_argument("--video-id", required=True)
    p.add_argument("--probe", required=True, type=Path)
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--chunk", required=True, type=int)
    p.add_argument("--background", type=Path, help="background .npy (classical segmenter)")
    p.add_argument("--calibration", type=Path, help="segmenter calibration JSON (classical segmenter)")
    p.add_argument("--model", type=Path, help="SegNet checkpoint (segmentation.method segnet)")
    p.add_argument("--n-animals", required=True, type=int)
    p.add_argument("--options", type=_json_arg, default={}, help="segmentation options (JSON)")
    p.add_argument("--tracking", type=_json_arg, default={}, help="tracking options (JSON)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("track", help="stitch chunk tracks; consolidate the video store")
    p.add_argument("chunks", nargs="+", type=Path, help="chunk stores in chunk order")
    p.add_argument("--video-id", required=True)
    p.add_argument("--probe", required=True, type=Path)
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--n-animals", required=True, type=int)
    p.add_argument("--options", type=_json_arg, default={}, help="tracking options (JSON)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("merge", help="per-animal table and trajectory figure of a video")
    p.add_argument("store", type=Path)
    p.add_argument("--video-id", required=True)
    p.add_argument("--probe", required=True, type=Path)
    p.add_argument("--csv", required=True, type=Path)
    p.add_argument("--parquet", required=True, type=Path)
    p.add_argument("--figure", required=True, type=Path)

    p.add_argument("--identify", nargs="*", default=[], type=Path,
                   help="identify chunk stores: rows keyed by identity instead of track")
    p.add_argument("--smoothing", choices=["none", "track"], default="track",
                   help="identity probabilities averaged along tracks before assignment")
    p.add_argument("--social", nargs="*", default=[], type=Path, help="social chunk stores")
    p.add_argument("--social-options", type=_json_arg, default={}, help="social options (JSON)")
    p.add_argument("--events", type=Path, help="social events CSV (with --social)")
    p.add_argument("--pose", nargs="*", default=[], type=Path,
                   help="pose chunk stores: <node>_x, <node>_y, <node>_conf columns per keypoint")
    p.add_argument("--behave", nargs="*", default=[], type=Path,
                   help="behave chunk stores: <behaviour>_prob and <behaviour> (call) columns")
    p.add_argument("--bouts", type=Path, help="bout table CSV (with --behave)")
    p.add_argument("--ethogram", type=Path, help="ethogram raster PNG (with --behave)")
    p.add_argument("--social-behave", nargs="*", default=[], type=Path,
                   help="behave-pairs chunk stores: pair behaviour of the social events (with --social)")
    p.add_argument("--pair-behaviour", type=Path, help="per-frame pair behaviour CSV (with --social-behave)")
    p.add_argument("--position3d", type=Path,
                   help="3D position model (sipec train-position3d): X_<unit>, Y_<unit>, Z_<unit> columns")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("cv-folds", help="cross-validation folds over the labelled frames of behaviour labels")
    p.add_argument("--sources", required=True, type=_json_list,
                   help='JSON list of {"video", "store", "labels", "format", "positions", "frames"}')
    p.add_argument("--scheme", default="time_blocks",
                   choices=["time_blocks", "stratified_blocks", "leave_one_video_out", "group"])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--groups", type=_json_arg, default={}, help='JSON {video: group} of the group scheme')
    p.add_argument("--purge-frames", type=int, default=15,
                   help="training frames this close to a test block of the same video are left out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--behaviours", nargs="*", default=[], help="behaviours to keep (default: the label file's)")
    p.add_argument("--max-distance", type=float, default=10.0, help="px between a labelled animal and its track")
    p.add_argument("--out", required=True, type=Path, help="folds JSON")
    p.set_defaults(func=cmd_cv_folds)

    p = sub.add_parser("cv-fold", help="train and score one behaviour model on one cross-validation fold")
    p.add_argument("--model", required=True, choices=["behavenet", "pose_classifier"])
    p.add_argument("--folds", required=True, type=Path, help="folds JSON (sipec cv-folds)")
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--sources", required=True, type=_json_list,
                   help='JSON list of label sources as for train-behavenet / train-pose-classifier')
    p.add_argument("--behaviours", nargs="*", default=[])
    p.add_argument("--max-distance", type=float, default=10.0)
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of config/models/<model>.yaml")
    p.add_argument("--label-fraction", type=float, default=1.0,
                   help="train on the first fraction of each training range (a label ablation)")
    p.add_argument("--out", required=True, type=Path, help="fold metrics JSON")
    p.set_defaults(func=cmd_cv_fold)

    p = sub.add_parser("cv-aggregate", help="mean and s.e.m. over folds of each model's cross-validation scores")
    p.add_argument("metrics", nargs="+", type=Path, help="fold metrics JSON files (sipec cv-fold)")
    p.add_argument("--out", required=True, type=Path, help="summary JSON")
    p.add_argument("--csv", type=Path, help="summary CSV (one row per model and score)")
    p.add_argument("--ablation", type=Path, help="label-ablation CSV (one row per model and label fraction)")
    p.set_defaults(func=cmd_cv_aggregate)

    p = sub.add_parser("figure", help="a paper-figure analogue (PNG) and its numbers (CSV beside it)")
    p.add_argument("kind", choices=["segmentation-identity", "behaviour-compare", "behaviour-ablation", "position3d",
                                    "bout-statistics"])
    p.add_argument("--ablation", type=Path, help="segmentation-identity: evaluate-segnet ablation CSV")
    p.add_argument("--identity", nargs="*", default=[], type=Path,
                   help="segmentation-identity: evaluate-identity JSON files")
    p.add_argument("--idnet-ablation", type=Path, help="segmentation-identity: evaluate-idnet ablation CSV")
    p.add_argument("--folds", nargs="*", default=[], type=Path, help="behaviour-compare: cv-fold JSON files")
    p.add_argument("--models", nargs=2, default=["behavenet", "pose_classifier"],
                   help="behaviour-compare: the two models")
    p.add_argument("--cv-ablation", type=Path, help="behaviour-ablation: cv-aggregate ablation CSV")
    p.add_argument("--position3d", type=Path, help="position3d: train-position3d cross-validation JSON")
    p.add_argument("--cohort", type=Path, help="bout-statistics: cohort_behaviour.csv")
    p.add_argument("--out", required=True, type=Path, help="figure PNG (its table goes to the same name .csv)")
    p.set_defaults(func=cmd_figure)

    p = sub.add_parser("train-position3d", help="fit and cross-validate the one-camera 3D position regressor")
    p.add_argument("--sources", required=True, type=_json_list,
                   help='JSON list of {"store", "labels", "positions", "frames"}: annotated 3D positions '
                        '(frame, animal, X_<unit>, Y_<unit>, Z_<unit>) of tracked videos')
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of config/models/position3d.yaml")
    p.add_argument("--max-distance", type=float, default=10.0, help="px between an annotated animal and its track")
    p.add_argument("--metrics", type=Path, help="cross-validation JSON (RMSE per axis, mean baseline)")
    p.add_argument("--out", required=True, type=Path, help="model file (joblib)")
    p.set_defaults(func=cmd_train_position3d)

    for name, what in (("train-behavenet", "BehaveNet (behaviour from the animals' masked crops)"),
                       ("train-pose-classifier", "the pose-based behaviour classifier (keypoint features)")):
        p = sub.add_parser(name, help=f"train {what} from behaviour labels of tracked videos")
        p.add_argument("--sources", required=True, type=_json_list,
                       help='JSON list of {"video", "store", "labels", "format", "positions", "frames"} (pose '
                            'classifier: also "pose" (chunk stores) and "px_per_cm")')
        p.add_argument("--behaviours", nargs="*", default=[], help="behaviours to train on (default: all labelled)")
        p.add_argument("--max-distance", type=float, default=20.0,
                       help="px: largest distance between a labelled animal's position and its track")
        p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of the model config")
        p.add_argument("--metrics", type=Path, help="training summary JSON")
        p.add_argument("--out", required=True, type=Path, help="checkpoint (.pt)")
        if name == "train-behavenet":
            p.add_argument("--pairs", action="store_true",
                           help='train on the pair crops of social events: sources also give "social" (the '
                                'video\'s social chunk stores) and "labels" is a pair-label table (frame, '
                                'animal_a, animal_b, one 0/1 column per behaviour)')
        p.set_defaults(func=cmd_train_behaviour, model="behavenet" if name == "train-behavenet" else "pose_classifier")

    p = sub.add_parser("tune", help="Ray Tune sweep of a model's config (random search, ASHA) on behaviour labels: "
                                    "best_overrides.yaml and trials.csv")
    p.add_argument("--model", required=True, choices=["pose_classifier", "behavenet", "deepethogram"],
                   help="the model (its config's `tune` section holds the search space and sweep settings)")
    p.add_argument("--sources", required=True, type=_json_list,
                   help="label sources, as train-pose-classifier / train-behavenet take them")
    p.add_argument("--behaviours", nargs="*", default=[], help="behaviours to train on (default: all labelled)")
    p.add_argument("--max-distance", type=float, default=20.0,
                   help="px: largest distance between a labelled animal's position and its track")
    p.add_argument("--overrides", nargs="*", default=[],
                   help="Hydra overrides of the model config applied in every trial (also tune.*, e.g. "
                        "tune.max_epochs=20; BehaveNet: also to the frame network trained once before the sweep)")
    p.add_argument("--num-samples", type=int, help="trials (default: the config's tune.num_samples)")
    p.add_argument("--threads", type=int, default=1, help="CPU cores Ray may use (trials run side by side)")
    p.add_argument("--gpus", type=int, help="GPUs Ray may use (default: those the job sees)")
    p.add_argument("--seed", type=int, help="seed of the random search (default: the config's tune.seed)")
    p.add_argument("--workflow-config", type=Path,
                   help="also write a Snakemake config file (behaviour.model and behaviour.overrides = the base "
                        "overrides + the best ones) for `snakemake --configfile`")
    p.add_argument("--out-dir", required=True, type=Path,
                   help="folder: best_overrides.yaml, trials.csv, ray/ (Ray Tune's experiment folder)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("behave", help="behaviour probabilities of each animal of one chunk (BehaveNet or pose "
                                      "classifier)")
    p.add_argument("--store", required=True, type=Path, help="the consolidated video store (from track)")
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--chunk", required=True, type=int)
    p.add_argument("--checkpoint", required=True, type=Path, help="BehaveNet or pose-classifier checkpoint")
    p.add_argument("--pose", nargs="*", default=[], type=Path, help="the video's pose chunk stores (pose classifier)")
    p.add_argument("--px-per-cm", type=float, help="image px per cm (pose classifier)")
    p.add_argument("--features", nargs="*", default=[], type=Path,
                   help="the video's extract-features chunk stores (DeepEthogram)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_behave)

    deg_sources = ('JSON list of {"video", "store", "labels", "format", "positions", "frames"} (train-sequence: '
                   'also "features", the video\'s extract-features chunk stores)')
    p = sub.add_parser("train-flow", help="train DeepEthogram's flow generator on the animals' crops (no labels)")
    p.add_argument("--sources", required=True, type=_json_list, help='JSON list of {"video", "store"}')
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of config/models/deepethogram.yaml")
    p.add_argument("--metrics", type=Path, help="training summary JSON")
    p.add_argument("--figure", type=Path, help="PNG: a held-out frame pair, its flow and the reconstruction errors")
    p.add_argument("--out", required=True, type=Path, help="checkpoint (.pt)")
    p.set_defaults(func=cmd_train_flow)
    for name, func, what in (("train-features", cmd_train_features, "DeepEthogram's two-stream feature extractor"),
                             ("train-sequence", cmd_train_sequence, "DeepEthogram's TGM sequence model")):
        p = sub.add_parser(name, help=f"train {what} from behaviour labels of tracked videos")
        p.add_argument("--sources", required=True, type=_json_list, help=deg_sources)
        if name == "train-features":
            p.add_argument("--flow", required=True, type=Path, help="flow-generator checkpoint (train-flow)")
        p.add_argument("--behaviours", nargs="*", default=[], help="behaviours to train on (default: all labelled)")
        p.add_argument("--max-distance", type=float, default=20.0,
                       help="px: largest distance between a labelled animal's position and its track")
        p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of config/models/deepethogram.yaml")
        p.add_argument("--metrics", type=Path, help="training summary JSON")
        p.add_argument("--out", required=True, type=Path, help="checkpoint (.pt)")
        p.set_defaults(func=func)
    p = sub.add_parser("extract-features", help="DeepEthogram features of each animal of one chunk")
    p.add_argument("--store", required=True, type=Path, help="the consolidated video store (from track)")
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--chunk", required=True, type=int)
    p.add_argument("--flow", required=True, type=Path, help="flow-generator checkpoint (train-flow)")
    p.add_argument("--features", required=True, type=Path, help="feature-extractor checkpoint (train-features)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_extract_features)

    p = sub.add_parser("behave-pairs", help="pair-behaviour probabilities of the social events of one chunk "
                                            "(BehaveNet trained with --pairs)")
    p.add_argument("--social", required=True, nargs="+", type=Path, help="the video's social chunk stores")
    p.add_argument("--store", required=True, type=Path, help="the consolidated video store (from track)")
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--chunk", required=True, type=int)
    p.add_argument("--checkpoint", required=True, type=Path, help="BehaveNet checkpoint trained on pair crops")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_behave_pairs)

    p = sub.add_parser("identify", help="IdNet identity probabilities of one chunk")
    p.add_argument("video", type=Path)
    p.add_argument("--store", required=True, type=Path, help="the consolidated video store (from track)")
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--chunk", required=True, type=int)
    p.add_argument("--model", required=True, type=Path, help="IdNet checkpoint")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("social", help="social interaction events of one chunk")
    p.add_argument("video", type=Path)
    p.add_argument("--store", required=True, type=Path, help="the consolidated video store (from track)")
    p.add_argument("--probe", required=True, type=Path)
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--chunk", required=True, type=int)
    p.add_argument("--options", type=_json_arg, default={}, help="social options (JSON)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_social)

    p = sub.add_parser("pose", help="keypoints of each animal of one chunk (PoseNet or LEAP, top-down)")
    p.add_argument("video", type=Path)
    p.add_argument("--store", required=True, type=Path, help="the consolidated video store (from track)")
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--chunk", required=True, type=int)
    p.add_argument("--checkpoint", required=True, type=Path, help="pose checkpoint (from train-pose)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_pose)

    p = sub.add_parser("train-pose", help="train PoseNet or LEAP from SLEAP or DeepLabCut keypoint labels")
    p.add_argument("--labels", required=True, type=Path,
                   help="SLEAP .slp, DeepLabCut project (folder or config.yaml), DLC CSV or H5")
    p.add_argument("--model", choices=["posenet", "leap"], default="posenet",
                   help="network (config/models/<model>.yaml)")
    p.add_argument("--video", type=Path,
                   help="video of labelled frames without image files "
                        "(a SLEAP file whose video moved, a DLC CSV indexed by frame number)")
    p.add_argument("--frames", type=int, nargs=2, metavar=("START", "STOP"), help="use label frames [START, STOP)")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of config/models/<model>.yaml")
    p.add_argument("--metrics", type=Path, help="training summary JSON")
    p.add_argument("--out", required=True, type=Path, help="checkpoint (.pt)")
    p.set_defaults(func=cmd_train_pose)

    p = sub.add_parser("export-pose", help="a video's merged keypoints to SLEAP (.slp) and DeepLabCut (CSV)")
    p.add_argument("table", type=Path, help="per-animal table with keypoint columns (animals.parquet or .csv)")
    p.add_argument("--video", required=True, type=Path, help="the video (referenced by the .slp)")
    p.add_argument("--slp", type=Path, help="SLEAP file to write")
    p.add_argument("--dlc-csv", type=Path, help="DeepLabCut CSV to write (indexed by frame number)")
    p.set_defaults(func=cmd_export_pose)

    p = sub.add_parser("export-nwb", help="a video's merged keypoints to NWB (ndx-pose PoseEstimation per animal)")
    p.add_argument("table", type=Path, help="per-animal table with keypoint columns (animals.parquet or .csv)")
    p.add_argument("--out", required=True, type=Path, help="NWB file to write (pose.nwb)")
    p.add_argument("--video-id", help="the video's id (default: the table's video column)")
    p.add_argument("--probe", type=Path, help="the video's probe.json (fps, frame size, frame count)")
    p.add_argument("--fps", type=float, help="frames per second (default: the probe's, else from the table)")
    p.add_argument("--video", type=Path, help="the video file, referenced by a relative path (not copied)")
    p.add_argument("--videos", type=Path, help="videos table: date (session start), session and other metadata")
    p.add_argument("--edges", type=int, nargs=2, action="append", default=[], metavar=("NODE_A", "NODE_B"),
                   help="a skeleton edge as two node indices (repeat for more)")
    p.set_defaults(func=cmd_export_nwb)

    p = sub.add_parser("train-segnet", help="train SegNet from COCO or VIA instance polygons")
    p.add_argument("--labels", required=True, type=Path, help="COCO or VIA JSON")
    p.add_argument("--video", type=Path, help="video whose frames the labels index (default: images beside the JSON)")
    p.add_argument("--image-root", type=Path, help="folder of the labelled images (default: the JSON's folder)")
    p.add_argument("--frames", type=int, nargs=2, metavar=("START", "STOP"), help="use label frames [START, STOP)")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of config/models/segnet.yaml")
    p.add_argument("--metrics", type=Path, help="training summary JSON")
    p.add_argument("--out", required=True, type=Path, help="checkpoint (.pt)")
    p.set_defaults(func=cmd_train_segnet)

    p = sub.add_parser("train-idnet", help="train IdNet from identity labels")
    p.add_argument("--sources", required=True, type=_json_list,
                   help='JSON list of {"video", "store", "labels", "format", "frames"}')
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of config/models/idnet.yaml")
    p.add_argument("--metrics", type=Path, help="training summary JSON")
    p.add_argument("--out", required=True, type=Path, help="checkpoint (.pt)")
    p.set_defaults(func=cmd_train_idnet)

    p = sub.add_parser("evaluate-segnet", help="k-fold mask AP@0.5 and a label-count ablation of SegNet")
    p.add_argument("--labels", required=True, type=Path, help="COCO or VIA JSON")
    p.add_argument("--video", type=Path, help="video whose frames the labels index")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--frames", type=int, default=40, help="labelled frames used, evenly spaced in time")
    p.add_argument("--label-counts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of config/models/segnet.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cv", required=True, type=Path, help="per-fold CSV")
    p.add_argument("--ablation", required=True, type=Path, help="per fold and label count CSV")
    p.add_argument("--figure", required=True, type=Path, help="ablation figure (PNG)")
    p.set_defaults(func=cmd_evaluate_segnet)

    p = sub.add_parser("evaluate-pose", help="k-fold pose error and a label-count ablation of PoseNet or LEAP")
    p.add_argument("--labels", required=True, type=Path, help="SLEAP .slp, DeepLabCut project / CSV / H5")
    p.add_argument("--model", choices=("posenet", "leap"), default="posenet")
    p.add_argument("--video", type=Path, help="video of labelled frames that have no image file")
    p.add_argument("--folds", type=int, default=5, help="contiguous time blocks of labelled frames")
    p.add_argument("--label-counts", type=int, nargs="*", default=[10, 25, 50],
                   help="ablation: training-frame counts below the full training set")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of config/models/<model>.yaml")
    p.add_argument("--radius", type=float, default=5.0, help="PCK radius, frame px")
    p.add_argument("--ablation-folds", type=int, help="train the ablation subsets in the first N folds only")
    p.add_argument("--seed", type=int, default=0, help="seed of the ablation subsets")
    p.add_argument("--cv", required=True, type=Path, help="per-fold CSV")
    p.add_argument("--ablation", required=True, type=Path, help="per fold and label count CSV")
    p.set_defaults(func=cmd_evaluate_pose)

    p = sub.add_parser("pose-ablation-figure", help="PCK against labelled frames of the evaluated pose models")
    p.add_argument("ablations", nargs="+", type=Path, help="ablation CSVs of sipec evaluate-pose")
    p.add_argument("--radius", type=float, default=5.0, help="the PCK radius the CSVs were scored at, px")
    p.add_argument("--figure", required=True, type=Path, help="PNG")
    p.set_defaults(func=cmd_pose_ablation_figure)

    p = sub.add_parser("evaluate-identity", help="identity accuracy of a video against identity labels")
    p.add_argument("--video-id", required=True)
    p.add_argument("--store", required=True, type=Path, help="the consolidated video store")
    p.add_argument("--probe", required=True, type=Path)
    p.add_argument("--identify", required=True, nargs="+", type=Path, help="identify chunk stores")
    p.add_argument("--truth", required=True, type=Path, help="identity table: frame, identity and box or x, y")
    p.add_argument("--out", required=True, type=Path, help="JSON")
    p.set_defaults(func=cmd_evaluate_identity)

    p = sub.add_parser("evaluate-idnet", help="label-count ablation of IdNet: identity accuracy on unseen frames "
                                              "against labelled training frames")
    p.add_argument("--sources", required=True, type=_json_list,
                   help='training labels, as train-idnet: JSON list of {"video", "store", "labels", "format", '
                        '"frames"}')
    p.add_argument("--tests", required=True, type=_json_list,
                   help='test videos: JSON list of {"video_id", "video", "store", "truth"} (identity tables)')
    p.add_argument("--label-counts", type=int, nargs="+", default=[5, 20, 80],
                   help="ablation points, labelled training frames (the full set is always added)")
    p.add_argument("--repeats", type=int, default=3, help="random subsets per label count")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of config/models/idnet.yaml")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets (and of training, plus the repeat)")
    p.add_argument("--out", required=True, type=Path, help="CSV: one row per subset and test video")
    p.add_argument("--figure", required=True, type=Path, help="ablation figure (PNG)")
    p.set_defaults(func=cmd_evaluate_idnet)

    p = sub.add_parser("summary", help="cohort summary over per-animal tables")
    p.add_argument("tables", nargs="+", type=Path)
    p.add_argument("--videos", required=True, type=Path, help="videos table (metadata columns are joined)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("cohort-behaviour", help="time budgets and bout statistics per animal, video and group")
    p.add_argument("tables", nargs="+", type=Path, help="per-animal tables with behaviour calls (animals.parquet)")
    p.add_argument("--videos", required=True, type=Path, help="videos table (metadata columns to group by)")
    p.add_argument("--group-by", nargs="*", help="videos-table columns to average over (default: group, if present)")
    p.add_argument("--out", required=True, type=Path, help="per video, animal and behaviour CSV")
    p.add_argument("--groups", required=True, type=Path, help="per group and behaviour CSV (mean, s.e.m., n)")
    p.set_defaults(func=cmd_cohort_behaviour)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sipec_models.config import ConfigError
    from sipec_models.io.video import VideoError
    from sipec_models.runtime import keep_freed_memory

    keep_freed_memory()  # before any large allocation (sipec_models.runtime: CPU work several times faster)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    log.info("sipec %s: %s", __version__, " ".join(sys.argv[1:]) if argv is None else " ".join(argv))
    try:
        args.func(args)
    except (ConfigError, VideoError, FileNotFoundError, ValueError) as exc:
        print(f"sipec {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
