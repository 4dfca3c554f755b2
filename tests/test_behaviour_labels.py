"""Behaviour label import: per-frame tables, BORIS tabular events, onset/offset tables (tiny hand-written files)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sipec_models.io.behaviour_labels import (detect_format, load_behaviour_labels, read_boris_events,
                                              read_frame_labels, read_onset_offset)


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def _raises(path, *patterns):
    """pytest.raises(ValueError) whose message names ``path`` and matches every pattern."""
    return pytest.raises(ValueError, match="(?s)" + re.escape(str(path)) + "".join(f"(?=.*{p})" for p in patterns))


def _rows(labels, names, animals, frames, animal, frame):
    i = np.flatnonzero((frames == frame) & (True if animals is None else animals == animal))
    assert len(i) == 1
    return dict(zip(names, labels[i[0]].tolist()))


# --------------------------------------------------------------------------- per-frame tables

FRAMES = """frame,animal,walk,rear
1,m1,1,0
0,m1,0,1
0,m2,1,1
1,m2,0,0
"""


def test_frame_labels(tmp_path):
    path = _write(tmp_path, "behaviour.csv", FRAMES)
    frames, labels, names, animals = read_frame_labels(path)
    assert names == ["walk", "rear"]  # file order, not alphabetical
    assert frames.tolist() == [0, 1, 0, 1] and animals.tolist() == ["m1", "m1", "m2", "m2"]
    assert labels.dtype == np.uint8 and labels.tolist() == [[0, 1], [1, 0], [1, 1], [0, 0]]
    frames, labels, names, animals = read_frame_labels(path, n_frames=3)  # frame 2 absent: zeros
    assert frames.tolist() == [0, 1, 2, 0, 1, 2] and animals.tolist() == ["m1"] * 3 + ["m2"] * 3
    assert labels.tolist() == [[0, 1], [1, 0], [0, 0], [1, 1], [0, 0], [0, 0]]
    assert load_behaviour_labels(path)[1].tolist() == [[0, 1], [1, 0], [1, 1], [0, 0]]


def test_frame_labels_one_animal_tsv(tmp_path):
    path = _write(tmp_path, "labels.tsv", "frame\tgroom\tsniff\n2\t1\t0\n0\t0\t1\n1\t0\t0\n")
    frames, labels, names, animals = read_frame_labels(path)
    assert animals is None and names == ["groom", "sniff"]
    assert frames.tolist() == [0, 1, 2] and labels.tolist() == [[0, 1], [0, 0], [1, 0]]


def test_frame_labels_errors(tmp_path):
    path = _write(tmp_path, "noframe.csv", "time,walk\n0,1\n")
    with _raises(path, "'frame'"):
        read_frame_labels(path)
    path = _write(tmp_path, "bad.csv", "frame,walk,rear\n0,1,0\n1,0,2\n")
    with _raises(path, "'rear'", "line 3", "0/1"):
        read_frame_labels(path)
    path = _write(tmp_path, "blank.csv", "frame,walk\n0,1\n1,\n")
    with _raises(path, "'walk'", "line 3"):
        read_frame_labels(path)
    path = _write(tmp_path, "dup.csv", FRAMES + "0,m2,0,0\n")
    with _raises(path, "frame 0", "'m2'", "lines 4, 6"):
        read_frame_labels(path)
    path = _write(tmp_path, "ok.csv", FRAMES)
    with _raises(path, "frame 1", "past the video.s 1 frames"):
        read_frame_labels(path, n_frames=1)
    path = _write(tmp_path, "negative.csv", "frame,walk\n-1,1\n")
    with _raises(path, "'frame'", "line 2"):
        read_frame_labels(path)


# --------------------------------------------------------------------------- BORIS

BORIS_OLD = """Observation id,obs1
Observation date,2024-01-01 10:00:00
Description,
Media file(s)
Player #1,video.mp4

