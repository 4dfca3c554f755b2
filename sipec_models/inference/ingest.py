"""Probe a video and cut it into chunks."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from sipec_models.io.video import VideoInfo, file_checksum, probe

log = logging.getLogger(__name__)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON to ``path`` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_probe(video: str | os.PathLike, out: str | os.PathLike, count: bool = False) -> dict:
    """Probe ``video`` and write ``{**VideoInfo, "checksum": "sha256:..."}`` to ``out``."""
    info = probe(video, count=True if count else None)
    record = asdict(info)
    record["checksum"] = file_checksum(video)
    log.info("%s: %d frames at %.3f fps, %dx%d %s%s", video, info.n_frames, info.fps, info.width,
             info.height, info.codec, " (counted)" if info.counted else "")
    if not info.seek_exact:
        log.warning("%s: seeking is not frame-exact in this file; chunks will decode from the first frame "
                    "(slower). Re-encoding the video (e.g. ffmpeg -c:v libx264 -g 50) fixes this.", video)
    write_json_atomic(out, record)
    return record


def load_probe(path: str | os.PathLike) -> tuple[VideoInfo, str]:
    """Read a probe JSON written by :func:`run_probe`: ``(info, checksum)``."""
    record = json.loads(Path(path).read_text())
    checksum = record.pop("checksum", "")
    return VideoInfo(**record), checksum


def plan_chunks(n_frames: int, chunk_size: int) -> list[dict]:
    """Cut ``[0, n_frames)`` into consecutive chunks of ``chunk_size`` frames.

    A last piece shorter than a quarter chunk is merged into the previous
    chunk, so no job processes a handful of frames.

    Returns:
        ``[{"chunk": i, "start": s, "stop": e}, ...]`` covering every frame once.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
    if n_frames < 1:
        raise ValueError(f"cannot plan chunks for {n_frames} frames")
    starts = list(range(0, n_frames, chunk_size))
    if len(starts) > 1 and n_frames - starts[-1] < max(1, chunk_size // 4):
        starts.pop()
    stops = starts[1:] + [n_frames]
    return [{"chunk": i, "start": s, "stop": e} for i, (s, e) in enumerate(zip(starts, stops))]


def run_plan(probe_json: str | os.PathLike, chunk_size: int, out: str | os.PathLike) -> dict:
    """Write the chunk plan of a probed video."""
    info, _ = load_probe(probe_json)
    plan = {"n_frames": info.n_frames, "chunk_size": chunk_size, "chunks": plan_chunks(info.n_frames, chunk_size)}
    write_json_atomic(out, plan)
    log.info("%d frames -> %d chunks of <= %d frames", info.n_frames, len(plan["chunks"]),
             max(c["stop"] - c["start"] for c in plan["chunks"]))
    return plan


def load_plan(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def plan_chunk(plan: str | os.PathLike, chunk: int) -> tuple[int, int]:
    """Frame range ``[start, stop)`` of chunk ``chunk`` of a chunk plan.

    Raises:
        ValueError: naming ``plan``: it has no such chunk.
    """
    chunks = load_plan(plan)["chunks"]
    if not 0 <= chunk < len(chunks):
        raise ValueError(f"{plan}: has no chunk {chunk} (it lists {len(chunks)})")
    return int(chunks[chunk]["start"]), int(chunks[chunk]["stop"])
