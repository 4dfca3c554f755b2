"""Keypoint (pose) labels and predictions: SLEAP and DeepLabCut import and export, one plain structure.

Everything is read into :class:`KeypointLabels`: a :class:`Skeleton` (node
names, edges, left/right ``flip_pairs``) and one :class:`PoseFrame` per
labelled frame holding ``points`` ``(N_animals, K, 2)`` float64 ``(x, y)``
in frame px (NaN for a keypoint that is not labelled; missing stays missing,
never zero), the animals' track (identity) names and, for predictions,
per-keypoint ``scores`` ``(N_animals, K)``.

Coordinates: ``x`` is the column and ``y`` the row in pixels of the full
frame, with pixel ``(x, y)`` centred on integer coordinates (it covers
``[x - 0.5, x + 0.5)``), as in the rest of the package.

Readers (:func:`load_keypoints`), all through sleap-io 0.9 where it can:

* **SLEAP** ``.slp`` (and other sleap-io formats): ``sio.load_slp``, else
  ``sio.load_file``. User-labelled instances are preferred over
  predictions in a frame that holds both (``instances``).
* **DeepLabCut project** (the folder with ``config.yaml`` and
  ``labeled-data/``, or the ``config.yaml``): ``sio.load_dlc_project``.
* **DeepLabCut CSV** ``CollectedData_<scorer>.csv`` (3-row header
  ``scorer/bodyparts/coords``, or 4 rows with ``individuals`` for
  multi-animal projects), indexed by image paths: ``sio.load_dlc``.
  sleap-io cannot read two kinds of DLC CSV and those go through pandas
  instead: files whose index holds frame numbers (DLC's analysis output,
  and :func:`to_dlc_csv` for video predictions) or image paths that do not
  exist beside the file (its loader silently drops those frames), and files
  with ``likelihood`` columns (its loader discards them).
* **DeepLabCut H5** (the same table, pandas ``to_hdf(format="table")``):
  sleap-io treats ``.h5`` as SLEAP analysis files and pandas needs
  PyTables, which is not installed, so the table is read with h5py (the
  pandas metadata is a protocol-0 pickle of plain strings, unpickled
  without allowing any class). SLEAP analysis ``.h5`` go to sleap-io.

sleap-io orders DLC nodes alphabetically; here the file's column order is
kept (snout, leftear, rightear, tailbase for the open-field project).
sleap-io numbers DLC frames by their position in the sorted image list;
here ``frame`` is the number in the image's name (DLC names extracted
frames ``img<frame index in the source video>.png``) and ``image`` keeps
the file, ``video`` its folder.

Writers: :func:`to_slp` (sleap-io ``save_slp``: user instances for labels,
``PredictedInstance`` with point scores for predictions) and
:func:`to_dlc_csv` (DLC's multi-row-header CSV, ``likelihood`` columns for
predictions). Both read back to equal arrays (tests check the round trip).
:func:`read_pose_images` gives the pixels of labelled frames.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

#: Image file extensions recognised in DLC index columns.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Left/right name tokens tried when no flip pairs are given (case-insensitive).
SIDE_TOKENS = (("left", "right"), ("l", "r"))


# --------------------------------------------------------------------------- structures


@dataclass
class Skeleton:
    """Body nodes of a pose.

    Attributes:
        nodes: ``K`` node names; node ``k`` is channel ``k`` of every array.
        edges: pairs of node indices (for drawing; not used by the networks).
        flip_pairs: ``(left, right)`` node-index pairs that exchange identity
            when the image is mirrored.
    """

    nodes: list[str]
    edges: list[tuple[int, int]] = field(default_factory=list)
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self):
        self.nodes = [str(n) for n in self.nodes]
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"skeleton node names are not unique: {self.nodes}")
        K = len(self.nodes)
        self.edges = [(int(a), int(b)) for a, b in self.edges]
        self.flip_pairs = [(int(a), int(b)) for a, b in self.flip_pairs]
        for a, b in self.edges + self.flip_pairs:
            if not (0 <= a < K and 0 <= b < K):
                raise ValueError(f"skeleton pair ({a}, {b}) is outside the {K} nodes")
        used = [i for p in self.flip_pairs for i in p]
        if len(used) != len(set(used)) or any(a == b for a, b in self.flip_pairs):
            raise ValueError(f"flip_pairs must pair distinct nodes, each at most once: {self.flip_pairs}")

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    def flip_permutation(self) -> np.ndarray:
        """``(K,)`` int: ``perm[k]`` is the node that takes node ``k``'s place in a mirrored image."""
        return flip_permutation(self.n_nodes, self.flip_pairs)


