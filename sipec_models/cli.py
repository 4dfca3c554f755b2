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
    sipec train-segnet    train SegNet from COCO or VIA instance polygons
    sipec train-idnet     train IdNet from identity labels (table or SLEAP tracks)
    sipec train-pose      train PoseNet or LEAP from SLEAP or DeepLabCut keypoint labels
    sipec train-behavenet  train BehaveNet from behaviour labels (--pairs: pair labels of social events)
    sipec train-pose-classifier  train the pose-based behaviour classifier from behaviour labels
    sipec train-flow / train-features / train-sequence  train DeepEthogram's three stages in series
    sipec extract-features  DeepEthogram features of each animal of one chunk
    sipec export-pose     a video's merged keypoints to SLEAP (.slp) and DeepLabCut (CSV)
    sipec evaluate-segnet k-fold mask AP and label-count ablation of SegNet
    sipec evaluate-pose   k-fold pose error and label-count ablation of PoseNet or LEAP
    sipec pose-ablation-figure  PCK against labelled frames of the evaluated pose models
    sipec evaluate-identity  identity accuracy of merged tables against labels
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
              social_behave=args.social_behave, pair_behaviour_csv=args.pair_behaviour)


def cmd_train_behaviour(args) -> None:
    from sipec_models.training.behaviour import run_train_behavenet, run_train_pose_classifier

    if args.model == "behavenet":
        run_train_behavenet(args.sources, args.out, overrides=args.overrides, behaviours=args.behaviours or None,
                            max_distance=args.max_distance, metrics_out=args.metrics, pairs=args.pairs)
    else:
        run_train_pose_classifier(args.sources, args.out, overrides=args.overrides,
                                  behaviours=args.behaviours or None, max_distance=args.max_distance,
                                  metrics_out=args.metrics)


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


def cmd_evaluate_identity(args) -> None:
    from sipec_models.evaluation import run_evaluate_identity

    run_evaluate_identity(args.video_id, args.store, args.probe, args.identify, args.truth, args.out)


def cmd_summary(args) -> None:
    from sipec_models.tables import run_summary

    run_summary(args.tables, args.videos, args.out)


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
    p.set_defaults(func=cmd_merge)

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

    p = sub.add_parser("summary", help="cohort summary over per-animal tables")
    p.add_argument("tables", nargs="+", type=Path)
    p.add_argument("--videos", required=True, type=Path, help="videos table (metadata columns are joined)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sipec_models.config import ConfigError
    from sipec_models.io.video import VideoError

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
