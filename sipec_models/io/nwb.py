"""Pose of the per-animal tables to NWB (Neurodata Without Borders) with the ndx-pose extension.

One NWB file per video (:func:`run_export_nwb`, ``results/<video>/pose.nwb``):

- ``NWBFile``: ``session_description`` names the video; ``identifier`` is
  ``uuid5(NAMESPACE_URL, "sipec_models/video/<video id>")`` (the same video id
  always gives the same identifier); ``session_start_time`` is the video's
  ``date`` column of videos.tsv (ISO 8601 date or date and time; without a
  time zone it is taken as UTC) when there is one, else the Unix epoch
  ``1970-01-01T00:00:00+00:00``; ``session_id`` is the ``session`` column
  when there is one; the other metadata columns are listed in ``notes``.
- a ``behavior`` processing module holding ``Skeletons`` (one ``Skeleton``
  named ``skeleton``: the table's keypoint nodes, and edges when given) and
  one ndx-pose ``PoseEstimation`` per animal, named by the table's
  ``animal`` column, linked to that skeleton, with one
  ``PoseEstimationSeries`` per node (named by the node): ``data`` ``(T, 2)``
  float32 ``(x, y)`` in frame pixels (unit ``pixels``; NaN where the animal
  or the keypoint was not found), ``confidence`` ``(T,)`` 0-1 (NaN where not
  found), and time as ``rate = fps`` and ``starting_time = first frame / fps``
  in seconds when the table's frames are consecutive, else ``timestamps =
  frame / fps`` (the first series' timestamps linked from the others).
  ``source_software`` is ``sipec_models`` with the package version.
- with the video file: an external ``ImageSeries`` ``video`` in
  ``acquisition`` (path relative to the NWB file, rate ``fps``) linked as each
  ``PoseEstimation``'s ``source_video``, and a ``Device`` ``camera``.

Coordinates are those of the tables: ``x`` the column, ``y`` the row of the
full frame, pixel centres on integer coordinates, origin at the centre of the
top-left pixel.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: ``session_start_time`` of a video without a ``date`` in videos.tsv.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
REFERENCE_FRAME = ("(0, 0) is the centre of the top-left pixel of the video frame; x grows to the right (column), "
                   "y downwards (row), in pixels")
CONFIDENCE_DEFINITION = ("keypoint confidence of the sipec_models pose network (PoseNet or LEAP): the peak of the "
                         "node's predicted heatmap, 0-1; NaN where the animal or keypoint was not found")


def nwb_identifier(video_id: str) -> str:
    """The NWB ``identifier`` of a video's pose file: a UUID derived from its id only (deterministic)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sipec_models/video/{video_id}"))