def flip_permutation(n_nodes: int, flip_pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """``(n_nodes,)`` int permutation that swaps each ``(left, right)`` pair and keeps other nodes."""
    perm = np.arange(n_nodes)
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


@dataclass
class PoseFrame:
    """Keypoints of the animals in one frame.

    Attributes:
        video: the video file, or for image-folder labels (DLC's
            ``labeled-data/<video>/``) the folder; None when unknown.
        frame: frame index in the video (for image files: the number in the
            file name), or None.
        points: ``(N, K, 2)`` float64 ``(x, y)`` frame px, NaN where a
            keypoint is not labelled / not predicted.
        tracks: ``N`` track (identity) names, None for untracked animals.
        image: the image file holding this frame's pixels (DLC), else None.
        scores: ``(N, K)`` float64 per-keypoint confidence of predictions
            (NaN where missing or for human labels), or None for human labels.
    """

    video: str | None
    frame: int | None
    points: np.ndarray
    tracks: list[str | None] = field(default_factory=list)
    image: str | None = None
    scores: np.ndarray | None = None

    def __post_init__(self):
        self.points = np.asarray(self.points, np.float64)
        if self.points.ndim != 3 or self.points.shape[-1] != 2:
            raise ValueError(f"points must be (N, K, 2), got {self.points.shape}")
        if not self.tracks:
            self.tracks = [None] * len(self.points)
        if len(self.tracks) != len(self.points):
            raise ValueError(f"{len(self.tracks)} track names for {len(self.points)} animals")
        if self.scores is not None:
            self.scores = np.array(self.scores, np.float64).reshape(self.points.shape[:2])
            self.scores[~np.isfinite(self.points).all(-1)] = np.nan


@dataclass
class KeypointLabels:
    """Pose labels or predictions of one or more videos.

    Attributes:
        skeleton: node names, edges and flip pairs.
        frames: one :class:`PoseFrame` per labelled frame.
        source: the file they were read from (None when built in memory).
    """

    skeleton: Skeleton
    frames: list[PoseFrame]
    source: str | None = None

    def __post_init__(self):
        K = self.skeleton.n_nodes
        for f in self.frames:
            if f.points.shape[1] != K and len(f.points):
                raise ValueError(f"frame {f.frame}: {f.points.shape[1]} keypoints, skeleton has {K}")
            if not len(f.points):
                f.points = f.points.reshape(0, K, 2)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def videos(self) -> list[str]:
        """Distinct ``video`` entries, in order of first appearance."""
        return list(dict.fromkeys(f.video for f in self.frames if f.video is not None))

    @property
    def track_names(self) -> list[str]:
        """Distinct track names, in order of first appearance."""
        return list(dict.fromkeys(t for f in self.frames for t in f.tracks if t is not None))

    def instances(self) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """All animals of all frames: ``points (M, K, 2)``, ``frame_row (M,)`` (index into :attr:`frames`), tracks."""
        K = self.skeleton.n_nodes
        pts = [f.points for f in self.frames]
        rows = [np.full(len(f.points), i) for i, f in enumerate(self.frames)]
        tracks = [t for f in self.frames for t in f.tracks]
        if not pts:
            return np.zeros((0, K, 2)), np.zeros(0, int), []
        return np.concatenate(pts), np.concatenate(rows).astype(int), tracks

    def points_by_track(self, tracks: Sequence[str] | None = None) -> np.ndarray:
        """``(F, A, K, 2)`` points with animal slot ``a`` = track ``tracks[a]`` (default :attr:`track_names`).

        For untracked labels (one animal per frame, as DLC single-animal
        projects) ``A`` = the largest animal count per frame and animals keep
        their order within the frame. NaN fills empty slots.
        """
        K = self.skeleton.n_nodes
        tracks = list(tracks) if tracks is not None else self.track_names
        if tracks:
            out = np.full((len(self.frames), len(tracks), K, 2), np.nan)
            slot = {t: i for i, t in enumerate(tracks)}
            for i, f in enumerate(self.frames):
                for p, t in zip(f.points, f.tracks):
                    if t in slot:
                        out[i, slot[t]] = p
            return out
        A = max((len(f.points) for f in self.frames), default=0)
        out = np.full((len(self.frames), A, K, 2), np.nan)
        for i, f in enumerate(self.frames):
            out[i, :len(f.points)] = f.points
        return out

    @classmethod
    def from_arrays(cls, points: np.ndarray, skeleton: Skeleton, video: str | os.PathLike | None = None,
                    frames: Sequence[int] | None = None, scores: np.ndarray | None = None,
                    tracks: Sequence[str | None] | None = None, images: Sequence[str | None] | None = None,
                    drop_empty: bool = True) -> "KeypointLabels":
        """Labels (or predictions) from arrays.

        Args:
            points: ``(T, K, 2)`` (one animal per frame) or ``(T, A, K, 2)`` frame px, NaN missing.
            skeleton: the nodes.
            video: video path (or image folder) of all frames.
            frames: ``T`` frame indices (default ``0..T-1``).
            scores: ``(T, K)`` / ``(T, A, K)`` confidences (predictions), or None (human labels).
            tracks: ``A`` track names for the animal slots (None: untracked).
            images: ``T`` image file paths (image-folder sources), or None.
            drop_empty: leave out animals whose keypoints are all NaN.
        """
        points = np.asarray(points, np.float64)
        if points.ndim == 3:
            points = points[:, None]
            scores = None if scores is None else np.asarray(scores, np.float64)[:, None]
        if points.ndim != 4 or points.shape[-1] != 2 or points.shape[2] != skeleton.n_nodes:
            raise ValueError(f"points must be (T, [A,] {skeleton.n_nodes}, 2), got {points.shape}")
        T, A = points.shape[:2]
        frames = list(range(T)) if frames is None else [int(i) for i in frames]
        tracks = [None] * A if tracks is None else list(tracks)
        if len(frames) != T or len(tracks) != A or (images is not None and len(images) != T):
            raise ValueError("frames / images need one entry per frame and tracks one per animal slot")
        if scores is not None:
            scores = np.asarray(scores, np.float64).reshape(T, A, skeleton.n_nodes)
        out = []
        for t in range(T):
            keep = [a for a in range(A) if not drop_empty or np.isfinite(points[t, a]).all(-1).any()]
            out.append(PoseFrame(video=None if video is None else str(video), frame=frames[t],
                                 points=points[t, keep], tracks=[tracks[a] for a in keep],
                                 image=None if images is None else images[t],
                                 scores=None if scores is None else scores[t, keep]))
        return cls(skeleton, out)


# --------------------------------------------------------------------------- skeleton helpers


def _concatenated_side_pairs(nodes: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs of names that differ only by a glued ``left``/``right`` prefix or suffix (``leftear``/``rightear``)."""
    sides: dict[str, dict[str, list[int]]] = {}
    for i, name in enumerate(nodes):
        low = name.lower()
        for side, token in (("L", "left"), ("R", "right")):
            for stem in ([low[len(token):]] if low.startswith(token) else []) + (
                    [low[:-len(token)]] if low.endswith(token) else []):
                stem = stem.strip("_-. ")
                if stem:
                    sides.setdefault(stem, {"L": [], "R": []})[side].append(i)
    return [(b["L"][0], b["R"][0]) for b in sides.values() if len(b["L"]) == 1 and len(b["R"]) == 1]


def find_flip_pairs(nodes: Sequence[str], flip_pairs: Iterable[tuple[int | str, int | str]] | None = None
                    ) -> list[tuple[int, int]]:
    """Left/right node pairs.

    Args:
        nodes: node names.
        flip_pairs: explicit pairs of node names or indices; when given they
            are used as they are.

    Returns:
        ``(left, right)`` index pairs, sorted. Without explicit pairs:
        sleap-io's ``infer_symmetry_pairs_by_name`` (name segments ``left``/
        ``right``/``L``/``R`` split at ``_``, ``-``, spaces and camelCase:
        ``wingL``/``wingR``, ``ear_l``/``ear_r``, ``left_ear``), plus names
        with ``left``/``right`` glued to the stem (``leftear``/``rightear``);
        a node joins at most one pair.
    """
    import sleap_io as sio

    nodes = [str(n) for n in nodes]
    if flip_pairs is not None:
        out = []
        for a, b in flip_pairs:
            try:
                ia = a if isinstance(a, (int, np.integer)) else nodes.index(str(a))
                ib = b if isinstance(b, (int, np.integer)) else nodes.index(str(b))
            except ValueError:
                raise ValueError(f"flip pair ({a!r}, {b!r}) names a node not in {nodes}") from None
            out.append((int(ia), int(ib)))
        return sorted(out)
    pairs = [tuple(map(int, p)) for p in sio.infer_symmetry_pairs_by_name(nodes, list(SIDE_TOKENS))]
    used = {i for p in pairs for i in p}
    for a, b in _concatenated_side_pairs(nodes):
        if a not in used and b not in used:
            pairs.append((a, b))
            used |= {a, b}
    return sorted(pairs)


def _skeleton_from_sio(sk, order: Sequence[str] | None, flip_pairs) -> tuple[Skeleton, np.ndarray]:
    """Our :class:`Skeleton` from a sleap-io one, nodes in ``order`` (names; default sleap-io's order).

    Returns the skeleton and ``perm``: our node ``k`` is sleap-io node ``perm[k]``.
    """
    names = list(sk.node_names)
    if order:
        head = [n for n in order if n in names]
        new = head + [n for n in names if n not in head]
    else:
        new = names
    perm = np.array([names.index(n) for n in new], int)
    inv = {int(old): k for k, old in enumerate(perm)}
    edges = [(inv[a], inv[b]) for a, b in sk.edge_inds]
    if flip_pairs is None and sk.symmetries:
        pairs = sorted({tuple(sorted((inv[a], inv[b]))) for a, b in sk.symmetry_inds})
    else:
        pairs = find_flip_pairs(new, flip_pairs)
    return Skeleton(new, edges, pairs), perm


# --------------------------------------------------------------------------- readers


def _frame_number(name: str) -> int | None:
    digits = re.findall(r"\d+", Path(name).stem)
    return int(digits[-1]) if digits else None


def _resolve_video(filename: str, label_file: Path) -> str:
    """A label file's video path: as stored when it exists, else beside the label file (SLEAP's rule)."""
    p = Path(filename)
    for cand in (p if p.is_absolute() else label_file.parent / p, p, label_file.parent / p.name):
        if cand.exists():
            return str(cand.resolve())
    return str(p if p.is_absolute() else label_file.parent / p)


def _from_sio(labels, path: Path, instances: str, order: Sequence[str] | None, flip_pairs) -> KeypointLabels:
    """Convert a sleap-io ``Labels`` to :class:`KeypointLabels`."""
    import sleap_io as sio

    if instances not in ("user_first", "user", "predicted", "all"):
        raise ValueError(f"instances must be 'user_first', 'user', 'predicted' or 'all', not {instances!r}")
    if len(labels.skeletons) != 1:
        raise ValueError(f"{path}: holds {len(labels.skeletons)} skeletons; exactly one is supported")
    skeleton, perm = _skeleton_from_sio(labels.skeletons[0], order, flip_pairs)
    K = skeleton.n_nodes
    frames = []
    for lf in labels.labeled_frames:
        vid = lf.video
        fname = vid.filename if vid is not None else None
        image = None
        if isinstance(fname, (list, tuple)):  # image sequence (DLC labelled-data)
            image = str(fname[lf.frame_idx])
            video = str(Path(image).parent)
            number = _frame_number(image)
            frame = number if number is not None else int(lf.frame_idx)
        else:
            video = None if fname is None else _resolve_video(str(fname), path)
            frame = int(lf.frame_idx)
        user, pred = list(lf.user_instances), list(lf.predicted_instances)
        chosen = {"user_first": user or pred, "user": user, "predicted": pred, "all": user + pred}[instances]
        pts = np.full((len(chosen), K, 2), np.nan)
        scores = np.full((len(chosen), K), np.nan)
        any_pred = False
        for n, inst in enumerate(chosen):
            if isinstance(inst, sio.PredictedInstance):
                arr = inst.numpy(scores=True)
                scores[n] = arr[perm, 2]
                any_pred = True
            else:
                arr = inst.numpy()
            pts[n] = arr[perm, :2]
        scores[~np.isfinite(pts).all(-1)] = np.nan
        frames.append(PoseFrame(video, frame, pts, [inst.track.name if inst.track is not None else None
                                                    for inst in chosen], image, scores if any_pred else None))
    return KeypointLabels(skeleton, frames, str(path))


def _read_header(path: Path) -> tuple[list[list[str]], bool]:
    """The DLC header rows (3, or 4 with ``individuals``) of a CSV; raises ValueError when it is not DLC."""
    try:
        head = pd.read_csv(path, header=None, nrows=4, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as CSV ({exc})") from None
    rows = [list(map(str, head.iloc[i])) for i in range(min(4, len(head)))]
    first = [r[0].strip().lower() for r in rows]
    if len(rows) < 3 or first[0] != "scorer":
        raise ValueError(f"{path}: not a DeepLabCut CSV (the first header cell must be 'scorer', "
                         f"then 'bodyparts' or 'individuals', then 'coords')")
    multi = first[1] == "individuals"
    n = 4 if multi else 3
    if len(rows) < n or first[n - 1] != "coords" or (not multi and first[1] != "bodyparts") or (
            multi and first[2] != "bodyparts"):
        raise ValueError(f"{path}: DeepLabCut CSV header rows must be scorer/bodyparts/coords or "
                         f"scorer/individuals/bodyparts/coords, found {first[:n]}")
    coords = {c for c in rows[n - 1][1:] if c}  # newer DLC: empty cells over the extra index columns
    if not {"x", "y"} <= coords or not coords <= {"x", "y", "likelihood"}:
        raise ValueError(f"{path}: DeepLabCut 'coords' row must hold x, y (and likelihood), found {sorted(coords)}")
    return rows[:n], multi


def _dlc_order(rows: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(c for c in rows[-2][1:] if c))


def _looks_like_image(name: str) -> bool:
    return Path(str(name).replace("\\", "/")).suffix.lower() in IMAGE_EXTENSIONS


def _image_candidates(path: Path, rel: str) -> list[Path]:
    rel = rel.replace("\\", "/")
    p = Path(rel)
    if p.is_absolute():
        return [p]
    return [path.parent / p, path.parent / p.name, path.parent.parent / p, path.parent.parent.parent / p]


def _sleap_io_can_read(path: Path, n_header: int) -> bool:
    """Whether sleap-io's DLC loader keeps every row: image-path index and the images where it looks."""
    df = pd.read_csv(path, header=None, skiprows=n_header, usecols=[0, 1, 2], dtype=str, keep_default_na=False)
    if not len(df):
        return False
    # Newer DLC writes the index as three columns: labeled-data, <video>, <image>.
    if (df.iloc[:, 0] == "labeled-data").all():
        idx = ("labeled-data/" + df.iloc[:, 1] + "/" + df.iloc[:, 2]).tolist()
    else:
        idx = df.iloc[:, 0].tolist()
    if not all(_looks_like_image(i) for i in idx):
        return False
    for rel in idx:
        rel = rel.replace("\\", "/")
        p = Path(rel)
        if not ((path.parent / p).exists() or (path.parent / p.name).exists() or (path.parent.parent / p).exists()):
            return False
    return True


def _find_dlc_config(path: Path) -> dict | None:
    import yaml

    for d in [path.parent, *path.parents][:4]:
        cand = d / "config.yaml"
        if cand.is_file():
            try:
                cfg = yaml.safe_load(cand.read_text())
            except Exception:
                continue
            if isinstance(cfg, dict) and ("bodyparts" in cfg or "multianimalbodyparts" in cfg):
                return cfg
    return None


def _dlc_dataframe_csv(path: Path, n_header: int) -> pd.DataFrame:
    df = pd.read_csv(path, header=list(range(n_header)), index_col=0)
    # Newer DLC: the index is spread over three columns (labeled-data, video, image).
    lead = [c for c in df.columns if str(c[0]).startswith("Unnamed")]
    if lead:
        first = df.index.astype(str)
        parts = [first] + [df[c].astype(str) for c in lead]
        df = df.drop(columns=lead)
        df.index = ["/".join(v) for v in zip(*parts)]
    return df


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only built-in containers and strings: refuses every class or function reference."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle_attr(value) -> object:
    return _PlainUnpickler(io.BytesIO(bytes(value))).load()


def _dlc_dataframe_h5(path: Path) -> pd.DataFrame:
    """A DLC ``.h5`` (pandas ``frame_table`` written by PyTables) as a DataFrame, read with h5py."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not an HDF5 file ({exc})") from None
    with f:
        keys = [k for k in f if isinstance(f[k], h5py.Group) and "pandas_type" in f[k].attrs]
        if not keys:
            raise ValueError(f"{path}: no pandas table in this HDF5 file (not a DeepLabCut .h5 or SLEAP file)")
        g = f["df_with_missing"] if "df_with_missing" in keys else f[keys[0]]
        kind = g.attrs["pandas_type"]
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind != "frame_table" or "table" not in g:
            raise ValueError(f"{path}: pandas {kind!r} storage is not supported without PyTables; "
                             "read the DeepLabCut CSV written beside it")
        try:
            index_cols = _unpickle_attr(g.attrs["index_cols"])
            columns = _unpickle_attr(g.attrs["non_index_axes"])[0][1]
            blocks = _unpickle_attr(g.attrs["values_cols"])
        except Exception as exc:
            raise ValueError(f"{path}: unreadable pandas metadata ({exc})") from None
        table = g["table"][()]
        if len(index_cols) != 1:
            raise ValueError(f"{path}: a multi-level row index is not supported; read the CSV beside it")
        index = [v.decode() if isinstance(v, bytes) else str(v) for v in table[index_cols[0][1]]]
        cols = [tuple(map(str, c)) if isinstance(c, (tuple, list)) else (str(c),) for c in columns]
        data = np.full((len(table), len(cols)), np.nan)
        pos = 0
        for b in blocks:
            vals = np.asarray(table[b], np.float64).reshape(len(table), -1)
            kind_attr = f"{b}_kind"
            names = _unpickle_attr(g["table"].attrs[kind_attr]) if kind_attr in g["table"].attrs else None
            if names is not None and len(names) == vals.shape[1]:
                for j, c in enumerate(names):
                    key = tuple(map(str, c)) if isinstance(c, (tuple, list)) else (str(c),)
                    data[:, cols.index(key)] = vals[:, j]
            else:
                data[:, pos:pos + vals.shape[1]] = vals
            pos += vals.shape[1]
    levels = len(cols[0])
    if levels not in (3, 4):
        raise ValueError(f"{path}: DeepLabCut tables have 3 or 4 column levels, found {levels}")
    names = ["scorer", "bodyparts", "coords"] if levels == 3 else ["scorer", "individuals", "bodyparts", "coords"]
    return pd.DataFrame(data, index=index, columns=pd.MultiIndex.from_tuples(cols, names=names))


def _from_dlc_dataframe(df: pd.DataFrame, path: Path, video: str | os.PathLike | None,
                        flip_pairs) -> KeypointLabels:
    """Parse a DLC DataFrame (MultiIndex columns, 3 or 4 levels) into :class:`KeypointLabels`."""
    nlev = df.columns.nlevels
    if nlev not in (3, 4):
        raise ValueError(f"{path}: DeepLabCut columns need 3 or 4 header levels, found {nlev}")
    coords = set(map(str, df.columns.get_level_values(-1)))
    if not {"x", "y"} <= coords or not coords <= {"x", "y", "likelihood"}:
        raise ValueError(f"{path}: DeepLabCut 'coords' must be x, y (and likelihood), found {sorted(coords)}")
    nodes = list(dict.fromkeys(map(str, df.columns.get_level_values(-2))))
    inds = list(dict.fromkeys(map(str, df.columns.get_level_values(1)))) if nlev == 4 else [None]
    cfg = _find_dlc_config(path)
    edges = []
    if cfg and cfg.get("skeleton"):
        for e in cfg["skeleton"]:
            if isinstance(e, (list, tuple)) and len(e) == 2 and str(e[0]) in nodes and str(e[1]) in nodes:
                edges.append((nodes.index(str(e[0])), nodes.index(str(e[1]))))
    skeleton = Skeleton(nodes, edges, find_flip_pairs(nodes, flip_pairs))
    K = len(nodes)
    has_lik = "likelihood" in coords
    values = {}
    for c in df.columns:
        key = (None if nlev == 3 else str(c[1]), str(c[-2]), str(c[-1]))
        values[key] = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
    frames = []
    for r, idx in enumerate(df.index):
        name = str(idx)
        if _looks_like_image(name):
            cands = _image_candidates(path, name)
            image = next((str(c.resolve()) for c in cands if c.exists()), name.replace("\\", "/"))
            vid = str(Path(image).parent)
            frame = _frame_number(image)
        else:
            try:
                frame = int(float(name))
            except ValueError:
                raise ValueError(f"{path}: row {r}: index {name!r} is neither an image path nor a frame number"
                                 ) from None
            image, vid = None, None if video is None else str(video)
        pts, scs, tracks = [], [], []
        for ind in inds:
            p = np.full((K, 2), np.nan)
            s = np.full(K, np.nan)
            for k, node in enumerate(nodes):
                x, y = values.get((ind, node, "x")), values.get((ind, node, "y"))
                if x is not None and y is not None:
                    p[k] = x[r], y[r]
                if has_lik and (ind, node, "likelihood") in values:
                    s[k] = values[(ind, node, "likelihood")][r]
            ok = np.isfinite(p).all(1)
            p[~ok] = np.nan
            s[~ok] = np.nan
            if ok.any():
                pts.append(p)
                scs.append(s)
                tracks.append(ind)
        frames.append(PoseFrame(vid, frame, np.array(pts).reshape(-1, K, 2), tracks, image,
                                np.array(scs).reshape(-1, K) if has_lik else None))
    return KeypointLabels(skeleton, frames, str(path))


def load_keypoints(path: str | os.PathLike, video: str | os.PathLike | None = None,
                   flip_pairs: Iterable[tuple[int | str, int | str]] | None = None,
                   instances: str = "user_first") -> KeypointLabels:
    """Read pose labels or predictions (SLEAP, DeepLabCut project / CSV / H5, other sleap-io formats).

    Args:
        path: ``.slp``; a DLC project folder or its ``config.yaml``; a DLC
            ``.csv`` or ``.h5``; or any file sleap-io's ``load_file`` reads.
        video: the video of DLC files indexed by frame number (analysis
            output); ignored otherwise.
        flip_pairs: explicit left/right node pairs (names or indices);
            default: the file's symmetries, else found by name
            (:func:`find_flip_pairs`).
        instances: for SLEAP frames holding both kinds: ``"user_first"``
            (user-labelled instances if the frame has any, else
            predictions), ``"user"``, ``"predicted"`` or ``"all"``.

    Returns:
        :class:`KeypointLabels`; frames in the file's order.

    Raises:
        ValueError: naming ``path``: missing file, unknown format, a CSV or
            table without DLC's header rows or x/y columns.
    """
    import sleap_io as sio

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: label file not found")
    suffix = path.suffix.lower()
    if path.is_dir() or path.name == "config.yaml":
        cfg_path = path / "config.yaml" if path.is_dir() else path
        if not cfg_path.is_file() or not (cfg_path.parent / "labeled-data").is_dir():
            raise ValueError(f"{path}: not a DeepLabCut project (needs config.yaml and labeled-data/)")
        cfg = _find_dlc_config(cfg_path) or {}
        order = list(cfg.get("bodyparts") or []) if isinstance(cfg.get("bodyparts"), list) else []
        order += [n for n in (cfg.get("multianimalbodyparts") or []) + (cfg.get("uniquebodyparts") or [])
                  if n not in order]
        try:
            labels = sio.load_dlc_project(str(cfg_path))
        except Exception as exc:
            raise ValueError(f"{path}: cannot read DeepLabCut project ({exc})") from None
        return _from_sio(labels, cfg_path, "all", order, flip_pairs)
    if suffix == ".slp":
        try:
            labels = sio.load_slp(str(path), open_videos=False)
        except TypeError:
            # sleap-io 0.9.5 fails on image-sequence videos unless it opens them.
            try:
                labels = sio.load_slp(str(path), open_videos=True)
            except Exception as exc:
                raise ValueError(f"{path}: cannot read SLEAP file ({exc})") from None
        except Exception as exc:
            raise ValueError(f"{path}: cannot read SLEAP file ({exc})") from None
        return _from_sio(labels, path, instances, None, flip_pairs)
    if suffix == ".csv":
        rows, _ = _read_header(path)
        if _sleap_io_can_read(path, len(rows)) and "likelihood" not in set(rows[-1][1:]):
            try:
                labels = sio.load_dlc(str(path))
            except Exception as exc:
                raise ValueError(f"{path}: sleap-io cannot read this DeepLabCut CSV ({exc})") from None
            return _from_sio(labels, path, "all", _dlc_order(rows), flip_pairs)
        return _from_dlc_dataframe(_dlc_dataframe_csv(path, len(rows)), path, video, flip_pairs)
    if suffix in (".h5", ".hdf5"):
        from sleap_io.io import analysis_h5

        if analysis_h5.is_analysis_h5_file(str(path)):
            labels = sio.load_analysis_h5(str(path), video=None if video is None else str(video))
            return _from_sio(labels, path, instances, None, flip_pairs)
        return _from_dlc_dataframe(_dlc_dataframe_h5(path), path, video, flip_pairs)
    try:
        labels = sio.load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: unknown keypoint label format ({type(exc).__name__}: {exc})") from None
    if not hasattr(labels, "labeled_frames"):
        raise ValueError(f"{path}: sleap-io did not return pose labels (got {type(labels).__name__})")
    return _from_sio(labels, path, instances, None, flip_pairs)


# --------------------------------------------------------------------------- images


def read_pose_images(labels: KeypointLabels | Sequence[PoseFrame], gray: bool = True) -> np.ndarray:
    """Pixels of labelled frames: ``(N, H, W)`` uint8 grey, or ``(N, H, W, 3)`` uint8 RGB with ``gray=False``.

    Frames with an ``image`` are read from that file (PIL); the others from
    their ``video`` with :func:`sipec_models.io.video.iter_frames` (one
    sequential decode over the labelled range when frames are dense, else
    one seek per frame).

    Raises:
        ValueError: an image or video is missing, a frame has neither, a
            frame index lies outside its video, or frames differ in size.
    """
    from PIL import Image

    from sipec_models.io.video import iter_frames, probe, read_frames

    frames = list(labels.frames if isinstance(labels, KeypointLabels) else labels)
    out: list[np.ndarray | None] = [None] * len(frames)
    by_video: dict[str, list[int]] = {}
    for i, f in enumerate(frames):
        if f.image is not None:
            p = Path(f.image)
            if not p.is_file():
                raise ValueError(f"{p}: labelled image not found")
            with Image.open(p) as im:
                out[i] = np.asarray(im.convert("L" if gray else "RGB"))
        elif f.video is not None and f.frame is not None:
            by_video.setdefault(f.video, []).append(i)
        else:
            raise ValueError(f"frame {f.frame}: no image file and no video to read it from")
    for vid, rows in by_video.items():
        if not Path(vid).is_file():
            raise ValueError(f"{vid}: video not found")
        info = probe(vid)
        idx = [frames[i].frame for i in rows]
        bad = [i for i in idx if not 0 <= i < info.n_frames]
        if bad:
            raise ValueError(f"{vid}: label frames {bad[:5]} are outside the video's {info.n_frames} frames")
        lo, hi = min(idx), max(idx) + 1
        if hi - lo <= 20 * len(set(idx)):
            wanted = set(idx)
            got = {lo + t: im for t, im in enumerate(iter_frames(vid, lo, hi, gray=gray, info=info))
                   if lo + t in wanted}
        else:
            got = {i: read_frames(vid, i, i + 1, gray=gray, info=info)[0][0] for i in sorted(set(idx))}
        for r, i in zip(rows, idx):
            out[r] = got[i]
    shapes = {im.shape for im in out}
    if len(shapes) > 1:
        raise ValueError(f"labelled frames differ in size: {sorted(shapes)}; read them in groups")
    if not out:
        return np.zeros((0, 0, 0) if gray else (0, 0, 0, 3), np.uint8)
    return np.stack(out).astype(np.uint8)


# --------------------------------------------------------------------------- writers


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_sio_labels(labels: KeypointLabels):
    """A sleap-io ``Labels`` of :class:`KeypointLabels` (videos are referenced, not opened).

    Frames from image files become one image-sequence ``Video`` per folder
    (files sorted by frame number); animals with ``scores`` become
    ``PredictedInstance`` (instance score = mean keypoint score).
    """
    import sleap_io as sio

    sk = sio.Skeleton([sio.Node(n) for n in labels.skeleton.nodes], name="skeleton")
    for a, b in labels.skeleton.edges:
        sk.add_edge(sk.nodes[a], sk.nodes[b])
    for a, b in labels.skeleton.flip_pairs:
        sk.add_symmetry(sk.nodes[a], sk.nodes[b])
    tracks = {t: sio.Track(name=t) for t in labels.track_names}
    videos: dict[str, object] = {}
    image_pos: dict[str, dict[str, int]] = {}
    by_folder: dict[str, list[PoseFrame]] = {}
    for f in labels.frames:
        if f.image is not None:
            by_folder.setdefault(str(Path(f.image).parent), []).append(f)
    for folder, fs in by_folder.items():
        files = sorted({f.image for f in fs}, key=lambda p: (_frame_number(p) or 0, p))
        # The ImageVideo metadata that sleap-io's reader expects ("filenames"; a closed video
        # would otherwise be written with a list as its "filename", which it cannot read back).
        meta = {"type": "ImageVideo", "filename": files[0], "filenames": files}
        videos["img:" + folder] = sio.Video(filename=files, backend_metadata=meta, open_backend=False)
        image_pos[folder] = {p: i for i, p in enumerate(files)}
    lfs = []
    for f in labels.frames:
        if f.image is not None:
            folder = str(Path(f.image).parent)
            video, idx = videos["img:" + folder], image_pos[folder][f.image]
        else:
            if f.video is None or f.frame is None:
                raise ValueError(f"frame {f.frame}: SLP export needs a video path and a frame index")
            if f.video not in videos:
                videos[f.video] = sio.Video(filename=str(f.video), open_backend=False)
            video, idx = videos[f.video], int(f.frame)
        insts = []
        for n, pts in enumerate(f.points):
            track = tracks.get(f.tracks[n]) if f.tracks[n] is not None else None
            if f.scores is not None and np.isfinite(f.scores[n]).any():
                s = np.where(np.isfinite(f.scores[n]), f.scores[n], 0.0)
                insts.append(sio.PredictedInstance.from_numpy(pts, sk, point_scores=s,
                                                              score=float(np.nanmean(f.scores[n])), track=track))
            else:
                insts.append(sio.Instance.from_numpy(pts, sk, track=track))
        lfs.append(sio.LabeledFrame(video=video, frame_idx=idx, instances=insts))
    return sio.Labels(labeled_frames=lfs, videos=list(videos.values()), skeletons=[sk], tracks=list(tracks.values()))


def to_slp(labels: KeypointLabels, path: str | os.PathLike) -> None:
    """Write labels or predictions to a SLEAP ``.slp`` file (sleap-io ``save_slp``, atomic).

    Human labels become user instances, animals with ``scores`` become
    predicted instances with point scores; tracks, edges and flip pairs
    (as symmetries) are kept.
    """
    import sleap_io as sio

    sio_labels = to_sio_labels(labels)
    _atomic(Path(path), lambda tmp: sio.save_slp(sio_labels, tmp, verbose=False, restore_original_videos=False))


def to_dlc_csv(labels: KeypointLabels, path: str | os.PathLike, scorer: str = "sipec",
               likelihood: bool | None = None) -> None:
    """Write labels or predictions as a DeepLabCut CSV (atomic).

    Layout: DLC's header rows ``scorer``, ``bodyparts``, ``coords`` (single
    animal: at most one animal per frame and at most one track name), or
    ``scorer``, ``individuals``, ``bodyparts``, ``coords`` (multi-animal; the
    individuals are the track names, untracked animals ``individual<n>`` by
    their order in the frame). ``coords`` are ``x``, ``y`` and, for
    predictions, ``likelihood``. (A single track's name is not stored: single-animal
    files have no ``individuals`` row.) The index is the image path for frames from
    image files (``labeled-data/<folder>/<file>`` when the image lies in
    such a folder, DLC's convention; else the absolute path), otherwise the
    frame number (DLC's analysis files). Missing keypoints are empty cells.

    Args:
        labels: what to write.
        path: output ``.csv``.
        scorer: DLC scorer name (first header row).
        likelihood: write likelihood columns (default: when any frame has scores).
    """
    nodes = labels.skeleton.nodes
    if likelihood is None:
        likelihood = any(f.scores is not None for f in labels.frames)
    coords = ["x", "y", "likelihood"] if likelihood else ["x", "y"]
    names = labels.track_names
    multi = len(names) > 1 or any(len(f.points) > 1 for f in labels.frames)
    if multi:
        untracked = max((sum(t is None for t in f.tracks) for f in labels.frames), default=0)
        inds = names + [f"individual{n}" for n in range(untracked)]
        cols = pd.MultiIndex.from_tuples([(scorer, i, n, c) for i in inds for n in nodes for c in coords],
                                         names=["scorer", "individuals", "bodyparts", "coords"])
    else:
        cols = pd.MultiIndex.from_tuples([(scorer, n, c) for n in nodes for c in coords],
                                         names=["scorer", "bodyparts", "coords"])
    data = np.full((len(labels.frames), len(cols)), np.nan)
    col = {c: j for j, c in enumerate(cols)}
    index = []
    for r, f in enumerate(labels.frames):
        if f.image is not None:
            p = Path(f.image)
            index.append(f"labeled-data/{p.parent.name}/{p.name}" if p.parent.parent.name == "labeled-data"
                         else str(p))
        elif f.frame is not None:
            index.append(int(f.frame))
        else:
            raise ValueError("DLC export needs an image path or a frame index for every frame")
        n_untracked = 0
        for n, pts in enumerate(f.points):
            if multi:
                if f.tracks[n] is None:
                    ind = f"individual{n_untracked}"
                    n_untracked += 1
                else:
                    ind = f.tracks[n]
                key = (scorer, ind)
            else:
                key = (scorer,)
            for k, node in enumerate(nodes):
                data[r, col[key + (node, "x")]] = pts[k, 0]
                data[r, col[key + (node, "y")]] = pts[k, 1]
                if likelihood and f.scores is not None:
                    data[r, col[key + (node, "likelihood")]] = f.scores[n, k]
    df = pd.DataFrame(data, index=index, columns=cols)
    _atomic(Path(path), lambda tmp: df.to_csv(tmp))
