"""NWB (ndx-pose) export of the per-animal tables' keypoints: write, read back with pynwb, compare."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

pynwb = pytest.importorskip("pynwb")
pytest.importorskip("ndx_pose")

from pynwb import NWBHDF5IO  # noqa: E402

from sipec_models import __version__  # noqa: E402
from sipec_models.cli import main  # noqa: E402
from sipec_models.io.nwb import EPOCH, nwb_identifier, pose_arrays, run_export_nwb  # noqa: E402

FPS = 25.0
NODES = ["nose", "left_ear", "tail_base"]
ANIMALS = ["mouse_b", "mouse_a"]  # not in sorted order: the table's order is kept


def _pose_table(frames=range(8)) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A per-animal table with 2 animals x 3 nodes, and the expected ``(A, K, T, 2)`` points and ``(A, K, T)``
    confidences: mouse_a undetected in frames 2-3, its tail_base missing in frame 5, mouse_b's row of the last
    frame absent."""
    frames = list(frames)
    rng = np.random.default_rng(0)
    A, K, T = len(ANIMALS), len(NODES), len(frames)
    points = rng.uniform(0, 256, (A, K, T, 2))
    conf = rng.uniform(0, 1, (A, K, T))
    points[1, :, 2:4] = np.nan
    conf[1, :, 2:4] = np.nan
    points[1, 2, 5] = np.nan
    conf[1, 2, 5] = np.nan
    rows = []
    for t, f in enumerate(frames):
        for a, animal in enumerate(ANIMALS):
            if animal == "mouse_b" and t == T - 1:
                continue
            row = {"video": "vid_1", "frame": f, "time_s": f / FPS, "animal": animal, "x": 1.0, "y": 2.0,
                   "detected": not np.isnan(points[a, 0, t, 0])}
            for k, n in enumerate(NODES):
                row[f"{n}_x"], row[f"{n}_y"], row[f"{n}_conf"] = points[a, k, t, 0], points[a, k, t, 1], conf[a, k, t]
            rows.append(row)
    points[0, :, T - 1] = np.nan
    conf[0, :, T - 1] = np.nan
    return pd.DataFrame(rows), points, conf


@pytest.fixture
def videos_tsv(tmp_path):
    path = tmp_path / "videos.tsv"
    path.write_text("id\tpath\tn_animals\tgroup\tsession\tdate\n"
                    "vid_1\tvid_1.mp4\t2\tcontrol\ts3\t2024-05-03T14:30:00+02:00\n"
                    "vid_2\tvid_2.mp4\t1\tcontrol\ts4\t\n")
    return path


def test_pose_arrays_keep_table_order_and_fill_missing_rows():
    table, points, conf = _pose_table()
    frames, p, c, animals, nodes = pose_arrays(table)
    assert animals == ANIMALS and nodes == NODES and frames.tolist() == list(range(8))
    np.testing.assert_array_equal(p, points)
    np.testing.assert_array_equal(c, conf)


