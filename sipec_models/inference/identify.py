"""The ``identify`` rule: SIPEC:IdNet identity probabilities for one chunk of a segmented video."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sipec_models.inference.ingest import plan_chunk
from sipec_models.io.store import open_store, provenance, spec_field, write_store
from sipec_models.io.video import probe, read_frames
from sipec_models.training.idnet import IdNetModel, load_idnet, sequences_from_block

log = logging.getLogger(__name__)


def identify_frames(model: IdNetModel, frames: np.ndarray, masks: np.ndarray, origins: np.ndarray,
                    centre: slice, batch_size: int = 64, device=None, progress: bool = True,
                    desc: str = "identify") -> np.ndarray:
    """Identity probabilities of every animal with a mask in frames ``centre`` of a block.

    Args:
        model: a loaded IdNet (:func:`~sipec_models.training.idnet.load_idnet`).
        frames: ``(F, H, W)`` uint8 grey frames (the chunk plus its halo).
        masks: ``(F, A, S, S)`` bool mask windows aligned with ``frames``.
        origins: ``(F, A, 2)`` window corners.
        centre: the frames (indices into ``frames``) to identify.

    Returns:
        ``(n_centre, A, K)`` float32 probabilities; NaN where the slot has no mask.
        The recurrent network is used when the model has one (``half_window > 0``), else the frame network.
    """
    device = torch.device(device or "cpu")
    idx = range(*centre.indices(len(frames)))
    A, K = masks.shape[1], len(model.names)
    out = np.full((len(idx), A, K), np.nan, np.float32)
    valid = masks.any(axis=(2, 3))
    items = [(t, a) for t in idx for a in range(A) if valid[t, a]]
    recurrent = model.recurrent if model.crop.half_window > 0 else None
    step = max(1, batch_size)
    with torch.inference_mode():
        for i in tqdm(range(0, len(items), step), disable=not progress, file=sys.stderr, desc=desc, unit="batch"):
            batch = items[i:i + step]
            seq = sequences_from_block(frames, masks, origins, batch, model.crop)
            x = torch.from_numpy(seq).to(device).float() / 255.0
            if recurrent is not None:
                logits = recurrent(x[:, :, None])
            else:
                c = seq.shape[1] // 2
                logits = model.frame_net(x[:, c:c + 1])
            p = torch.softmax(logits, dim=1).cpu().numpy()
            for (t, a), row in zip(batch, p):
                out[t - idx.start, a] = row
    return out


def run_identify(video, store, plan, chunk: int, model, out, batch_size: int = 64, device=None) -> Path:
    """Identify the animals of chunk ``chunk`` of a segmented video and write the chunk store ``out``.

    Reads frames ``[start, stop)`` of the chunk plus ``half_window`` frames on
    each side (clipped at the video's ends), the masks and window corners of
    those frames from the video store ``store`` (``<video>.zarr``), and runs
    the IdNet checkpoint ``model`` (path or loaded :class:`IdNetModel`) on every
    (frame, animal) with a mask, in batches of ``batch_size``.

    Writes ``out`` with ``identity_prob`` ``(frame, animal, identity)``
    float32 (NaN for empty slots) and attributes ``identity_names``,
    ``frame_start``, ``frame_stop``, ``chunk``, ``n_animals``, ``provenance``.
    """
    model_path = "" if isinstance(model, IdNetModel) else str(model)
    model = model if isinstance(model, IdNetModel) else load_idnet(model, device=device)
    start, stop = plan_chunk(plan, chunk)
    group = open_store(store)
    n_frames = int(group.attrs["n_frames"])
    if stop > n_frames:
        raise ValueError(f"{store}: holds {n_frames} frames but chunk {chunk} ends at {stop}")
    h = model.crop.half_window
    info = probe(video)
    frames, first = read_frames(video, start, stop, halo=h, gray=True, info=info)
    last = first + len(frames)
    if last > n_frames:
        frames, last = frames[:n_frames - first], n_frames
    masks = group["mask"][first:last]
    origins = group["crop_origin"][first:last]
    prob = identify_frames(model, frames, masks, origins, slice(start - first, stop - first), batch_size,
                           device, desc=f"identify {Path(video).name} [{start}, {stop})")
    prov = group.attrs.get("provenance", {}) or {}
    attrs = {
        "video_id": group.attrs.get("video_id", Path(video).stem), "chunk": chunk, "frame_start": start,
        "frame_stop": stop, "n_animals": int(masks.shape[1]), "identity_names": list(model.names),
        "provenance": provenance(video, prov.get("video_checksum", ""), {
            "identity": {"model": model_path,
                         "crop": model.crop.to_dict(), "recurrent": model.recurrent is not None and h > 0},
        }),
    }
    write_store(out, {"identity_prob": spec_field("identity_prob", prob, instance_dim="animal")}, attrs)
    n = int(np.isfinite(prob[..., 0]).sum())
    log.info("chunk %d [%d, %d): identified %d animal observations", chunk, start, stop, n)
    return Path(out)
