"""The synthetic demo: files, video, agreement between the ground-truth files, determinism."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import sleap_io
from skimage.draw import polygon as rasterise

from sipec_models import demo
from sipec_models.io.video import probe, read_frames

N_FRAMES = 60
SIZE = 256
TRUTH_FILES = [
    "masks_coco.json", "identities.csv", "centroids.csv", "keypoints.csv", "keypoints_dlc.csv",
    "behaviour.csv", "social.csv", "positions_3d.csv", "camera.json", "meta.json",
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("demo")
    videos = demo.render_demo(outdir, n_videos=1, n_frames=N_FRAMES, size=SIZE, seed=3, progress=False, workers=1)
    return outdir, videos[0]


@pytest.fixture(scope="module")
def truth(rendered):
    _, video = rendered
    d = video.truth_dir
    return {
        "coco": json.loads((d / "masks_coco.json").read_text()),
        "centroids": pd.read_csv(d / "centroids.csv"),
        "keypoints": pd.read_csv(d / "keypoints.csv"),
        "behaviour": pd.read_csv(d / "behaviour.csv"),
        "social": pd.read_csv(d / "social.csv"),
        "positions": pd.read_csv(d / "positions_3d.csv"),
        "identities": pd.read_csv(d / "identities.csv"),
        "camera": json.loads((d / "camera.json").read_text()),
        "meta": json.loads((d / "meta.json").read_text()),
    }


def test_files_and_record(rendered):
    outdir, video = rendered
    assert video.id == "arena_0" and video.video == outdir / "arena_0.mp4" and video.truth_dir == outdir / "arena_0"
    assert video.n_animals == 3 and video.animals == ("dark", "stripe", "spot")
    assert video.video.is_file()
    for name in TRUTH_FILES:
        assert (video.truth_dir / name).is_file(), name
    images = sorted(p.name for p in (video.truth_dir / "labeled-data" / "arena_0").iterdir())
    assert images == [f"img{f:05d}.png" for f in range(0, N_FRAMES, 10)]
    assert [p.name for p in outdir.iterdir() if p.name.startswith(".")] == []  # no temporary folders left


def test_video_decodes(rendered):
    _, video = rendered
    info = probe(video.video)
    assert (info.n_frames, info.width, info.height, info.fps) == (N_FRAMES, SIZE, SIZE, 25.0)
    frames, first = read_frames(video.video, 10, 20, info=info)
    assert first == 10 and frames.shape == (10, SIZE, SIZE, 3) and frames.dtype == np.uint8


def test_meta(truth):
    meta = truth["meta"]
    assert meta["id"] == "arena_0" and meta["n_frames"] == N_FRAMES and meta["size"] == SIZE
    assert meta["animals"] == ["dark", "stripe", "spot"] and meta["seed"] == 3
    assert meta["behaviours"] == ["walk", "pause", "rear", "groom"]
    assert [a["pattern"] for a in meta["appearance"]] == ["none", "stripe", "spot"]
    assert meta["sipec_models_version"]


def test_centroids_match_coco_masks(truth):
    coco, centroids = truth["coco"], truth["centroids"]
    assert coco["categories"] == [{"id": 1, "name": "animal", "supercategory": "animal"}]
    assert len(coco["images"]) == N_FRAMES
    assert coco["images"][5]["file_name"] == "arena_0/frame_000005.png"
    frame_of = {im["id"]: im["frame"] for im in coco["images"]}
    rows = centroids.set_index(["frame", "animal"])
    assert len(coco["annotations"]) == int((centroids["area"] > 0).sum())
    exact = 0
    claimed = {}  # frame -> pixels of the visible masks so far
    for ann in coco["annotations"]:
        assert ann["iscrowd"] == 0 and ann["category_id"] == 1
        mask = np.zeros((SIZE, SIZE), bool)
        for poly in ann["segmentation"]:
            xy = np.asarray(poly).reshape(-1, 2) - 0.5  # COCO corners -> pixel centres
            mask[rasterise(xy[:, 1], xy[:, 0], shape=mask.shape)] = True
        row = rows.loc[(frame_of[ann["image_id"]], ann["identity"])]
        rr, cc = np.nonzero(mask)
        assert ann["area"] == row["area"]
        assert abs(mask.sum() - row["area"]) <= 0.02 * row["area"] + 2
        assert abs(cc.mean() - row["x"]) < 0.5 and abs(rr.mean() - row["y"]) < 0.5
        x, y, w, h = ann["bbox"]
        assert (x, y, x + w, y + h) == (row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"])
        exact += mask.sum() == row["area"]
        frame = ann["frame"]
        claimed.setdefault(frame, np.zeros_like(mask))
        assert not (claimed[frame] & mask).any()  # visible masks never share a pixel
        claimed[frame] |= mask
    assert exact >= 0.95 * len(coco["annotations"])


def test_identities_and_visibility(truth):
    ids, coco, centroids = truth["identities"], truth["coco"], truth["centroids"]
    assert list(ids.columns) == ["frame", "instance", "identity"]
    assert ids["instance"].tolist() == [a["id"] for a in coco["annotations"]]
    assert ids["identity"].tolist() == [a["identity"] for a in coco["annotations"]]
    assert list(centroids.columns) == [
        "frame", "animal", "x", "y", "box_x0", "box_y0", "box_x1", "box_y1", "area", "visible_fraction"
    ]
    assert len(centroids) == 3 * N_FRAMES
    assert centroids["visible_fraction"].between(0, 1).all()
    # The top-most animal (last in z-order) is never occluded.
    assert (centroids.loc[centroids["animal"] == "spot", "visible_fraction"] == 1).all()


def test_deterministic(rendered, tmp_path):
    outdir, video = rendered
    again = demo.render_demo(tmp_path, n_videos=1, n_frames=N_FRAMES, size=SIZE, seed=3, progress=False, workers=1)
    for name in TRUTH_FILES:
        assert (again[0].truth_dir / name).read_bytes() == (video.truth_dir / name).read_bytes(), name
    other = demo.render_demo(tmp_path / "other", n_videos=1, n_frames=N_FRAMES, size=SIZE, seed=4, progress=False)
    assert (other[0].truth_dir / "centroids.csv").read_bytes() != (video.truth_dir / "centroids.csv").read_bytes()


def test_parallel_render_matches_serial(tmp_path):
    kwargs = dict(n_videos=2, n_frames=12, size=96, seed=1, progress=False, dlc_every=5)
    serial = demo.render_demo(tmp_path / "serial", workers=1, **kwargs)
    parallel = demo.render_demo(tmp_path / "parallel", workers=2, **kwargs)
    assert serial[0].id != serial[1].id
    for a, b in zip(serial, parallel):
        assert b.video.is_file() and probe(b.video).n_frames == 12
        for name in TRUTH_FILES:
            assert (a.truth_dir / name).read_bytes() == (b.truth_dir / name).read_bytes(), (a.id, name)
    # Videos draw from different seeds.
    first, second = (v.truth_dir / "positions_3d.csv" for v in serial)
    assert first.read_bytes() != second.read_bytes()


def test_dlc_csv_loads_with_sleap_io(rendered, truth):
    _, video = rendered
    labels = sleap_io.load_dlc(str(video.truth_dir / "keypoints_dlc.csv"))
    nodes = [n.name for n in labels.skeletons[0].nodes]
    assert sorted(nodes) == sorted(demo.BODYPARTS)
    assert sorted(t.name for t in labels.tracks) == ["dark", "spot", "stripe"]
    frames = list(range(0, N_FRAMES, 10))
    assert len(labels.labeled_frames) == len(frames)
    kp = truth["keypoints"].set_index(["frame", "animal"])
    for lf in labels.labeled_frames:
        frame = frames[lf.frame_idx]  # sleap-io numbers the images in order
        assert lf.video.filename[lf.frame_idx].endswith(f"img{frame:05d}.png")
        for inst in lf.instances:
            row = kp.loc[(frame, inst.track.name)]
            expected = np.array([[row[f"{node}_x"], row[f"{node}_y"]] for node in nodes], float)
            np.testing.assert_allclose(inst.numpy(), expected, atol=0.006)


def test_behaviour_labels(truth):
    b = truth["behaviour"]
    assert list(b.columns) == ["frame", "animal", "walk", "pause", "rear", "groom", "touch"]
    assert len(b) == 3 * N_FRAMES
    assert (b[list(demo.BEHAVIOURS)].sum(axis=1) == 1).all()
    assert b[list(demo.LABELS)].isin([0, 1]).all().all()
    touching = b.groupby("frame")["touch"].sum()
    assert not (touching == 1).any()  # touch takes two


def test_social_labels_agree_with_touch(truth):
    """Pair contacts: one row per frame and pair, and an animal touches exactly when some pair of it does."""
    s, b = truth["social"], truth["behaviour"]
    assert list(s.columns) == ["frame", "animal_a", "animal_b", "touch"]
    assert len(s) == 3 * N_FRAMES
    assert (s["animal_a"] < s["animal_b"]).all()
    per_animal = pd.concat([s.rename(columns={"animal_a": "animal"}), s.rename(columns={"animal_b": "animal"})])
    any_pair = per_animal.groupby(["frame", "animal"])["touch"].max()
    merged = b.set_index(["frame", "animal"])["touch"]
    assert (any_pair.reindex(merged.index).to_numpy() == merged.to_numpy()).all()


def test_simulation_bouts_walls_and_contacts():
    apps = demo.appearances(3)
    traj = demo.simulate(600, apps, 25.0, np.random.default_rng(0))
    lengths = []
    for i in range(3):
        s = traj.state[:, i]
        change = np.flatnonzero(np.diff(s)) + 1
        runs = np.diff(np.concatenate([[0], change, [len(s)]]))
        lengths += list(runs[1:-1])  # complete bouts only
    assert len(lengths) >= 10
    assert np.median(lengths) >= 10 and min(lengths) >= 0.4 * 25 - 1
    assert set(np.unique(traj.state)) == {0, 1, 2, 3}
    assert (np.abs(traj.x) < demo.ARENA_MM / 2).all() and (np.abs(traj.y) < demo.ARENA_MM / 2).all()
    # Animals meet: they touch now and then and overlap briefly, but mostly keep apart.
    overlap = np.zeros(600, bool)
    for f in range(600):
        poses = [(traj.x[f, i], traj.y[f, i], traj.heading[f, i], traj.shape(apps, f, i)) for i in range(3)]
        overlap[f] = any(demo._pair_gap(poses[i], poses[j], cutoff=0.0) < 0 for i in range(3) for j in range(i + 1, 3))
    assert 0.0 < overlap.mean() < 0.2
    assert 0.02 < traj.touch.any(axis=1).mean() < 0.6
    assert (traj.touch.any(axis=1) >= overlap).all()  # overlapping animals touch


def test_animals_appear_where_the_truth_puts_them(rendered, truth):
    _, video = rendered
    grey = read_frames(video.video, gray=True)[0].astype(float)
    coco = truth["coco"]
    covered = np.zeros(grey.shape, bool)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        covered[ann["frame"], max(y - 3, 0) : y + h + 3, max(x - 3, 0) : x + w + 3] = True
    seen = ~covered.all(axis=0)  # pixels where the background shows in some frame
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: never seen
        background = np.nanmedian(np.where(covered, np.nan, grey), axis=0)
    checked = 0
    for ann in coco["annotations"]:
        if ann["visible_fraction"] < 1:
            continue
        mask = np.zeros(grey.shape[1:], bool)
        for poly in ann["segmentation"]:
            xy = np.asarray(poly).reshape(-1, 2) - 0.5
            mask[rasterise(xy[:, 1], xy[:, 0], shape=mask.shape)] = True
        if seen[mask].mean() < 0.8:
            continue  # an animal that hardly moved: its background is unknown
        diff = np.abs(grey[ann["frame"]] - background)[mask & seen]
        assert diff.mean() > 40, ann
        assert (diff > 20).mean() > 0.75, ann
        checked += 1
    assert checked > N_FRAMES
    # Where no animal is, the frame is background.
    assert np.median(np.abs(grey - background)[~covered]) < 4


def test_positions_3d_project_to_centroids(truth):
    cam, pos, c = truth["camera"], truth["positions"], truth["centroids"]
    assert list(pos.columns) == ["frame", "animal", "X_mm", "Y_mm", "Z_mm", "heading_deg"]
    K, R, t = np.array(cam["K"]), np.array(cam["R"]), np.array(cam["t"])
    P = pos[["X_mm", "Y_mm", "Z_mm"]].to_numpy()
    Pc = P @ R.T + t
    uv = (Pc @ K.T)[:, :2] / Pc[:, 2:]
    visible = (c["visible_fraction"] == 1).to_numpy()
    err = np.hypot(uv[:, 0] - c["x"], uv[:, 1] - c["y"])[visible]
    assert np.median(err) < 2.0 and err.max() < 4.0
    # Further away (greater depth) renders smaller: area x depth^2 varies far less than area.
    b = truth["behaviour"]
    still = visible & (b["rear"] == 0).to_numpy() & (b["groom"] == 0).to_numpy()
    area, depth = c["area"].to_numpy()[still], Pc[still, 2]
    assert 400 < depth.min() and depth.max() < 800
    for name in ("dark", "stripe", "spot"):
        sel = (c["animal"].to_numpy()[still] == name)
        scaled = area[sel] * depth[sel] ** 2
        assert scaled.std() / scaled.mean() < 0.1


def test_perspective_makes_far_animals_smaller():
    cam = demo.make_camera(256)
    near, _ = cam.project(np.array([[0, -150, 14], [88, -150, 14]]))
    far, _ = cam.project(np.array([[0, 150, 14], [88, 150, 14]]))
    assert np.ptp(near[:, 0]) > 1.15 * np.ptp(far[:, 0])
    assert far[0, 1] < near[0, 1]  # further away is higher in the image


def test_skips_complete_demo_and_renders_changed(rendered, monkeypatch, tmp_path):
    outdir, video = rendered
    calls = []
    monkeypatch.setattr(demo, "_render_video", lambda outdir, index, meta, seed, bar: calls.append(meta["seed"]))
    demo.render_demo(outdir, n_videos=1, n_frames=N_FRAMES, size=SIZE, seed=3, progress=False)
    assert calls == []
    demo.render_demo(outdir, n_videos=1, n_frames=N_FRAMES, size=SIZE, seed=5, progress=False)
    assert calls == [5]


def test_failure_leaves_no_partial_demo(monkeypatch, tmp_path):
    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "_write_behaviour", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.render_demo(tmp_path, n_videos=1, n_frames=5, size=64, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="n_frames"):
        demo.render_demo(tmp_path, n_frames=0, progress=False)