def test_round_trip(tmp_path, videos_tsv):
    table, points, conf = _pose_table()
    table_path = tmp_path / "animals.parquet"
    table.to_parquet(table_path)
    out = tmp_path / "res" / "pose.nwb"
    run_export_nwb(table_path, out, fps=FPS, videos_tsv=videos_tsv, video=tmp_path / "vid_1.mp4",
                   edges=[(0, 1), (0, 2)])
    assert sorted(p.name for p in out.parent.iterdir()) == ["pose.nwb"]  # no temporary file left
    assert pynwb.validate(path=str(out)) == []
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert nwb.identifier == nwb_identifier("vid_1")
        assert "vid_1" in nwb.session_description
        assert nwb.session_start_time == dt.datetime(2024, 5, 3, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        assert nwb.session_id == "s3"
        assert "group: control" in nwb.notes
        behavior = nwb.processing["behavior"]
        skeleton = behavior["Skeletons"].skeletons["skeleton"]
        assert list(skeleton.nodes[:]) == NODES
        assert skeleton.edges[:].tolist() == [[0, 1], [0, 2]]
        assert sorted(behavior.data_interfaces) == sorted(["Skeletons", *ANIMALS])
        video = nwb.acquisition["video"]
        assert list(video.external_file[:]) == ["../vid_1.mp4"]  # relative to the NWB file
        for a, animal in enumerate(ANIMALS):
            pe = behavior[animal]
            assert pe.source_software == "sipec_models" and pe.source_software_version == __version__
            assert pe.skeleton.object_id == skeleton.object_id
            assert pe.source_video.object_id == video.object_id
            assert sorted(pe.pose_estimation_series) == sorted(NODES)
            for k, node in enumerate(NODES):
                s = pe.pose_estimation_series[node]
                assert s.unit == "pixels"
                assert s.data.dtype == np.float32 and s.data.shape == (8, 2)
                np.testing.assert_allclose(s.data[:], points[a, k], rtol=1e-6, equal_nan=True)
                np.testing.assert_allclose(s.confidence[:], conf[a, k], rtol=1e-6, equal_nan=True)
                assert np.isnan(s.data[:]).any() == np.isnan(points[a, k]).any()
                assert s.rate == FPS and s.starting_time == 0.0 and s.timestamps is None


def test_timestamps_when_frames_are_not_consecutive(tmp_path):
    frames = [10, 11, 12, 20, 21, 22, 30, 40]
    table, points, _ = _pose_table(frames)
    table_path = tmp_path / "animals.csv"
    table.to_csv(table_path, index=False)
    out = tmp_path / "pose.nwb"
    run_export_nwb(table_path, out, fps=FPS)  # no videos table: the epoch, the table's video id
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert nwb.session_start_time == EPOCH
        assert nwb.identifier == nwb_identifier("vid_1")
        assert "video" not in nwb.acquisition
        pe = nwb.processing["behavior"]["mouse_a"]
        for k, node in enumerate(NODES):
            s = pe.pose_estimation_series[node]
            assert s.rate is None
            np.testing.assert_allclose(s.timestamps[:], np.array(frames) / FPS)
            np.testing.assert_allclose(s.data[:], points[1, k], rtol=1e-6, equal_nan=True)


def test_starting_time_and_fps_from_probe(tmp_path, videos_tsv):
    table, _, _ = _pose_table(range(5, 13))
    table_path = tmp_path / "animals.parquet"
    table.to_parquet(table_path)
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"path": "vid_1.mp4", "n_frames": 13, "fps": 50.0, "width": 320, "height": 240,
                                 "codec": "h264", "n_frames_container": 13, "counted": False,
                                 "time_base": "1/12800", "start_pts": 0, "frame_pts_step": 256,
                                 "checksum": "sha256:0"}))
    out = tmp_path / "pose.nwb"
    assert main(["export-nwb", str(table_path), "--out", str(out), "--probe", str(probe), "--videos",
                 str(videos_tsv), "--video", str(tmp_path / "vid_1.mp4")]) == 0
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        s = nwb.processing["behavior"]["mouse_b"].pose_estimation_series["nose"]
        assert s.rate == 50.0 and s.starting_time == pytest.approx(5 / 50.0)
        assert nwb.acquisition["video"].dimension[:].tolist() == [320, 240]
        assert nwb.processing["behavior"]["Skeletons"].skeletons["skeleton"].edges is not None


def test_same_identifier_for_the_same_video(tmp_path):
    table, _, _ = _pose_table()
    path = tmp_path / "animals.parquet"
    table.to_parquet(path)
    ids = []
    for name in ("a.nwb", "b.nwb"):
        run_export_nwb(path, tmp_path / name, fps=FPS)
        with NWBHDF5IO(str(tmp_path / name), "r") as io:
            ids.append(io.read().identifier)
    assert ids[0] == ids[1] == nwb_identifier("vid_1") != nwb_identifier("vid_2")


def test_table_without_keypoints_is_a_clear_error(tmp_path):
    table, _, _ = _pose_table()
    table = table.drop(columns=[c for c in table.columns if c.endswith(("_x", "_y", "_conf"))])
    path = tmp_path / "animals.parquet"
    table.to_parquet(path)
    out = tmp_path / "res" / "pose.nwb"
    with pytest.raises(ValueError, match=r"animals\.parquet: the table has no keypoint columns"):
        run_export_nwb(path, out, fps=FPS)
    assert not out.exists()
    assert main(["export-nwb", str(path), "--out", str(out), "--fps", "25"]) == 1
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_export_nwb(tmp_path / "missing.parquet", out, fps=FPS)


def test_bad_date_names_the_video(tmp_path):
    table, _, _ = _pose_table()
    path = tmp_path / "animals.parquet"
    table.to_parquet(path)
    videos = tmp_path / "videos.tsv"
    videos.write_text("id\tpath\tn_animals\tdate\nvid_1\tv.mp4\t2\t3 May 2024\n")
    with pytest.raises(ValueError, match=r"video vid_1: date '3 May 2024' is not an ISO 8601"):
        run_export_nwb(path, tmp_path / "pose.nwb", fps=FPS, videos_tsv=videos)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    table, _, _ = _pose_table()
    path = tmp_path / "animals.parquet"
    table.to_parquet(path)
    out_dir = tmp_path / "res"
    out_dir.mkdir()

    def broken_write(self, container, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(NWBHDF5IO, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        run_export_nwb(path, out_dir / "pose.nwb", fps=FPS)
    assert list(out_dir.iterdir()) == []