Time,Media file path,Total length,FPS,Subject,Behavior,Behavioral category,Comment,Status
0.2,video.mp4,10.0,10.0,m2,rear,,,START
0.5,video.mp4,10.0,10.0,m2,rear,,,STOP
1.0,video.mp4,10.0,10.0,m1,rear,,,START
1.5,video.mp4,10.0,10.0,m1,rear,,,STOP
2.0,video.mp4,10.0,10.0,m2,sniff,,,POINT
"""

BORIS_NEW = ("Observation id\tObservation date\tDescription\tMedia file\tTotal length\tFPS\tSubject\tBehavior\t"
             "Behavioral category\tComment\tStatus\tTime\n"
             "obs1\t2024\t\tv.mp4\t10\t\t\tgroom\t\t\tSTART\t0.0\n"
             "obs1\t2024\t\tv.mp4\t10\t\t\tgroom\t\t\tSTOP\t0.3\n"
             "obs1\t2024\t\tv.mp4\t10\t\t\tsniff\t\t\tPOINT\t0.5\n")


def test_boris_with_metadata_rows(tmp_path):
    path = _write(tmp_path, "boris.csv", BORIS_OLD)
    assert detect_format(path) == "boris"
    frames, labels, names, animals = read_boris_events(path)  # FPS 10 from the file
    assert names == ["rear", "sniff"]
    assert sorted(set(animals)) == ["m1", "m2"] and animals[0] == "m2"  # order of first appearance
    assert len(frames) == 2 * 21  # up to the point event at frame 20, for both subjects
    m1 = labels[animals == "m1"]
    m2 = labels[animals == "m2"]
    assert np.flatnonzero(m1[:, 0]).tolist() == list(range(10, 15)) and not m1[:, 1].any()
    assert np.flatnonzero(m2[:, 0]).tolist() == [2, 3, 4]
    assert np.flatnonzero(m2[:, 1]).tolist() == [20]  # a point event marks one frame
    assert frames[animals == "m1"].tolist() == list(range(21))
    frames, labels, names, animals = load_behaviour_labels(path, subject="m1", n_frames=30)
    assert animals is None and names == ["rear", "sniff"] and len(frames) == 30
    assert np.flatnonzero(labels[:, 0]).tolist() == list(range(10, 15))
    # line numbers count the metadata rows and the blank line
    path = _write(tmp_path, "boris_bad.csv", BORIS_OLD + "3.0,video.mp4,10.0,10.0,m1,rear,,,STOP\n")
    with _raises(path, "line 13", "STOP of 'rear' of subject 'm1'", "without a START"):
        read_boris_events(path)


def test_boris_newer_column_order_tsv(tmp_path):
    path = _write(tmp_path, "events.tsv", BORIS_NEW)
    with _raises(path, "fps"):
        read_boris_events(path)  # no FPS in the file nor as an argument
    frames, labels, names, animals = load_behaviour_labels(path, fps=20)
    assert animals is None and names == ["groom", "sniff"]
    assert frames.tolist() == list(range(11))
    assert np.flatnonzero(labels[:, 0]).tolist() == [0, 1, 2, 3, 4, 5]  # [0 s, 0.3 s) at 20 fps
    assert np.flatnonzero(labels[:, 1]).tolist() == [10]


def _boris(rows: str) -> str:
    return "Time,FPS,Subject,Behavior,Status\n" + rows


def test_boris_errors(tmp_path):
    path = _write(tmp_path, "nostop.csv", _boris("1.0,10,m1,rear,START\n2.0,10,m1,walk,POINT\n"))
    with _raises(path, "'rear'", "no STOP"):
        read_boris_events(path)
    path = _write(tmp_path, "nostart.csv", _boris("1.0,10,m1,rear,STOP\n"))
    with _raises(path, "'rear'", "without a START"):
        read_boris_events(path)
    path = _write(tmp_path, "twice.csv", _boris("1.0,10,m1,rear,START\n2.0,10,m1,rear,START\n3.0,10,m1,rear,STOP\n"))
    with _raises(path, "'rear'", "no STOP"):
        read_boris_events(path)
    path = _write(tmp_path, "status.csv", _boris("1.0,10,m1,rear,BEGIN\n"))
    with _raises(path, "'BEGIN'"):
        read_boris_events(path)
    path = _write(tmp_path, "subject.csv", _boris("1.0,10,m1,rear,POINT\n"))
    with _raises(path, "'m9'"):
        read_boris_events(path, subject="m9")
    with _raises(path, "'rear'", "past"):
        read_boris_events(path, n_frames=5)
    path = _write(tmp_path, "noheader.csv", "Time,Behaviour,State\n1,rear,START\n")
    with _raises(path, "Behavior", "Status"):
        read_boris_events(path)


def test_boris_separate_subjects_are_not_matched(tmp_path):
    # m1's STOP does not close m2's START
    path = _write(tmp_path, "pair.csv", _boris("1.0,10,m1,rear,START\n1.2,10,m2,rear,STOP\n1.5,10,m1,rear,STOP\n"))
    with _raises(path, "'rear' of subject 'm2'", "without a START"):
        read_boris_events(path)


# --------------------------------------------------------------------------- onset / offset


def test_onset_offset_frames(tmp_path):
    path = _write(tmp_path, "bouts.csv", "behaviour,onset,offset,animal\nrear,2,5,m1\ngroom,0,1,m2\nrear,7,8,m2\n")
    assert detect_format(path) == "onset_offset"
    frames, labels, names, animals = load_behaviour_labels(path)
    assert names == ["rear", "groom"]
    assert frames.tolist() == list(range(8)) * 2 and animals.tolist() == ["m1"] * 8 + ["m2"] * 8
    m1, m2 = labels[:8], labels[8:]
    assert np.flatnonzero(m1[:, 0]).tolist() == [2, 3, 4]  # offset exclusive
    assert np.flatnonzero(m2[:, 0]).tolist() == [7] and np.flatnonzero(m2[:, 1]).tolist() == [0]
    assert len(read_onset_offset(path, n_frames=10)[0]) == 20


def test_onset_offset_seconds(tmp_path):
    path = _write(tmp_path, "bouts_s.csv", "Behavior,onset_s,offset_s\nwalk,0.5,1.0\nwalk,2.0,2.01\n")
    with _raises(path, "fps"):
        read_onset_offset(path)
    frames, labels, names, animals = read_onset_offset(path, fps=4)
    assert animals is None and names == ["walk"] and len(frames) == 9
    assert np.flatnonzero(labels[:, 0]).tolist() == [2, 3, 8]  # [2, 4) and at least one frame at 8


def test_onset_offset_errors(tmp_path):
    path = _write(tmp_path, "order.csv", "behaviour,onset,offset\nrear,5,5\n")
    with _raises(path, "line 2", "'rear'", "not after"):
        read_onset_offset(path)
    path = _write(tmp_path, "cols.csv", "behaviour,start,end\nrear,1,5\n")
    with _raises(path, "onset"):
        read_onset_offset(path)
    path = _write(tmp_path, "frac.csv", "behaviour,onset,offset\nrear,1.5,5\n")
    with _raises(path, "'onset'", "line 2"):
        read_onset_offset(path)
    path = _write(tmp_path, "long.csv", "behaviour,onset,offset\nrear,1,5\n")
    with _raises(path, "'rear'", "past"):
        read_onset_offset(path, n_frames=4)


# --------------------------------------------------------------------------- dispatch


def test_load_behaviour_labels_dispatch(tmp_path):
    path = _write(tmp_path, "b.csv", FRAMES)
    with pytest.raises(ValueError, match="frames, boris, onset_offset"):
        load_behaviour_labels(path, format="deg")
    unknown = _write(tmp_path, "x.csv", "a,b\n1,2\n")
    with _raises(unknown, "frames, boris, onset_offset"):
        load_behaviour_labels(unknown)
    # forced format; fps is not needed for a per-frame table and is ignored
    assert load_behaviour_labels(path, format="frames", fps=30)[2] == ["walk", "rear"]
    with _raises(path, "Behavior"):
        load_behaviour_labels(path, format="boris")
