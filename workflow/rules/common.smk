# Shared set-up: validate config and videos table before any job starts; input functions.
import json
import re
from pathlib import Path

from sipec_models.config import ConfigError, load_videos, validate_config

try:
    config = validate_config(config, source="config (config/config.yaml + --config overrides)")
    _DEMO = config["demo"]
    DEMO_DIR = Path(_DEMO["outdir"])
    DEMO_VIDEOS = [DEMO_DIR / f"arena_{i}.mp4" for i in range(_DEMO["n_videos"])] if _DEMO["enabled"] else []
    # Ground truth the demo renders beside each video (labels for training and evaluation).
    DEMO_TRUTH = [DEMO_DIR / f"arena_{i}" / name for i in range(len(DEMO_VIDEOS))
                  for name in ("masks_coco.json", "centroids.csv", "identities.csv", "keypoints_dlc.csv",
                               "behaviour.csv", "social.csv", "positions_3d.csv")]
    VIDEOS = load_videos(config["videos"], producible={str(p) for p in DEMO_VIDEOS})
except ConfigError as err:
    raise WorkflowError(f"Invalid configuration:\n{err}") from None

RESULTS = Path(config["results"])
VIDEO_IDS = list(VIDEOS.index)
MODELS = RESULTS / "models"
SEG = config["segmentation"]
SEGNET = SEG["method"] == "segnet"
IDENT = config["identification"]
SOCIAL = config["social"]
POSE = config["pose"]
BEHAVE = config["behaviour"]
POS3D = config["position3d"]


def _config_error(message):
    raise WorkflowError(f"Invalid configuration:\n{message}")


def resolve_video(ref):
    """A video id of videos.tsv -> its path; anything else is taken as a path."""
    return VIDEOS.loc[ref, "path"] if ref in VIDEOS.index else ref


def _px_per_cm(video):
    """Image px per cm of a video: its px_per_cm column in videos.tsv, else behaviour.px_per_cm (None: unknown)."""
    if "px_per_cm" in VIDEOS.columns:
        value = VIDEOS.loc[video, "px_per_cm"]
        if value == value and value not in ("", None):  # not NaN
            return float(value)
    return BEHAVE["px_per_cm"]


if SEGNET and not SEG["segnet"]["model"] and not SEG["segnet"]["labels"]:
    _config_error("segmentation.method is segnet but neither segmentation.segnet.model (a trained checkpoint) "
                  "nor segmentation.segnet.labels (COCO or VIA polygons to train one) is set")
if IDENT["enabled"] and not IDENT["model"]:
    if not IDENT["labels"]:
        _config_error("identification.enabled is true but neither identification.model nor "
                      "identification.labels is set")
    for _entry in IDENT["labels"]:
        if _entry["video"] not in VIDEOS.index:
            _config_error(f"identification.labels: video {_entry['video']!r} is not in {config['videos']} "
                          f"(ids: {', '.join(VIDEO_IDS)})")
        if not Path(_entry["labels"]).exists() and Path(_entry["labels"]) not in DEMO_TRUTH:
            _config_error(f"identification.labels: {_entry['labels']}: file does not exist")

_POSE_TRAINS = POSE["enabled"] and not POSE["checkpoint"]
if config["evaluation"]["pose_models"] and not POSE["labels"]:
    _config_error("evaluation.pose_models is set but pose.labels (the keypoint labels to cross-validate on) is not")
if POSE["enabled"] and not POSE["checkpoint"] and not POSE["labels"]:
    _config_error("pose.enabled is true but neither pose.checkpoint (a trained pose model) nor pose.labels "
                  "(SLEAP or DeepLabCut keypoint labels to train one) is set")
if POSE["enabled"] and POSE["checkpoint"] and not Path(POSE["checkpoint"]).is_file():
    _config_error(f"pose.checkpoint: {POSE['checkpoint']}: file does not exist")
if _POSE_TRAINS or config["evaluation"]["pose_models"]:
    if not Path(POSE["labels"]).exists() and Path(POSE["labels"]) not in DEMO_TRUTH:
        _config_error(f"pose.labels: {POSE['labels']}: file does not exist")
    if POSE["video"] and POSE["video"] not in VIDEOS.index and not Path(POSE["video"]).is_file():
        _config_error(f"pose.video: {POSE['video']!r} is neither a video id of {config['videos']} "
                      f"(ids: {', '.join(VIDEO_IDS)}) nor an existing file")

