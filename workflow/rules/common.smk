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
    VIDEOS = load_videos(config["videos"], producible={str(p) for p in DEMO_VIDEOS})
except ConfigError as err:
    raise WorkflowError(f"Invalid configuration:\n{err}") from None

RESULTS = Path(config["results"])
VIDEO_IDS = list(VIDEOS.index)


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
