"""Instance segmentation of video frames with a trained SegNet (:mod:`sipec_models.nets.segnet`).

:class:`SegNetSegmenter` segments batches of grey frames into
:class:`~sipec_models.segmentation.classical.Instance` lists;
:func:`segment_chunk_segnet` fills the same chunk-store arrays as the
classical :func:`~sipec_models.segmentation.classical.segment_chunk`, so
tracking and merging work unchanged.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

import numpy as np
import torch
from tqdm import tqdm

from sipec_models.io.video import VideoError, VideoInfo, iter_frames
from sipec_models.nets.segnet import DecodeConfig, SegNet, decode, instances_from_labels, pad_to_multiple
from sipec_models.segmentation.classical import Instance, check_chunk_request, empty_chunk_arrays, store_instances
from sipec_models.tracking import TrackingConfig, track_chunk


class SegNetSegmenter:
    """Batched SegNet inference.

    Args:
        model_or_path: a trained :class:`SegNet` (with a ``config`` attribute,
            as returned by :func:`~sipec_models.training.segnet.train_segnet`)
            or a checkpoint path (:func:`~sipec_models.training.segnet.load_segnet`).
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        infer: overrides of the config's ``infer`` section (thresholds, batch_size).
    """

    def __init__(self, model_or_path: SegNet | str | os.PathLike, device: str | torch.device | None = None,
                 infer: Mapping[str, Any] | None = None):
        from sipec_models.training.segnet import load_segnet

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = model_or_path if isinstance(model_or_path, torch.nn.Module) else load_segnet(model_or_path)
        if not hasattr(model, "config"):
            raise ValueError("the SegNet model carries no config (train with train_segnet or load a checkpoint)")
        # channels-last memory layout: faster convolutions on CPUs (oneDNN) and on GPUs with tensor cores.
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)
        self.device = device
        self.config = model.config
        inf = {**self.config.get("infer", {}), **dict(infer or {})}
        self.input_scale = float(self.config["data"]["input_scale"])
        self.batch_size = int(inf.get("batch_size", 4))
        self.decode_cfg = DecodeConfig(fg_threshold=float(inf["fg_threshold"]),
                                       center_threshold=float(inf["center_threshold"]),
                                       nms_kernel=int(inf["nms_kernel"]), max_instances=int(inf["max_instances"]),
                                       min_area=int(inf["min_area"]),
                                       largest_component=bool(inf.get("largest_component", True)))

    def _input(self, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        from sipec_models.training.segnet import network_size, resize_images

        H, W = frames.shape[1:3]
        size = network_size(H, W, self.input_scale)
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)[:, None].float() / 255.0
        return pad_to_multiple(resize_images(x, size)).contiguous(memory_format=torch.channels_last), size

    @torch.inference_mode()
    def forward(self, frames: np.ndarray) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """Network outputs for ``(B, H, W)`` uint8 frames (no decoding); returns ``(maps, input_size)``."""
        x, size = self._input(frames)
        return self.model(x), size

    @torch.inference_mode()
    def segment_batch(self, frames: np.ndarray) -> list[list[Instance]]:
        """Segment ``(B, H, W)`` uint8 grey frames (in sub-batches of ``batch_size``).

        Returns:
            Per frame, instances sorted by descending score (``box``, ``mask``,
            ``com``, ``area`` in frame px; ``score`` = centre peak probability
            x mean foreground probability; ``flags`` 0).
        """
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3:
            raise ValueError(f"frames must be (B, H, W) uint8 grey, got {frames.shape}")
        out: list[list[Instance]] = []
        H, W = frames.shape[1:]
        for s in range(0, len(frames), self.batch_size):
            maps, size = self.forward(frames[s:s + self.batch_size])
            for labels, fg, peaks in decode(maps, (H, W), size, self.decode_cfg):
                out.append(instances_from_labels(labels, fg, peaks, self.decode_cfg.min_area,
                                                 self.decode_cfg.largest_component))
        return out


def segment_chunk_segnet(
    path: str | os.PathLike,
    start: int,
    stop: int,
    model: SegNetSegmenter | SegNet | str | os.PathLike,
    n_animals: int,
    n_instances: int,
    crop_size: int,
    color: str = "gray",
    info: VideoInfo | None = None,
    progress: bool = True,
    tracking: Mapping[str, Any] | TrackingConfig | None = None,
    batch_size: int | None = None,
    device: str | None = None,
) -> dict[str, np.ndarray]:
    """Segment frames ``[start, stop)`` with SegNet; the same arrays as the classical ``segment_chunk``.

    At most ``n_instances`` instances are kept per frame, the highest
    scoring; when more than ``n_animals`` are found, the kept ones carry
    :data:`~sipec_models.segmentation.flags.EXTRA`. ``local_track`` comes from
    :func:`~sipec_models.tracking.track_chunk`.

    Args:
        path: video file.
        start, stop: frame range; ``stop`` is clipped to the video's length.
        model: a :class:`SegNetSegmenter`, a trained :class:`SegNet` or a checkpoint path.
        n_animals, n_instances, crop_size, color, info, progress, tracking:
            as for :func:`~sipec_models.segmentation.classical.segment_chunk`.
        batch_size: frames per forward pass (default: the model's ``infer.batch_size``).
        device: for a model given as a network or path.

    Returns:
        ``box`` (T, I, 4) f32, ``com`` (T, I, 2) f32, ``area`` (T, I) f32,
        ``score`` (T, I) f32, ``flags`` (T, I) u8, ``n_found`` (T,) i16,
        ``crop_origin`` (T, I, 2) i32, ``mask`` (T, I, S, S) bool, ``crop``
        (T, I, S, S[, 3]) u8, ``local_track`` (T, I) i32; empty slots NaN, 0 or -1.

    Raises:
        VideoError: fewer frames decode than the range asks for.
    """
    info, stop, track_cfg = check_chunk_request(path, start, stop, n_animals, n_instances, crop_size, color, info,
                                                tracking)
    seg = model if isinstance(model, SegNetSegmenter) else SegNetSegmenter(model, device=device)
    bs = int(batch_size or seg.batch_size)
    T = stop - start
    out = empty_chunk_arrays(T, n_instances, crop_size, color)
    grey = iter_frames(path, start, stop, gray=True, info=info)
    rgb = iter_frames(path, start, stop, gray=False, info=info) if color == "rgb" else None
    name = os.path.basename(os.fspath(path))
    bar = tqdm(total=T, disable=not progress, file=sys.stderr, desc=f"segnet {name} [{start}, {stop})", unit="frame")
    t = 0

    def flush(buf_grey, buf_img):
        nonlocal t
        for inst, image in zip(seg.segment_batch(np.stack(buf_grey)), buf_img):
            store_instances(out, t, inst, image, n_animals)
            t += 1
        bar.update(len(buf_grey))

    buf_g, buf_i = [], []
    for frame in grey:
        buf_g.append(frame)
        buf_i.append(next(rgb) if rgb is not None else frame)
        if len(buf_g) == bs:
            flush(buf_g, buf_i)
            buf_g, buf_i = [], []
    if buf_g:
        flush(buf_g, buf_i)
    bar.close()
    if t != T:
        raise VideoError(f"{path}: expected {T} frames in [{start}, {stop}), decoded {t}")
    out["local_track"] = track_chunk(out["box"], out["com"], n_animals=n_animals, method=track_cfg.method,
                                     max_distance=track_cfg.max_distance, max_gap=track_cfg.max_gap)
    return out