if BEHAVE["enabled"]:
    if BEHAVE["model"] == "pose_classifier" and not POSE["enabled"]:
        _config_error("behaviour.model is pose_classifier but pose.enabled is false: the classifier needs keypoints")
    if BEHAVE["model"] == "pose_classifier":
        for _v in VIDEO_IDS:
            if not _px_per_cm(_v):
                _config_error(f"behaviour.model is pose_classifier but video {_v!r} has no px_per_cm: set "
                              "behaviour.px_per_cm or a px_per_cm column in videos.tsv")
    if BEHAVE["checkpoint"] and not Path(BEHAVE["checkpoint"]).is_file():
        _config_error(f"behaviour.checkpoint: {BEHAVE['checkpoint']}: file does not exist")
    if BEHAVE["checkpoint"] and BEHAVE["model"] == "deepethogram":
        for _stage in ("deg_flow.pt", "deg_features.pt"):
            if not (MODELS / _stage).is_file():
                _config_error(f"behaviour.checkpoint is a DeepEthogram sequence model, but its flow generator and "
                              f"feature extractor are not in {MODELS} ({_stage} missing): copy them there or "
                              "leave behaviour.checkpoint empty to train all three stages")
    if not BEHAVE["checkpoint"]:
        if not BEHAVE["labels"]:
            _config_error("behaviour.enabled is true but neither behaviour.checkpoint nor behaviour.labels is set")
        for _entry in BEHAVE["labels"]:
            if _entry["video"] not in VIDEOS.index:
                _config_error(f"behaviour.labels: video {_entry['video']!r} is not in {config['videos']} "
                              f"(ids: {', '.join(VIDEO_IDS)})")
            for _key in ("labels", "positions"):
                _file = _entry.get(_key)
                if _file and not Path(_file).exists() and Path(_file) not in DEMO_TRUTH:
                    _config_error(f"behaviour.labels: {_key} {_file}: file does not exist")

PAIR_BEHAVE = BEHAVE["social"]
if PAIR_BEHAVE["enabled"]:
    if not SOCIAL["enabled"]:
        _config_error("behaviour.social.enabled is true but social.enabled is false: pair behaviour is classified "
                      "from the pair crops of the social events")
    if PAIR_BEHAVE["checkpoint"] and not Path(PAIR_BEHAVE["checkpoint"]).is_file():
        _config_error(f"behaviour.social.checkpoint: {PAIR_BEHAVE['checkpoint']}: file does not exist")
    if not PAIR_BEHAVE["checkpoint"]:
        if not PAIR_BEHAVE["labels"]:
            _config_error("behaviour.social.enabled is true but neither behaviour.social.checkpoint nor "
                          "behaviour.social.labels is set")
        for _entry in PAIR_BEHAVE["labels"]:
            if _entry["video"] not in VIDEOS.index:
                _config_error(f"behaviour.social.labels: video {_entry['video']!r} is not in {config['videos']} "
                              f"(ids: {', '.join(VIDEO_IDS)})")
            for _key in ("labels", "positions"):
                _file = _entry[_key]
                if not Path(_file).exists() and Path(_file) not in DEMO_TRUTH:
                    _config_error(f"behaviour.social.labels: {_key} {_file}: file does not exist")

if POS3D["enabled"]:
    if POS3D["model"] and not Path(POS3D["model"]).is_file():
        _config_error(f"position3d.model: {POS3D['model']}: file does not exist")
    if not POS3D["model"]:
        if not POS3D["labels"]:
            _config_error("position3d.enabled is true but neither position3d.model (a trained 3D position model) nor "
                          "position3d.labels (annotated 3D positions to train one) is set")
        for _entry in POS3D["labels"]:
            if _entry["video"] not in VIDEOS.index:
                _config_error(f"position3d.labels: video {_entry['video']!r} is not in {config['videos']} "
                              f"(ids: {', '.join(VIDEO_IDS)})")
            for _key in ("labels", "positions"):
                _file = _entry.get(_key)
                if _file and not Path(_file).exists() and Path(_file) not in DEMO_TRUTH:
                    _config_error(f"position3d.labels: {_key} {_file}: file does not exist")