def session_start(date: str | None) -> dt.datetime:
    """``session_start_time`` from a videos.tsv ``date`` value (ISO 8601; naive -> UTC); the epoch when empty."""
    if date is None or not str(date).strip():
        return EPOCH
    try:
        value = dt.datetime.fromisoformat(str(date).strip())
    except ValueError:
        raise ValueError(f"date {date!r} is not an ISO 8601 date or date and time (e.g. 2024-05-03 or "
                         "2024-05-03T14:30:00+01:00)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def pose_arrays(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Keypoints of a per-animal table as arrays.

    Returns:
        ``(frames (T,), points (A, K, T, 2), confidence (A, K, T), animals, nodes)``: every frame of the
        table in order, animals in the table's order; NaN where an animal has no row or no keypoint.

    Raises:
        ValueError: the table has no keypoint columns, or no ``frame`` / ``animal`` column.
    """
    from sipec_models.tables import keypoint_nodes

    nodes = keypoint_nodes(table)
    if not nodes:
        raise ValueError("the table has no keypoint columns (<node>_x, <node>_y, <node>_conf): was pose enabled?")
    for col in ("frame", "animal"):
        if col not in table.columns:
            raise ValueError(f"the table has no {col!r} column: is it a per-animal table (animals.parquet)?")
    if table.duplicated(["frame", "animal"]).any():
        raise ValueError("the table has several rows for one frame and animal")
    animals = [str(a) for a in dict.fromkeys(table["animal"])]
    frames = np.sort(table["frame"].unique()).astype(np.int64)
    wide = table.assign(animal=table["animal"].astype(str)).set_index(["animal", "frame"]).reindex(
        pd.MultiIndex.from_product([animals, frames]))
    A, K, T = len(animals), len(nodes), len(frames)

    def block(suffix):  # (A * T, K) -> (A, K, T)
        return wide[[f"{n}{suffix}" for n in nodes]].to_numpy(np.float64).reshape(A, T, K).transpose(0, 2, 1)

    points = np.stack([block("_x"), block("_y")], axis=-1)
    return frames, points, block("_conf"), animals, nodes


def _check_name(name: str, what: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"{what} {name!r} cannot name an NWB object (empty or holding '/')")
    return name


def build_nwbfile(table: pd.DataFrame, video_id: str, fps: float, metadata: Mapping[str, str] | None = None,
                  video: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                  size: tuple[int, int] | None = None, n_video_frames: int | None = None,
                  edges: Sequence[tuple[int, int]] = ()):
    """An in-memory ``NWBFile`` holding the keypoints of one video's per-animal table (see the module doc).

    Args:
        table: per-animal table with keypoint columns.
        video_id: the video's id (session description and identifier).
        fps: frames per second.
        metadata: the video's row of videos.tsv (``date``, ``session`` and any other columns).
        video: the video file, stored as an external ImageSeries (path relative to ``out_dir``).
        out_dir: where the NWB file goes (for the relative video path; default: the working directory).
        size: ``(width, height)`` of the video in px, for the ImageSeries.
        n_video_frames: frames of the video, for the ImageSeries (default: the table's last frame + 1).
        edges: skeleton edges as pairs of node indices.
    """
    import pynwb
    from ndx_pose import PoseEstimation, PoseEstimationSeries, Skeleton, Skeletons
    from pynwb.image import ImageSeries

    from sipec_models import __version__

    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    frames, points, conf, animals, nodes = pose_arrays(table)
    for a in animals:
        _check_name(a, "animal")
    for n in nodes:
        _check_name(n, "node")
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    try:
        start = session_start(metadata.get("date"))
    except ValueError as exc:
        raise ValueError(f"video {video_id}: {exc}") from None
    notes = "; ".join(f"{k}: {v}" for k, v in metadata.items() if k not in ("id", "path") and v != "")
    nwbfile = pynwb.NWBFile(
        session_description=f"pose of the animals of video {video_id} estimated by sipec_models {__version__}",
        identifier=nwb_identifier(video_id),
        session_start_time=start,
        session_id=metadata.get("session") or None,
        notes=f"videos.tsv metadata of {video_id}: {notes}" if notes else None,
        source_script="sipec_models (sipec export-nwb)",
        source_script_file_name="sipec_models/io/nwb.py",
    )
    edges = np.asarray(edges, np.uint8).reshape(-1, 2)
    if edges.size and edges.max() >= len(nodes):
        raise ValueError(f"skeleton edges {edges.tolist()} index beyond the {len(nodes)} nodes")
    skeleton = Skeleton(name="skeleton", nodes=nodes, edges=edges)
    module = nwbfile.create_processing_module(name="behavior", description="pose estimated by sipec_models")
    module.add(Skeletons(skeletons=[skeleton]))

    device = source_video = None
    if video is not None:
        device = nwbfile.create_device(name="camera", description=f"camera that recorded video {video_id}")
        rel = os.path.relpath(Path(video).resolve(), Path(out_dir or ".").resolve())
        source_video = ImageSeries(
            name="video", description=f"video {video_id} the pose was estimated from (external file)",
            external_file=[rel], starting_frame=[0], format="external", rate=float(fps), unit="n.a.",
            dimension=list(size) if size is not None else None, device=device,
            num_samples=int(n_video_frames) if n_video_frames else int(frames.max()) + 1 if len(frames) else 0)
        nwbfile.add_acquisition(source_video)

    consecutive = len(frames) > 0 and bool(np.all(np.diff(frames) == 1))
    timestamps = frames / fps
    for a, animal in enumerate(animals):
        if animal == "Skeletons":
            raise ValueError("an animal named 'Skeletons' clashes with the NWB Skeletons container")
        series, first = [], None
        for k, node in enumerate(nodes):
            timing = ({"rate": float(fps), "starting_time": float(frames[0] / fps)} if consecutive
                      else {"timestamps": first if first is not None else timestamps})
            s = PoseEstimationSeries(
                name=node, description=f"position of {node} of {animal}",
                data=points[a, k].astype(np.float32), unit="pixels", reference_frame=REFERENCE_FRAME,
                confidence=conf[a, k].astype(np.float32), confidence_definition=CONFIDENCE_DEFINITION, **timing)
            first = first if first is not None else s
            series.append(s)
        module.add(PoseEstimation(
            name=animal, pose_estimation_series=series,
            description=f"keypoints of {animal} in video {video_id} (sipec_models, top-down on the animal's crop)",
            scorer="sipec_models", source_software="sipec_models", source_software_version=__version__,
            skeleton=skeleton, device=device, source_video=source_video))
    return nwbfile


def write_nwb(nwbfile, out: str | os.PathLike) -> Path:
    """Write an ``NWBFile`` through a temporary file beside ``out``: an error leaves no half-written file."""
    from pynwb import NWBHDF5IO

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix or '.nwb'}")
    try:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def run_export_nwb(table_path: str | os.PathLike, out: str | os.PathLike, video_id: str | None = None,
                   fps: float | None = None, probe: str | os.PathLike | None = None,
                   video: str | os.PathLike | None = None, videos_tsv: str | os.PathLike | None = None,
                   edges: Sequence[tuple[int, int]] = ()) -> Path:
    """Export a video's merged keypoints to an NWB file with ndx-pose (see the module doc).

    Args:
        table_path: the per-animal table (``animals.parquet`` or ``.csv``) with keypoint columns.
        out: the NWB file to write (``pose.nwb``).
        video_id: the video's id; default: the table's ``video`` column.
        fps: frames per second; default: the probe's, else from the table's ``time_s``.
        probe: the video's ``probe.json`` (fps and frame size).
        video: the video file, referenced (not copied) by a relative path.
        videos_tsv: the videos table, for the video's ``date``, ``session`` and other metadata.
        edges: skeleton edges as pairs of node indices.

    Raises:
        FileNotFoundError: the table (or probe, videos table) does not exist.
        ValueError: the table has no keypoint columns, a bad ``date``, ... (naming the table).
    """
    path = Path(table_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: per-animal table does not exist")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if video_id is None:
        if "video" not in table.columns or not len(table):
            raise ValueError(f"{path}: no 'video' column to name the video: pass the video id")
        video_id = str(table["video"].iloc[0])
    size = n_video_frames = None
    if probe is not None:
        from sipec_models.inference.ingest import load_probe

        if not Path(probe).exists():
            raise FileNotFoundError(f"{probe}: probe file does not exist")
        info, _ = load_probe(probe)
        fps = info.fps if fps is None else fps
        size, n_video_frames = (int(info.width), int(info.height)), int(info.n_frames)
    metadata = {}
    if videos_tsv is not None:
        from sipec_models.cohort import read_videos_table

        videos = read_videos_table(videos_tsv)
        if video_id in videos.index:
            metadata = dict(videos.loc[video_id])
        else:
            log.warning("%s: video %s is not listed: no metadata, session start at the epoch", videos_tsv, video_id)
    try:
        if fps is None:
            from sipec_models.cohort import table_fps

            fps = table_fps(table)
        nwbfile = build_nwbfile(table, video_id, float(fps), metadata, video=video, out_dir=Path(out).parent,
                                size=size, n_video_frames=n_video_frames, edges=edges)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    write_nwb(nwbfile, out)
    n_animals = len(nwbfile.processing["behavior"].data_interfaces) - 1
    log.info("%s: keypoints of %d animals -> %s (NWB, ndx-pose)", path, n_animals, out)
    return Path(out)
