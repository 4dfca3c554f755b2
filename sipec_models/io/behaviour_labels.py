"""Behaviour labels: per-frame 0/1 tables, BORIS event exports and onset/offset tables.

Every reader returns the same tuple ``(frames, labels, names, animals)``:

* ``frames`` ``(T,)`` int64 frame number of each row;
* ``labels`` ``(T, C)`` uint8, 1 where behaviour ``c`` is present;
* ``names`` the ``C`` behaviours, in the file's order of first appearance
  (column order for per-frame tables);
* ``animals`` ``(T,)`` str, the animal of each row, or None for files
  about one unnamed animal.

Rows are sorted by animal (in the file's order of first appearance), then
frame, so ``labels[animals == a]`` is animal ``a``'s ethogram in time
order. The event readers (BORIS, onset/offset) give every animal the same
frames ``0 .. n_frames - 1``, ``n_frames`` defaulting to the end of the
last event; frames outside every event are 0 (no behaviour).

Formats (:func:`load_behaviour_labels` tells them apart by their columns):

* ``frames``: CSV/TSV with a ``frame`` column, an optional ``animal``
  column and one 0/1 column per behaviour, like the demo's
  ``behaviour.csv`` (``frame, animal, walk, pause, rear, groom, touch``).
* ``boris``: BORIS "tabular events" export (CSV or TSV), one row per event
  with at least ``Time`` (s), ``Behavior`` and ``Status`` (``START`` /
  ``STOP`` for state events, ``POINT`` for point events), usually
  ``Subject`` and ``FPS`` too; older exports put metadata rows before the
  column header, which is found as the first row holding ``Behavior`` and
  ``Status``.
* ``onset_offset``: one row per bout, ``behaviour`` (or ``behavior``),
  ``onset``, ``offset`` in frames (``offset`` exclusive: the bout covers
  ``onset .. offset - 1``) or ``onset_s``, ``offset_s`` in seconds, and an
  optional ``animal``.

Times in seconds become frames as ``round(t * fps)``; a state event or bout
``[t0, t1)`` covers frames ``round(t0 * fps) .. round(t1 * fps) - 1`` and at
least its first frame; a point event marks the one frame ``round(t * fps)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

FORMATS = ("frames", "boris", "onset_offset")
Labels = tuple[np.ndarray, np.ndarray, list[str], "np.ndarray | None"]

_BORIS_HEADER_SCAN = 200  # lines searched for the BORIS column header


# --------------------------------------------------------------------------- helpers


def _read_lines(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return [line.rstrip("\r\n") for _, line in zip(range(n), f)]


def _sep(path: Path, header: str) -> str:
    """Delimiter of a table: tab for .tsv/.tab or a tab in the header line, else ``;`` or ``,``."""
    if path.suffix.lower() in (".tsv", ".tab") or "\t" in header:
        return "\t"
    return ";" if ";" in header and "," not in header else ","


def _fields(line: str, sep: str) -> list[str]:
    return [f.strip().strip('"').strip() for f in line.split(sep)]


def _read_table(path: Path, skiprows: int = 0) -> pd.DataFrame:
    header = _read_lines(path, skiprows + 1)
    if len(header) <= skiprows:
        raise ValueError(f"{path}: empty file, no column header")
    sep = _sep(path, header[skiprows])
    df = pd.read_csv(path, sep=sep, skiprows=skiprows, encoding="utf-8-sig", skipinitialspace=True)
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _line(i: int, skiprows: int = 0) -> int:
    """File line (1-based) of data row ``i`` of a table whose header is line ``skiprows + 1``."""
    return skiprows + 2 + int(i)


def _dense(path: Path, events: list[tuple[str | None, str, int, int]], names: list[str],
           animals: list[str] | None, n_frames: int | None) -> Labels:
    """``(animal, behaviour, start, stop)`` frame intervals -> the reader tuple, every animal on
    frames ``0 .. n_frames - 1``."""
    end = max((stop for *_, stop in events), default=0)
    if n_frames is None:
        n_frames = end
    elif end > n_frames:
        bad = max(events, key=lambda e: e[3])
        who = f" of {bad[0]!r}" if bad[0] is not None else ""
        raise ValueError(f"{path}: {bad[1]!r}{who} runs to frame {bad[3] - 1}, past the video's {n_frames} frames")
    slots = [None] if animals is None else animals
    labels = np.zeros((len(slots), n_frames, len(names)), np.uint8)
    a_index = {a: i for i, a in enumerate(slots)}
    b_index = {b: i for i, b in enumerate(names)}
    for animal, behaviour, start, stop in events:
        labels[a_index[animal], start:stop, b_index[behaviour]] = 1
    frames = np.tile(np.arange(n_frames, dtype=np.int64), len(slots))
    out_animals = None if animals is None else np.repeat(np.asarray(animals, dtype=str), n_frames)
    return frames, labels.reshape(-1, len(names)), names, out_animals


def _to_frames(path: Path, seconds: np.ndarray, fps: float, what: str, lines: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(seconds) | (seconds < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: line {lines[i]}: {what} {seconds[i]!r} is not a time >= 0 s")
    return np.round(seconds * fps).astype(np.int64)


def _check_fps(path: Path, fps) -> float:
    if fps is None:
        raise ValueError(f"{path}: times are in seconds; give fps to convert them to frames")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"{path}: fps must be a positive number, got {fps}")
    return float(fps)


def _first_appearance(values) -> list[str]:
    return [str(v) for v in dict.fromkeys(values)]


# --------------------------------------------------------------------------- per-frame tables


def read_frame_labels(path: str | Path, n_frames: int | None = None) -> Labels:
    """Per-frame 0/1 table (``frame``, optional ``animal``, one column per behaviour).

    Args:
        path: CSV (or TSV) file.
        n_frames: the video's frames. None: the rows of the file as they are
            (sorted by animal, then frame). Given: every animal gets frames
            ``0 .. n_frames - 1``, with 0 for frames missing from the file;
            a frame >= n_frames is an error.

    Returns:
        ``(frames (T,) int64, labels (T, C) uint8, names, animals (T,) str or None)``.

    Raises:
        ValueError: no ``frame`` column, no behaviour column, a frame that is
            not a whole number >= 0, a value other than 0/1 (naming column
            and line), or a (frame, animal) pair on two rows.
    """
    path = Path(path)
    df = _read_table(path)
    if "frame" not in df.columns:
        raise ValueError(f"{path}: no 'frame' column (columns: {list(df.columns)})")
    has_animal = "animal" in df.columns
    names = [c for c in df.columns if c not in ("frame", "animal")]
    if not names:
        beside = "'frame' and 'animal'" if has_animal else "'frame'"
        raise ValueError(f"{path}: no behaviour columns beside {beside}")
    frame = pd.to_numeric(df["frame"], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(frame) | (frame < 0) | (frame != np.round(frame))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: column 'frame', line {_line(i)}: {df['frame'].iloc[i]!r} is not a frame number")
    frame = frame.astype(np.int64)
    values = np.zeros((len(df), len(names)), np.uint8)
    for c, name in enumerate(names):
        col = pd.to_numeric(df[name], errors="coerce").to_numpy(np.float64)
        bad = ~np.isin(col, (0, 1))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{path}: column {name!r}, line {_line(i)}: value {df[name].iloc[i]!r} is not 0/1")
        values[:, c] = col
    animal = df["animal"].astype(str).to_numpy() if has_animal else np.full(len(df), "")
    key = pd.DataFrame({"animal": animal, "frame": frame})
    dup = key.duplicated(keep=False).to_numpy()
    if dup.any():
        first = int(np.argmax(dup))
        rows = np.flatnonzero((frame == frame[first]) & (animal == animal[first]))
        who = f", animal {animal[rows[0]]!r}" if has_animal else ""
        raise ValueError(f"{path}: frame {frame[rows[0]]}{who} appears on more than one row "
                         f"(lines {', '.join(str(_line(r)) for r in rows)})")
    animals = _first_appearance(animal)
    if n_frames is not None:
        if len(frame) and frame.max() >= n_frames:
            i = int(np.argmax(frame))
            raise ValueError(f"{path}: line {_line(i)}: frame {frame[i]} is past the video's {n_frames} frames")
        dense = np.zeros((len(animals), n_frames, len(names)), np.uint8)
        a_index = {a: i for i, a in enumerate(animals)}
        dense[[a_index[a] for a in animal], frame] = values
        frames = np.tile(np.arange(n_frames, dtype=np.int64), len(animals))
        out_animals = np.repeat(np.asarray(animals, dtype=str), n_frames) if has_animal else None
        return frames, dense.reshape(-1, len(names)), names, out_animals
    rank = {a: i for i, a in enumerate(animals)}
    order = np.lexsort((frame, [rank[a] for a in animal]))
    out_animals = np.asarray(animal[order], dtype=str) if has_animal else None
    return frame[order], values[order], names, out_animals


# --------------------------------------------------------------------------- BORIS


def _boris_header_row(path: Path) -> int:
    lines = _read_lines(path, _BORIS_HEADER_SCAN)
    for i, line in enumerate(lines):
        fields = _fields(line, _sep(path, line))
        if "Behavior" in fields and "Status" in fields:
            return i
    raise ValueError(f"{path}: no BORIS column header (a row holding 'Behavior' and 'Status') "
                     f"in the first {_BORIS_HEADER_SCAN} lines")


def _boris_fps(path: Path, df: pd.DataFrame, fps: float | None) -> float:
    if "FPS" in df.columns:
        values = pd.to_numeric(df["FPS"], errors="coerce").to_numpy(np.float64)
        values = np.unique(values[np.isfinite(values) & (values > 0)])
        if len(values) > 1:
            raise ValueError(f"{path}: column 'FPS' holds several frame rates {values.tolist()}; "
                             "export one media file at a time")
        if len(values) == 1:
            if fps is not None and not np.isclose(fps, values[0]):
                log.warning("%s: using the file's FPS %g, not the fps argument %g", path, values[0], fps)
            return float(values[0])
    return _check_fps(path, fps)


def read_boris_events(path: str | Path, fps: float | None = None, n_frames: int | None = None,
                      subject: str | None = None) -> Labels:
    """BORIS "tabular events" export -> per-frame labels.

    Args:
        path: CSV or TSV export (metadata rows before the header allowed).
        fps: frames per second, used when the file has no valid ``FPS``
            column (the file's frame rate wins when both are given).
        n_frames: the video's frames; default: the end of the last event.
        subject: keep only this subject's events (``animals`` is then None).
            Behaviour names come from the whole file either way, so each
            subject's labels have the same columns.

    Returns:
        ``(frames (T,), labels (T, C) uint8, names, animals (T,) str or None)``;
        ``animals`` is None also when the file has no ``Subject`` column or
        it is empty.

    Raises:
        ValueError: no header, missing ``Time``, no frame rate, an unknown
            status, a START without STOP or STOP without START (naming the
            behaviour, subject and time), an unknown subject, an event past
            ``n_frames``.
    """
    path = Path(path)
    skip = _boris_header_row(path)
    df = _read_table(path, skiprows=skip)
    if "Time" not in df.columns:
        raise ValueError(f"{path}: no 'Time' column in the BORIS header (columns: {list(df.columns)})")
    df = df[df["Behavior"].notna()]  # blank trailing lines
    lines = np.array([_line(i, skip) for i in df.index])
    behaviour = df["Behavior"].astype(str).str.strip().to_numpy()
    status = df["Status"].astype(str).str.strip().str.upper().to_numpy()
    bad = ~np.isin(status, ("START", "STOP", "POINT"))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: line {lines[i]}: status {df['Status'].iloc[i]!r} of {behaviour[i]!r} "
                         "is not START, STOP or POINT")
    names = _first_appearance(behaviour)
    subj = df["Subject"] if "Subject" in df.columns else None
    if subj is not None and subj.isna().all():
        subj = None
    subj = None if subj is None else subj.fillna("").astype(str).str.strip().to_numpy()
    if subject is not None:
        if subj is None:
            raise ValueError(f"{path}: no 'Subject' column to select subject {subject!r} from")
        if subject not in subj:
            raise ValueError(f"{path}: no events of subject {subject!r} (subjects: {_first_appearance(subj)})")
        keep = subj == subject
        lines, behaviour, status, df = lines[keep], behaviour[keep], status[keep], df[keep]
        subj = None
    rate = _boris_fps(path, df, fps)
    seconds = pd.to_numeric(df["Time"], errors="coerce").to_numpy(np.float64)
    frame = _to_frames(path, seconds, rate, "Time", lines)
    who = np.full(len(df), None, dtype=object) if subj is None else subj
    events = []
    open_at: dict[tuple, tuple[int, int]] = {}  # (subject, behaviour) -> (start frame, row)
    for i in np.argsort(seconds, kind="stable"):
        key = (who[i], behaviour[i])
        desc = f"{behaviour[i]!r}" + (f" of subject {who[i]!r}" if who[i] is not None else "")
        if status[i] == "POINT":
            events.append((who[i], behaviour[i], frame[i], frame[i] + 1))
        elif status[i] == "START":
            if key in open_at:
                raise ValueError(f"{path}: line {lines[i]}: START of {desc} at {seconds[i]:g} s while the one "
                                 f"started on line {lines[open_at[key][1]]} has no STOP")
            open_at[key] = (frame[i], i)
        else:
            if key not in open_at:
                raise ValueError(f"{path}: line {lines[i]}: STOP of {desc} at {seconds[i]:g} s without a START")
            start, _ = open_at.pop(key)
            events.append((who[i], behaviour[i], start, max(frame[i], start + 1)))
    if open_at:
        (animal, name), (_, i) = next(iter(open_at.items()))
        desc = f"{name!r}" + (f" of subject {animal!r}" if animal is not None else "")
        raise ValueError(f"{path}: line {lines[i]}: START of {desc} at {seconds[i]:g} s has no STOP")
    animals = None if subj is None else _first_appearance(subj)
    return _dense(path, [(a, b, int(s), int(e)) for a, b, s, e in events], names, animals, n_frames)


# --------------------------------------------------------------------------- onset / offset


def read_onset_offset(path: str | Path, fps: float | None = None, n_frames: int | None = None) -> Labels:
    """Onset/offset bout table -> per-frame labels.

    Columns (case-insensitive): ``behaviour`` or ``behavior``; ``onset`` and
    ``offset`` in frames, the bout covering ``onset .. offset - 1`` (offset
    exclusive, ``offset > onset``), or ``onset_s`` and ``offset_s`` in
    seconds (then ``fps`` is needed; a bout covers at least one frame);
    optional ``animal``.

    Args:
        path: CSV or TSV file.
        fps: frames per second, for times in seconds.
        n_frames: the video's frames; default: the end of the last bout.

    Returns:
        ``(frames (T,), labels (T, C) uint8, names, animals (T,) str or None)``.

    Raises:
        ValueError: missing columns, onsets or offsets that are not frames
            >= 0 (or times), an offset not after its onset, times without fps,
            a bout past ``n_frames``.
    """
    path = Path(path)
    df = _read_table(path)
    cols = {c.lower(): c for c in df.columns}
    b_col = cols.get("behaviour", cols.get("behavior"))
    if b_col is None:
        raise ValueError(f"{path}: no 'behaviour' (or 'behavior') column (columns: {list(df.columns)})")
    if "onset" in cols and "offset" in cols:
        on_col, off_col, in_seconds = cols["onset"], cols["offset"], False
    elif "onset_s" in cols and "offset_s" in cols:
        on_col, off_col, in_seconds = cols["onset_s"], cols["offset_s"], True
    else:
        raise ValueError(f"{path}: need columns 'onset' and 'offset' (frames) or 'onset_s' and 'offset_s' "
                         f"(seconds) (columns: {list(df.columns)})")
    lines = np.array([_line(i) for i in range(len(df))])
    behaviour = df[b_col].astype(str).str.strip().to_numpy()
    on = pd.to_numeric(df[on_col], errors="coerce").to_numpy(np.float64)
    off = pd.to_numeric(df[off_col], errors="coerce").to_numpy(np.float64)
    if in_seconds:
        rate = _check_fps(path, fps)
        on, off = _to_frames(path, on, rate, on_col, lines), _to_frames(path, off, rate, off_col, lines)
        off = np.maximum(off, on + 1)
    else:
        for col, v in ((on_col, on), (off_col, off)):
            bad = ~np.isfinite(v) | (v < 0) | (v != np.round(v))
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"{path}: column {col!r}, line {lines[i]}: {df[col].iloc[i]!r} is not a frame "
                                 "number >= 0")
        on, off = on.astype(np.int64), off.astype(np.int64)
    bad = off <= on
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: line {lines[i]}: offset {off[i]} of {behaviour[i]!r} is not after its onset "
                         f"{on[i]} (offset is exclusive)")
    a_col = cols.get("animal")
    animal = df[a_col].astype(str).str.strip().to_numpy() if a_col is not None else None
    who = [None] * len(df) if animal is None else list(animal)
    events = [(w, b, int(s), int(e)) for w, b, s, e in zip(who, behaviour, on, off)]
    animals = None if animal is None else _first_appearance(animal)
    return _dense(path, events, _first_appearance(behaviour), animals, n_frames)


# --------------------------------------------------------------------------- dispatch


def detect_format(path: str | Path) -> str:
    """``"boris"``, ``"onset_offset"`` or ``"frames"`` from a file's column header.

    BORIS: a row among the first lines holding ``Behavior`` and ``Status``;
    onset/offset: a header with ``behaviour``/``behavior`` and
    ``onset``/``onset_s``; frames: a header with ``frame``.
    """
    path = Path(path)
    lines = _read_lines(path, _BORIS_HEADER_SCAN)
    for line in lines:
        fields = _fields(line, _sep(path, line))
        if "Behavior" in fields and "Status" in fields:
            return "boris"
    header = {f.lower() for f in _fields(lines[0], _sep(path, lines[0]))} if lines else set()
    if header & {"behaviour", "behavior"} and header & {"onset", "onset_s"}:
        return "onset_offset"
    if "frame" in header:
        return "frames"
    raise ValueError(f"{path}: cannot tell the label format from the columns {sorted(header)}; "
                     f"give format= one of {', '.join(FORMATS)}")


def load_behaviour_labels(path: str | Path, format: str = "auto", **kw) -> Labels:
    """Read behaviour labels of any supported format.

    Args:
        path: the label file.
        format: ``"auto"`` (:func:`detect_format`) or one of
            ``"frames"`` (:func:`read_frame_labels`), ``"boris"``
            (:func:`read_boris_events`), ``"onset_offset"``
            (:func:`read_onset_offset`).
        **kw: passed to the reader (``fps``, ``n_frames``, ``subject``); an
            ``fps`` given for a per-frame table is not needed and ignored.

    Returns:
        ``(frames (T,), labels (T, C) uint8, names, animals (T,) str or None)``.
    """
    if format not in ("auto",) + FORMATS:
        raise ValueError(f"unknown behaviour label format {format!r}; use 'auto' or one of {', '.join(FORMATS)}")
    if format == "auto":
        format = detect_format(path)
    if format == "frames":
        kw.pop("fps", None)
        return read_frame_labels(path, **kw)
    if format == "boris":
        return read_boris_events(path, **kw)
    return read_onset_offset(path, **kw)
