"""The ``track`` rule: stitch chunk-local tracks and consolidate the per-video store."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import zarr
from tqdm import tqdm

from sipec_models.inference.ingest import load_plan, load_probe
from sipec_models.io.store import ARRAY_SPECS, atomic_directory, create_array, dims_for, open_store, provenance
from sipec_models.tables import animal_names
from sipec_models.tracking import TrackingConfig, instances_to_slots, stitch_chunks

log = logging.getLogger(__name__)

#: Arrays needed to stitch tracks (read first, small); the rest is streamed chunk by chunk.
_STITCH = ("box", "com", "local_track")


def run_track(
    chunks: Sequence[str | Path], video_id: str, probe, plan, n_animals: int,
    options: Mapping[str, Any], out,
) -> Path:
    """Stitch the chunk stores of one video and write the consolidated video store ``out``.

    The video store holds every chunk array reordered to ``(frame, animal, ...)``
    with ``animal`` the stitched track slot ``0..n_animals-1``, plus ``track``
    ``(frame, animal)``; arrays are chunked along frame at the plan's chunk
    size. Instances that fit no animal slot (more than expected) are dropped
    here; ``n_found`` keeps their count per frame.
    """
    info, checksum = load_probe(probe)
    plan_data = load_plan(plan)
    planned = plan_data["chunks"]
    if len(chunks) != len(planned):
        raise ValueError(f"{plan}: plans {len(planned)} chunks but {len(chunks)} chunk stores were given")
    groups = [open_store(p) for p in chunks]
    for p, g, c in zip(chunks, groups, planned):
        got = (g.attrs["frame_start"], g.attrs["frame_stop"])
        if got != (c["start"], c["stop"]):
            raise ValueError(f"{p}: holds frames [{got[0]}, {got[1]}) but the plan's chunk {c['chunk']} "
                             f"is [{c['start']}, {c['stop']}); re-run its segment job")
    cfg = TrackingConfig.from_dict(options)
    stitch_inputs = [{k: g[k][...] for k in _STITCH} for g in groups]
    global_ids = stitch_chunks(stitch_inputs, n_animals=n_animals, method=cfg.method,
                               max_distance=cfg.max_distance, max_gap=cfg.max_gap)
    names = [k for k, _ in groups[0].arrays()]
    n_frames = plan_data["n_frames"]
    frame_chunk = plan_data["chunk_size"]
    with atomic_directory(out) as tmp:
        video = zarr.open_group(str(tmp), mode="w")
        video.attrs.update({
            "video_id": video_id, "n_frames": n_frames, "fps": info.fps, "width": info.width,
            "height": info.height, "n_animals": n_animals, "animal_names": animal_names(n_animals),
            "crop_size": groups[0].attrs["crop_size"], "segmenter": groups[0].attrs["segmenter"],
            "chunk_size": frame_chunk,
            "provenance": provenance(info.path, checksum, {
                "segmentation": groups[0].attrs["provenance"]["config"].get("segmentation", {}),
                "tracking": cfg.to_dict(),
            }),
        })
        arrays: dict[str, zarr.Array] = {}
        for g, ids, c in tqdm(list(zip(groups, global_ids, planned)), desc=f"{video_id}: consolidate", unit="chunk"):
            slots = instances_to_slots(ids, {n: g[n][...] for n in names}, n_slots=n_animals)
            for name, data in slots.items():
                if name not in arrays:
                    dims = dims_for(name, data, instance_dim="animal")
                    arrays[name] = create_array(video, name, (n_frames,) + data.shape[1:], data.dtype, dims,
                                                ARRAY_SPECS[name][1], frame_chunk)
                arrays[name][c["start"]:c["stop"]] = data
        zarr.consolidate_metadata(str(tmp))
    found = sum(int((ids >= 0).sum()) for ids in global_ids)
    log.info("%s: %d frames, %d animals, %d instance observations in %d chunks (%s tracking)",
             video_id, n_frames, n_animals, found, len(chunks), cfg.method)
    return Path(out)
