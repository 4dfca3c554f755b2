"""Video probing and frame-exact decoding with PyAV.

Frames are addressed by their 0-based index in decoding order. Random access
seeks to the target presentation timestamp (pts) with ``backward=True`` (the
keyframe at or before it), then decodes until ``pts >= target``: this is
frame-exact for constant-frame-rate files, which the tests check against
sequential decoding.

Arrays returned here are ``uint8``: ``(T, H, W)`` for grey, ``(T, H, W, 3)``
for RGB.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np


class VideoError(RuntimeError):
    """A video that is missing, unreadable or truncated; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video.

    Attributes:
        path: the file probed.
        n_frames: number of decodable frames (counted when the container's
            number is missing or disagrees with its duration).
        fps: average frame rate, frames per second.
        width, height: frame size in pixels.
        codec: codec name, e.g. ``"h264"``.
        n_frames_container: frame count stored in the container (0 if none).
        counted: True when ``n_frames`` came from decoding every frame.
        time_base: the stream's time base as ``"num/den"`` seconds per pts tick.
        start_pts: pts of the first frame.
        frame_pts_step: pts ticks between consecutive frames (0 if not constant).
        rate: the exact frame rate as ``"num/den"`` frames per second.
        seek_exact: seeking was checked against sequential decoding and gives
            the same pixels; when False, reads decode from the first frame
            (slower, always exact). Some files mark frames as keyframes that
            cannot be decoded on their own.
    """

    path: str
    n_frames: int
    fps: float
    width: int
    height: int
    codec: str
    n_frames_container: int
    counted: bool
    time_base: str
    start_pts: int
    frame_pts_step: int
    rate: str = ""
    seek_exact: bool = True

    @property
    def ticks_per_frame(self) -> Fraction:
        """Exact pts ticks per frame: ``1 / (rate * time_base)``."""
        return 1 / (Fraction(self.rate or self.fps) * Fraction(self.time_base))

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.fps else 0.0

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "VideoInfo":
        return cls(**json.loads(Path(path).read_text()))


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p}: video file does not exist")
    if not p.is_file():
        raise VideoError(f"{p}: not a regular file")
    try:
        container = av.open(str(p))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{p}: cannot be opened as a video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{p}: contains no video stream")
    return container


def _count_frames(path: str | os.PathLike) -> tuple[int, list[int]]:
    """Decode every frame; return the count and the pts of each frame."""
    pts = []
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                pts.append(frame.pts if frame.pts is not None else len(pts))
        except av.FFmpegError as exc:
            if not pts:
                raise VideoError(f"{path}: no frame could be decoded ({exc})") from exc
            # A truncated tail: keep the frames that decoded.
    return len(pts), pts


def probe(path: str | os.PathLike, count: bool | None = None) -> VideoInfo:
    """Read a video's frame count, rate, size and codec.

    Args:
        path: video file.
        count: ``True`` always decodes every frame to count them; ``False``
            trusts the container; ``None`` (default) counts only when the
            container's number is missing or disagrees with duration x fps by
            more than one frame, or when the last frame cannot be decoded.

    Raises:
        VideoError: missing, unreadable, empty or truncated files.
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = ctx.width, ctx.height
        codec = ctx.name
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        rate = Fraction(rate) if rate else Fraction(0)
        fps = float(rate)
        n_container = int(stream.frames or 0)
        time_base = stream.time_base or Fraction(1, 1)
        duration_ticks = stream.duration
        try:
            first = next(container.decode(stream))
        except (StopIteration, av.FFmpegError) as exc:
            raise VideoError(f"{path}: no frame could be decoded") from exc
        start_pts = int(first.pts or 0)
    if width <= 0 or height <= 0 or fps <= 0:
        raise VideoError(f"{path}: invalid stream (size {width}x{height}, fps {fps})")
    ticks = 1 / (rate * time_base) if rate and time_base else Fraction(0)
    step = int(ticks) if ticks and ticks.denominator == 1 else 0

    n_frames = n_container
    counted = False
    if count is None:
        expected = None
        if duration_ticks:
            expected = float(duration_ticks * time_base) * fps
        suspicious = n_container <= 0 or (expected is not None and abs(expected - n_container) > 1)
        if not suspicious:
            # Cheap check that the last frame the container promises decodes.
            suspicious = not _last_frame_decodes(path, n_container, start_pts, ticks)
        count = suspicious
    if count:
        n_frames, pts = _count_frames(path)
        counted = True
        if len(pts) > 1:
            diffs = np.diff(np.asarray(pts))
            step = int(np.median(diffs)) if np.all(diffs == np.median(diffs)) else 0
    if n_frames <= 0:
        raise VideoError(f"{path}: contains no decodable frames")
    seek_exact = _seek_is_exact(path, n_frames, start_pts, ticks) if ticks else False
    return VideoInfo(
        path=str(path),
        n_frames=int(n_frames),
        fps=fps,
        width=int(width),
        height=int(height),
        codec=codec,
        n_frames_container=n_container,
        counted=counted,
        time_base=f"{time_base.numerator}/{time_base.denominator}",
        start_pts=start_pts,
        frame_pts_step=step,
        rate=f"{rate.numerator}/{rate.denominator}",
        seek_exact=seek_exact,
    )


