"""Zarr stores: named dimensions, provenance, atomic writes, consolidation.

The layout (which arrays, their dimensions and units) is documented in
``docs/architecture.md``. Two rules keep concurrent jobs safe:

* a chunk job writes its own store, under a temporary name that is renamed
  when complete, so a failed job leaves nothing that looks finished;
* the per-video store is written by one job (``track``), with arrays chunked
  along ``frame`` at the chunk plan's size, so later per-chunk jobs that add
  arrays each own whole Zarr chunks.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import zarr

import sipec_models

# Consolidated metadata is a Zarr-python extension in format 3; we use it knowingly.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)

#: Dimension names and units of every array the pipeline writes.
ARRAY_SPECS: dict[str, tuple[tuple[str, ...], str]] = {
    "box": (("frame", "instance", "coord"), "px"),
    "com": (("frame", "instance", "xy"), "px"),
    "area": (("frame", "instance"), "px^2"),
    "score": (("frame", "instance"), "1"),
    "flags": (("frame", "instance"), "bits"),
    "n_found": (("frame",), "count"),
    "crop_origin": (("frame", "instance", "xy"), "px"),
    "mask": (("frame", "instance", "y", "x"), "bool"),
    "crop": (("frame", "instance", "y", "x"), "grey level"),
    "local_track": (("frame", "instance"), "id"),
    "track": (("frame", "animal"), "id"),
    "identity_prob": (("frame", "animal", "identity"), "1"),
    "keypoints": (("frame", "instance", "keypoint", "xy"), "px"),
    "keypoint_confidence": (("frame", "instance", "keypoint"), "1"),
    "behaviour_prob": (("frame", "animal", "behaviour"), "1"),
}


@dataclass(frozen=True)
class Field:
    """One array to write: data plus its dimension names and unit."""

    data: np.ndarray
    dims: tuple[str, ...]
    units: str = ""


def dims_for(name: str, array: np.ndarray, instance_dim: str = "instance") -> tuple[str, ...]:
    """Dimension names for a known array name (``crop`` gains ``channel`` when RGB)."""
    if name not in ARRAY_SPECS:
        raise KeyError(f"no dimension names registered for array {name!r}; add it to ARRAY_SPECS")
    dims = ARRAY_SPECS[name][0]
    if name == "crop" and array.ndim == 5:
        dims = dims + ("channel",)
    dims = tuple(instance_dim if d == "instance" else d for d in dims)
    if len(dims) != array.ndim:
        raise ValueError(f"array {name!r} has {array.ndim} dimensions, expected {dims}")
    return dims


def spec_field(name: str, array: np.ndarray, instance_dim: str = "instance") -> Field:
    """A :class:`Field` with the registered dimension names and unit of array ``name``."""
    return Field(np.asarray(array), dims_for(name, np.asarray(array), instance_dim), ARRAY_SPECS[name][1])


def code_version() -> str:
    """Package version, plus the git commit when run from a checkout."""
    version = sipec_models.__version__
    root = Path(sipec_models.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        version += f"+g{commit}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def provenance(video: str | os.PathLike, checksum: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``provenance`` attribute every store carries."""
    return {
        "video": str(video),
        "video_checksum": checksum,
        "code_version": code_version(),
        "config": dict(config),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; rename it to ``path`` on success.

    On an exception the temporary directory is removed and ``path`` is left
    as it was (absent, for a Snakemake output).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fill_value(dtype: np.dtype):
    """NaN for floats, -1 for int32/int64 (ids), 0 otherwise (counts, flags, masks, pixels)."""
    if np.issubdtype(dtype, np.floating):
        return np.nan
    if dtype == np.bool_:
        return False
    if np.issubdtype(dtype, np.signedinteger) and dtype.itemsize >= 4:
        return -1
    return 0


def create_array(group: zarr.Group, name: str, shape: Sequence[int], dtype, dims: Sequence[str],
                 units: str = "", frame_chunk: int | None = None) -> zarr.Array:
    """Create an empty array with named dimensions, a ``units`` attribute and frame-aligned chunks."""
    dtype = np.dtype(dtype)
    return group.create_array(
        name,
        shape=tuple(shape),
        dtype=dtype,
        chunks=_chunks(shape, dims, frame_chunk, dtype.itemsize),
        dimension_names=tuple(dims),
        fill_value=_fill_value(dtype),
        attributes={"units": units},
    )


def write_store(
    path: str | os.PathLike,
    fields: Mapping[str, Field],
    attrs: Mapping[str, Any],
    frame_chunk: int | None = None,
) -> Path:
    """Write a complete Zarr v3 store atomically and consolidate its metadata.

    Args:
        path: the store directory (``.zarr``).
        fields: array name -> :class:`Field`.
        attrs: store attributes (JSON-serialisable).
        frame_chunk: Zarr chunk length along a leading ``frame`` dimension
            (default: the whole array in one chunk along frame).
    """
    with atomic_directory(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        group.attrs.update(dict(attrs))
        for name, field in fields.items():
            data = np.asarray(field.data)
            array = create_array(group, name, data.shape, data.dtype, field.dims, field.units, frame_chunk)
            if data.size:
                array[...] = data
        zarr.consolidate_metadata(str(tmp))
    return Path(path)


def _chunks(shape: Sequence[int], dims: Sequence[str], frame_chunk: int | None, itemsize: int = 1) -> tuple[int, ...]:
    chunks = [max(1, s) for s in shape]
    if dims and dims[0] == "frame" and frame_chunk:
        chunks[0] = max(1, min(frame_chunk, shape[0]))
    # Image-like arrays: keep chunks below ~16 MB by chunking frames further.
    per_frame = int(np.prod(chunks[1:])) * itemsize if len(chunks) > 1 else 1
    if per_frame * chunks[0] > (16 << 20):
        step = max(1, (16 << 20) // max(per_frame, 1))
        if frame_chunk:
            # Stay aligned with the job chunks: a divisor of frame_chunk.
            while frame_chunk % step:
                step -= 1
        chunks[0] = step
    return tuple(chunks)


def open_store(path: str | os.PathLike) -> zarr.Group:
    """Open a store read-only; raises FileNotFoundError naming the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: Zarr store does not exist")
    try:
        return zarr.open_consolidated(str(path), mode="r")
    except (ValueError, KeyError, OSError):
        return zarr.open_group(str(path), mode="r")


def read_arrays(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read arrays of a store into memory (all arrays when ``names`` is None)."""
    group = open_store(path)
    names = list(names) if names is not None else sorted(k for k, _ in group.arrays())
    return {n: group[n][...] for n in names}


def dimension_names(array: zarr.Array) -> tuple[str, ...]:
    """The named dimensions of a Zarr v3 array."""
    return tuple(array.metadata.dimension_names or ())