SEGNET_MODEL = Path(SEG["segnet"]["model"]) if SEG["segnet"]["model"] else MODELS / "segnet.pt"
IDNET_MODEL = Path(IDENT["model"]) if IDENT["model"] else MODELS / "idnet.pt"
POSE_MODEL = Path(POSE["checkpoint"]) if POSE["checkpoint"] else MODELS / f"{POSE['model']}.pt"
BEHAVE_MODEL = Path(BEHAVE["checkpoint"]) if BEHAVE["checkpoint"] else MODELS / f"{BEHAVE['model']}.pt"
PAIR_BEHAVE_MODEL = Path(PAIR_BEHAVE["checkpoint"]) if PAIR_BEHAVE["checkpoint"] else MODELS / "behavenet_pairs.pt"
POS3D_MODEL = Path(POS3D["model"]) if POS3D["model"] else MODELS / "position3d.joblib"


wildcard_constraints:
    video="|".join(map(re.escape, VIDEO_IDS)) or "NO_VIDEO",
    chunk=r"\d{4}",


def video_path(wildcards):
    return VIDEOS.loc[wildcards.video, "path"]


def n_animals(wildcards):
    return int(VIDEOS.loc[wildcards.video, "n_animals"])


def options(*keys):
    """A config section as JSON, passed to the `sipec` command (and recorded as provenance)."""
    section = config
    for key in keys:
        section = section[key]
    return json.dumps(section, sort_keys=True)


def chunk_ids(video):
    """Chunk ids of a video, known once its chunk plan (a checkpoint) exists."""
    plan = checkpoints.plan.get(video=video).output[0]
    return [f"{c['chunk']:04d}" for c in json.loads(Path(plan).read_text())["chunks"]]


def chunk_stores(wildcards):
    return [RESULTS / f"{wildcards.video}/segment/chunk_{c}.zarr" for c in chunk_ids(wildcards.video)]


def idnet_sources():
    """The identity-label sources of train_idnet, as the JSON `sipec train-idnet` takes."""
    return [
        {"video": str(resolve_video(e["video"])), "store": str(RESULTS / e["video"] / f"{e['video']}.zarr"),
         "labels": e["labels"], "format": e["format"], "frames": e["frames"]}
        for e in IDENT["labels"]
    ]


def position3d_sources():
    """The annotated 3D positions of train_position3d, as the JSON `sipec train-position3d` takes."""
    return [{"store": str(RESULTS / e["video"] / f"{e['video']}.zarr"), "labels": e["labels"],
             "positions": e["positions"], "frames": e["frames"]} for e in POS3D["labels"]]


def identify_stores(wildcards):
    return [RESULTS / f"{wildcards.video}/identify/chunk_{c}.zarr" for c in chunk_ids(wildcards.video)]


def social_stores_of(video):
    return [RESULTS / f"{video}/social/chunk_{c}.zarr" for c in chunk_ids(video)]


def social_stores(wildcards):
    return social_stores_of(wildcards.video)


def pose_stores_of(video):
    return [RESULTS / f"{video}/pose/chunk_{c}.zarr" for c in chunk_ids(video)]


def pose_stores(wildcards):
    return pose_stores_of(wildcards.video)


def behave_stores(wildcards):
    return [RESULTS / f"{wildcards.video}/behave/chunk_{c}.zarr" for c in chunk_ids(wildcards.video)]


def pair_behave_stores(wildcards):
    return [RESULTS / f"{wildcards.video}/behave_pairs/chunk_{c}.zarr" for c in chunk_ids(wildcards.video)]


def pair_behaviour_sources():
    """The pair-label sources of train_behavenet_pairs, as the JSON `sipec train-behavenet --pairs` takes."""
    return [{"video": e["video"], "store": str(RESULTS / e["video"] / f"{e['video']}.zarr"),
             "social": [str(p) for p in social_stores_of(e["video"])], "labels": e["labels"],
             "positions": e["positions"], "frames": e["frames"]} for e in PAIR_BEHAVE["labels"]]


def deg_feature_stores_of(video):
    return [RESULTS / f"{video}/deg_features/chunk_{c}.zarr" for c in chunk_ids(video)]


def behaviour_sources(with_pose=False, with_features=False):
    """The label sources of train_behavenet / train_pose_classifier, as the JSON `sipec train-*` takes."""
    sources = []
    for e in BEHAVE["labels"]:
        src = {"video": e["video"], "store": str(RESULTS / e["video"] / f"{e['video']}.zarr"), "labels": e["labels"],
               "format": e["format"], "positions": e["positions"], "frames": e["frames"]}
        if with_features:
            src["features"] = [str(p) for p in deg_feature_stores_of(e["video"])]
        if with_pose:
            src["pose"] = [str(p) for p in pose_stores_of(e["video"])]
            src["px_per_cm"] = _px_per_cm(e["video"])
        sources.append(src)
    return sources