def _seek_is_exact(path, n_frames: int, start_pts: int, ticks: Fraction, max_frames: int = 1000) -> bool:
    """Compare a frame read by seeking with the same frame decoded from the start.

    The frame checked lies just after the second keyframe (the first place a
    seek lands somewhere other than the start). Files with one keyframe in
    the first ``max_frames`` frames are checked at ``max_frames``.
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        keys = []
        for i, packet in enumerate(container.demux(stream)):
            if packet.size == 0:
                continue
            if packet.is_keyframe:
                keys.append(i)
                if len(keys) == 2 or i >= max_frames:
                    break
            if i >= max_frames:
                break
    target = min(keys[1] + 2 if len(keys) > 1 else max_frames, n_frames - 1)
    if target <= 0:
        return True
    with _open(path) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i == target:
                reference = frame.to_ndarray(format="gray")
                break
        else:
            return False
    try:
        got = list(_decode_range(path, target, target + 1, start_pts, ticks, gray=True))
    except (VideoError, av.FFmpegError):
        return False
    return len(got) == 1 and np.array_equal(got[0], reference)


def _last_frame_decodes(path, n_frames: int, start_pts: int, ticks: Fraction) -> bool:
    if n_frames <= 0 or ticks <= 0:
        return False
    try:
        frames = list(_decode_range(path, n_frames - 1, n_frames, start_pts, ticks, gray=True))
    except (VideoError, av.FFmpegError):
        return False
    return len(frames) == 1


def _to_array(frame: av.VideoFrame, gray: bool) -> np.ndarray:
    if gray:
        return frame.to_ndarray(format="gray")
    return frame.to_ndarray(format="rgb24")


def _decode_range(path, start: int, stop: int, start_pts: int, ticks: Fraction, gray: bool) -> Iterator[np.ndarray]:
    """Yield frames ``start..stop-1`` by seek-then-decode (constant frame rate)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # Half a frame early, so rounded timestamps of the target frame still count.
        target = start_pts + int(start * ticks - ticks / 2)
        if start > 0:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        index = None
        for frame in container.decode(stream):
            if frame.pts is None:
                raise VideoError(f"{path}: frame without timestamp; probe with count=True and read sequentially")
            if frame.pts < target:
                continue
            index = int(round((frame.pts - start_pts) / ticks)) if index is None else index + 1
            if index < start:
                continue
            if index >= stop:
                return
            yield _to_array(frame, gray)


def iter_frames(
    path: str | os.PathLike,
    start: int = 0,
    stop: int | None = None,
    gray: bool = False,
    info: VideoInfo | None = None,
) -> Iterator[np.ndarray]:
    """Yield frames ``[start, stop)`` one at a time (frame-exact).

    Args:
        path: video file.
        start, stop: frame indices; ``stop=None`` means the end of the video.
        gray: yield ``(H, W)`` grey frames instead of ``(H, W, 3)`` RGB.
        info: a :class:`VideoInfo` from :func:`probe` (probed if omitted).
    """
    info = info or probe(path)
    stop = info.n_frames if stop is None else min(stop, info.n_frames)
    if start < 0 or start > stop:
        raise ValueError(f"{path}: invalid frame range [{start}, {stop}) for {info.n_frames} frames")
    if start == stop:
        return
    if info.seek_exact and (info.frame_pts_step > 0 or (info.rate and not info.counted)):
        yield from _decode_range(path, start, stop, info.start_pts, info.ticks_per_frame, gray)
        return
    # Variable frame rate, or a file whose keyframes cannot be decoded alone:
    # decode sequentially from the start.
    with _open(path) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i >= stop:
                return
            if i >= start:
                yield _to_array(frame, gray)


def read_frames(
    path: str | os.PathLike,
    start: int = 0,
    stop: int | None = None,
    halo: int = 0,
    gray: bool = False,
    info: VideoInfo | None = None,
) -> tuple[np.ndarray, int]:
    """Decode the chunk ``[start, stop)`` with up to ``halo`` extra frames on each side.

    The halo is clipped at the video's ends.

    Returns:
        ``(frames, first)``: ``frames`` is ``(T, H, W)`` (grey) or
        ``(T, H, W, 3)`` (RGB) uint8, and ``first`` is the index of
        ``frames[0]`` in the video, so frame ``i`` is ``frames[i - first]``.

    Raises:
        VideoError: when fewer frames decode than the range asks for
            (a truncated file).
    """
    info = info or probe(path)
    stop = info.n_frames if stop is None else min(stop, info.n_frames)
    first = max(0, start - halo)
    last = min(info.n_frames, stop + halo)
    frames = list(iter_frames(path, first, last, gray=gray, info=info))
    if len(frames) != last - first:
        raise VideoError(
            f"{path}: expected {last - first} frames in [{first}, {last}), decoded {len(frames)}; "
            "the file is truncated or its frame count is wrong"
        )
    shape = (0, info.height, info.width) if gray else (0, info.height, info.width, 3)
    array = np.stack(frames) if frames else np.zeros(shape, np.uint8)
    return array, first


def file_checksum(path: str | os.PathLike, algorithm: str = "sha256", block: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (``"sha256:<hex>"``), for provenance attributes."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


def write_video(path: str | os.PathLike, frames, fps: float, codec: str = "libx264", crf: int = 18) -> None:
    """Encode frames (iterable of ``(H, W, 3)`` uint8 RGB or ``(H, W)`` grey) to a video file.

    Writes to a temporary name and renames on success, so a failure leaves no file.
    """
    path = Path(path)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    try:
        with av.open(str(tmp), mode="w") as out:
            stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "g": "25"}
            started = False
            for frame in frames:
                frame = np.asarray(frame, dtype=np.uint8)
                if frame.ndim == 2:
                    frame = np.repeat(frame[..., None], 3, axis=2)
                if not started:
                    stream.height, stream.width = frame.shape[:2]
                    started = True
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
