"""Pose estimation: label import/export, crops, heatmaps, loss, augmentation, networks, metrics, short training runs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sipec_models.io.keypoints import (
    KeypointLabels, PoseFrame, Skeleton, find_flip_pairs, load_keypoints, read_pose_images, to_dlc_csv, to_slp,
)
from sipec_models.metrics import (
    body_length, mean_pose_baseline, normalized_errors, pck, pose_errors, pose_median_error, pose_metrics, pose_rmse,
)
from sipec_models.nets.leap import LeapCNN
from sipec_models.nets.posenet import PoseNet
from sipec_models.pose import (
    PosePredictor, augment_pose, box_centres, build_pose_augment, crop_frames, crop_to_frame, decode_heatmaps,
    frame_to_crop, gaussian_heatmaps, keypoint_weights, pose_loss,
)
from sipec_models.training.config import load_model_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DLC_NODES = ["snout", "leftear", "rightear", "tailbase"]
FLY_PAIRS = {("wingL", "wingR"), ("forelegL4", "forelegR4"), ("midlegL4", "midlegR4"), ("hindlegL4", "hindlegR4"),
             ("eyeL", "eyeR")}


def _data(sub: str) -> Path:
    p = DATA / sub
    if not p.exists():
        pytest.skip(f"real data not available: {p} is absent")
    return p


@pytest.fixture(scope="module")
def dlc_csv() -> Path:
    return _data("dlc_openfield/labeled-data/m4s1/CollectedData_Pranav.csv")


@pytest.fixture(scope="module")
def dlc_labels(dlc_csv) -> KeypointLabels:
    return load_keypoints(dlc_csv)


@pytest.fixture(scope="module")
def clip_slp() -> Path:
    return _data("sleap_flies/clip.slp")


def _assert_same(a: KeypointLabels, b: KeypointLabels, images: bool = True):
    assert a.skeleton.nodes == b.skeleton.nodes
    assert a.skeleton.flip_pairs == b.skeleton.flip_pairs
    assert len(a) == len(b)
    for fa, fb in zip(a.frames, b.frames):
        assert fa.frame == fb.frame
        if images:
            assert (fa.image is None) == (fb.image is None)
            if fa.image is not None:
                assert Path(fa.image).name == Path(fb.image).name
        assert fa.tracks == fb.tracks
        np.testing.assert_allclose(fa.points, fb.points, atol=1e-4)  # SLP stores float32
        assert (fa.scores is None) == (fb.scores is None)
        if fa.scores is not None:
            np.testing.assert_allclose(fa.scores, fb.scores, atol=1e-6)


# --------------------------------------------------------------------------- import


def _spy_sleap_io_dlc(monkeypatch) -> list:
    """Record calls of sleap-io's DLC CSV loader."""
    import sleap_io

    calls, real = [], sleap_io.load_dlc
    monkeypatch.setattr(sleap_io, "load_dlc", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


@pytest.mark.realdata
def test_dlc_csv_import_through_sleap_io(dlc_csv, monkeypatch):
    calls = _spy_sleap_io_dlc(monkeypatch)
    labels = load_keypoints(dlc_csv)
    assert len(calls) == 1
    assert len(labels) == 116
    assert labels.skeleton.nodes == DLC_NODES  # the file's column order, not sleap-io's alphabetical order
    assert labels.skeleton.flip_pairs == [(1, 2)]  # leftear / rightear, glued to the stem
    f0 = labels.frames[0]
    assert f0.frame == 0 and Path(f0.image).name == "img0000.png" and Path(f0.image).is_file()
    assert f0.video == str(dlc_csv.parent) and f0.scores is None and f0.tracks == [None]
    # First data row of the CSV: snout, leftear, rightear, tailbase.
    np.testing.assert_allclose(f0.points[0], [[21.521, 265.428], [33.819, 265.941], [19.984, 250.056],
                                              [87.11, 152.698]])
    # Every row against an independent pandas read (node order, frame order, nothing dropped).
    raw = pd.read_csv(dlc_csv, header=[0, 1, 2], index_col=0)
    want = np.stack([raw.xs(n, axis=1, level=1).droplevel(0, axis=1)[["x", "y"]].to_numpy(float)
                     for n in DLC_NODES], axis=1)
    got = np.stack([f.points[0] for f in labels.frames])
    np.testing.assert_allclose(got, want)
    assert [f.frame for f in labels.frames] == list(range(116))
    assert np.isfinite(got).all()  # the README: none missing


@pytest.mark.realdata
def test_dlc_h5_and_project_read_like_the_csv(dlc_csv, dlc_labels):
    h5 = load_keypoints(dlc_csv.with_suffix(".h5"))  # h5py reader (sleap-io and pandas cannot read it here)
    project = load_keypoints(dlc_csv.parents[2])  # sleap-io's load_dlc_project
    for other in (h5, project):
        _assert_same(dlc_labels, other)
        # Same files (one reader may resolve symlinks in the data path, the other not).
        assert [Path(f.image).resolve() for f in other.frames] == [Path(f.image).resolve() for f in dlc_labels.frames]


@pytest.mark.realdata
def test_slp_import_keeps_missing_keypoints_missing(clip_slp):
    import sleap_io as sio

    labels = load_keypoints(clip_slp)
    raw = sio.load_slp(str(clip_slp), open_videos=False)
    nodes = labels.skeleton.nodes
    assert len(labels) == len(raw.labeled_frames) == 1500 and len(nodes) == 13
    assert set(labels.track_names) == {"female", "male"}
    assert {(nodes[a], nodes[b]) for a, b in labels.skeleton.flip_pairs} == FLY_PAIRS
    assert Path(labels.frames[0].video).resolve() == (clip_slp.parent / "clip.mp4").resolve()
    assert labels.frames[0].image is None
    pts, rows, tracks = labels.instances()
    raw_pts = np.stack([i.numpy() for lf in raw.labeled_frames for i in lf.instances])
    assert pts.shape == raw_pts.shape == (len(tracks), 13, 2)
    n_nan = int(np.isnan(raw_pts).any(-1).sum())
    assert n_nan > 0 and int(np.isnan(pts).any(-1).sum()) == n_nan  # missing stays NaN
    assert int((pts == 0).sum()) == int((raw_pts == 0).sum())  # never turned into zeros
    np.testing.assert_array_equal(pts, raw_pts)
    # points_by_track puts each fly in its own slot.
    by = labels.points_by_track(["female", "male"])
    assert by.shape == (1500, 2, 13, 2)
    f0 = labels.frames[0]
    np.testing.assert_array_equal(by[0, 1], f0.points[f0.tracks.index("male")])


@pytest.mark.realdata
def test_dlc_csv_with_three_index_columns(tmp_path, dlc_labels, monkeypatch):
    """Newer DLC writes the image path as three index columns: labeled-data, <video>, <file>."""
    frames = dlc_labels.frames[:3]
    cols = pd.MultiIndex.from_tuples([("me", n, c) for n in DLC_NODES for c in ("x", "y")],
                                     names=["scorer", "bodyparts", "coords"])
    index = pd.MultiIndex.from_tuples([("labeled-data", "m4s1", Path(f.image).name) for f in frames])
    df = pd.DataFrame(np.stack([f.points[0].ravel() for f in frames]), index=index, columns=cols)
    folder = tmp_path / "labeled-data" / "m4s1"
    folder.mkdir(parents=True)
    df.to_csv(folder / "CollectedData_me.csv")
    assert (folder / "CollectedData_me.csv").read_text().startswith("scorer,,,me,me")
    want = KeypointLabels(dlc_labels.skeleton, frames)
    calls = _spy_sleap_io_dlc(monkeypatch)
    _assert_same(want, load_keypoints(folder / "CollectedData_me.csv"))  # no images beside it: pandas reader
    assert not calls
    for f in frames:
        (folder / Path(f.image).name).symlink_to(f.image)
    again = load_keypoints(folder / "CollectedData_me.csv")  # images present: sleap-io's reader
    assert len(calls) == 1
    _assert_same(want, again)
    assert Path(again.frames[0].image).parent == folder


def test_flip_pairs_by_name_and_explicit():
    assert find_flip_pairs(DLC_NODES) == [(1, 2)]
    names = ["head", "ear_l", "ear_r", "L_paw", "R_paw", "left hand", "right hand", "tail", "wingL", "wingR"]
    assert find_flip_pairs(names) == [(1, 2), (3, 4), (5, 6), (8, 9)]
    assert find_flip_pairs(["nose", "tail"]) == []
    assert find_flip_pairs(["a", "b", "c"], [("c", "a")]) == [(2, 0)]
    assert find_flip_pairs(["a", "b", "c"], [(0, 1)]) == [(0, 1)]
    with pytest.raises(ValueError, match="not in"):
        find_flip_pairs(["a", "b"], [("a", "z")])
    sk = Skeleton(DLC_NODES, [(0, 1)], [(1, 2)])
    np.testing.assert_array_equal(sk.flip_permutation(), [0, 2, 1, 3])
    with pytest.raises(ValueError):
        Skeleton(["a", "b"], flip_pairs=[(0, 0)])


@pytest.mark.realdata
def test_read_pose_images(dlc_labels, clip_slp):
    from PIL import Image

    grey = read_pose_images(dlc_labels.frames[:2])
    assert grey.shape == (2, 480, 640) and grey.dtype == np.uint8
    with Image.open(dlc_labels.frames[1].image) as im:
        np.testing.assert_array_equal(grey[1], np.asarray(im.convert("L")))
    rgb = read_pose_images(dlc_labels.frames[:1], gray=False)
    assert rgb.shape == (1, 480, 640, 3)
    flies = load_keypoints(clip_slp)
    frames = read_pose_images([flies.frames[500], flies.frames[0]])
    assert frames.shape == (2, 1024, 1024) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[1])
    # Flies are bright on a dark background: the labelled thorax is brighter than the frame's median.
    thorax = flies.skeleton.nodes.index("thorax")
    for img, f in zip(frames, [flies.frames[500], flies.frames[0]]):
        for p in f.points[:, thorax]:
            if np.isfinite(p).all():
                x, y = np.round(p).astype(int)
                assert img[y - 2:y + 3, x - 2:x + 3].mean() > np.median(img) + 50


def test_import_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_keypoints(tmp_path / "nothing.slp")
    plain = tmp_path / "plain.csv"
    plain.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="plain.csv.*not a DeepLabCut CSV"):
        load_keypoints(plain)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("scorer,me,me\nbodyparts,nose,nose\ncoords,x,z\n0,1,2\n")
    with pytest.raises(ValueError, match="wrong.csv.*coords"):
        load_keypoints(wrong)
    odd = tmp_path / "labels.xyz"
    odd.write_text("hello")
    with pytest.raises(ValueError, match="labels.xyz"):
        load_keypoints(odd)
    h5 = tmp_path / "notes.h5"
    h5.write_text("not hdf5")
    with pytest.raises(ValueError, match="notes.h5"):
        load_keypoints(h5)
    missing = [PoseFrame(None, 0, np.zeros((1, 2, 2)), image=str(tmp_path / "img0000.png"))]
    with pytest.raises(ValueError, match="img0000.png.*not found"):
        read_pose_images(missing)


# --------------------------------------------------------------------------- export round trips


def _predictions(skeleton: Skeleton, frames: list[PoseFrame], seed: int = 0) -> KeypointLabels:
    """Perturbed copies of labelled frames with scores, one keypoint per frame missing."""
    rng = np.random.default_rng(seed)
    out = []
    for i, f in enumerate(frames):
        pts = f.points + rng.normal(0, 2, f.points.shape)
        pts[:, i % skeleton.n_nodes] = np.nan
        sc = rng.uniform(0.2, 1.0, pts.shape[:2])
        sc[~np.isfinite(pts).all(-1)] = np.nan
        out.append(PoseFrame(f.video, f.frame, pts, list(f.tracks), f.image, sc))
    return KeypointLabels(skeleton, out)


@pytest.mark.realdata
def test_export_round_trip_on_dlc_images(tmp_path, dlc_labels, monkeypatch):
    preds = _predictions(dlc_labels.skeleton, dlc_labels.frames[:6])
    to_slp(preds, tmp_path / "pred.slp")
    _assert_same(preds, load_keypoints(tmp_path / "pred.slp"))
    to_dlc_csv(preds, tmp_path / "pred.csv")
    text = (tmp_path / "pred.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in text[:3]] == ["scorer", "bodyparts", "coords"]
    assert text[3].startswith("labeled-data/m4s1/img0000.png,")
    back = load_keypoints(tmp_path / "pred.csv")  # images not beside it: the pandas reader
    _assert_same(preds, back)
    # Human labels written into a DLC folder (images linked) read back through sleap-io's loader.
    folder = tmp_path / "project" / "labeled-data" / "m4s1"
    folder.mkdir(parents=True)
    some = KeypointLabels(dlc_labels.skeleton, dlc_labels.frames[:3])
    for f in some.frames:
        (folder / Path(f.image).name).symlink_to(f.image)
    to_dlc_csv(some, folder / "CollectedData_me.csv", scorer="me")
    calls = _spy_sleap_io_dlc(monkeypatch)
    again = load_keypoints(folder / "CollectedData_me.csv")
    assert len(calls) == 1
    _assert_same(some, again)
    assert all(Path(f.image).parent == folder for f in again.frames)


def test_export_round_trip_multi_animal_video(tmp_path):
    sk = Skeleton(["head", "wingL", "wingR"], [(0, 1), (0, 2)], find_flip_pairs(["head", "wingL", "wingR"]))
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 500, (4, 2, 3, 2))
    pts[1, 0, 2] = np.nan
    pts[2, 1] = np.nan  # the male is absent in frame 12
    scores = rng.uniform(0.1, 1, (4, 2, 3))
    preds = KeypointLabels.from_arrays(pts, sk, video=str(tmp_path / "v.mp4"), frames=[3, 7, 12, 40],
                                       scores=scores, tracks=["female", "male"])
    assert [len(f.points) for f in preds.frames] == [2, 2, 1, 2]
    assert np.isnan(preds.frames[1].scores[0, 2])
    to_slp(preds, tmp_path / "p.slp")
    back = load_keypoints(tmp_path / "p.slp")
    _assert_same(preds, back)
    assert back.frames[0].video == str(tmp_path / "v.mp4") and back.skeleton.edges == sk.edges
    to_dlc_csv(preds, tmp_path / "p.csv")
    head = (tmp_path / "p.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in head[:4]] == ["scorer", "individuals", "bodyparts", "coords"]
    assert head[4].startswith("3,")
    back = load_keypoints(tmp_path / "p.csv", video=tmp_path / "v.mp4")
    _assert_same(preds, back)
    assert back.frames[2].video == str(tmp_path / "v.mp4")
    np.testing.assert_allclose(back.points_by_track(["female", "male"]), pts)


# --------------------------------------------------------------------------- heatmaps, loss, crops


@pytest.mark.parametrize("stride,sigma", [(1, 5.0), (4, 8.0), (4, 4.0)])
def test_heatmap_targets_decode_to_subpixel_keypoints(stride, sigma):
    torch.manual_seed(0)
    S = 64
    pts = torch.rand(16, 3, 2) * (S - 24) + 12
    pts[0, 1] = float("nan")
    maps = gaussian_heatmaps(pts, (S // stride, S // stride), stride, sigma)
    assert maps.shape == (16, 3, S // stride, S // stride)
    assert maps[0, 1].abs().max() == 0  # missing keypoint: empty map
    dec, conf = decode_heatmaps(maps, stride)
    ok = torch.isfinite(pts).all(-1)
    err = (dec - pts).norm(dim=-1)[ok]
    assert err.max() < 0.1  # the argmax alone is off by up to half a cell
    raw, _ = decode_heatmaps(maps, stride, refine=False)
    assert (raw - pts).norm(dim=-1)[ok].max() > 0.3 * stride
    assert conf[ok].min() > 0.75 and conf[ok].max() <= 1  # the nearest cell is <= stride / sqrt 2 away


def test_loss_ignores_unlabelled_keypoints():
    torch.manual_seed(0)
    pts = torch.tensor([[[10.0, 20.0], [float("nan"), float("nan")], [30.0, 40.0]],
                        [[15.0, 25.0], [40.0, 12.0], [float("nan"), float("nan")]]])
    target = gaussian_heatmaps(pts, (16, 16), 4, 8.0)
    w = keypoint_weights(pts)
    assert w.tolist() == [[1, 0, 1], [1, 1, 0]]
    for kind in ("bce", "mse"):
        out = torch.randn(2, 3, 16, 16, requires_grad=True)
        loss = pose_loss(out, target, w, kind)
        loss.backward()
        assert out.grad[0, 1].abs().max() == 0 and out.grad[1, 2].abs().max() == 0
        assert out.grad[0, 0].abs().max() > 0 and out.grad[1, 1].abs().max() > 0
        changed = out.detach().clone()
        changed[0, 1] += 100.0
        changed[1, 2] -= 50.0
        assert pose_loss(changed, target, w, kind) == pytest.approx(loss.item())
        # Mean over the labelled maps only.
        per = (torch.nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none") if kind == "bce"
               else (out - target) ** 2).mean((2, 3))
        assert loss.item() == pytest.approx(float((per * w).sum().detach() / 4), rel=1e-5)


def _centroid(img: torch.Tensor, x: float, y: float, r: int = 3) -> tuple[float, float]:
    """Intensity centroid of the (background-subtracted) window around ``(x, y)``."""
    xi, yi = int(round(x)), int(round(y))
    win = img[yi - r:yi + r + 1, xi - r:xi + r + 1].double()
    win = win - win.min()
    ys, xs = torch.meshgrid(torch.arange(yi - r, yi + r + 1).double(), torch.arange(xi - r, xi + r + 1).double(),
                            indexing="ij")
    return float((win * xs).sum() / win.sum()), float((win * ys).sum() / win.sum())


@pytest.mark.parametrize("scale", [1.0, 2.0, 1.5])
def test_crops_map_keypoints_exactly(scale):
    frame = np.full((1, 90, 120), 40, np.uint8)
    kps = np.array([[[37.0, 41.0], [70.0, 52.0], [50.0, 60.0]]])
    for x, y in kps[0]:
        frame[0, int(y), int(x)] = 240
    centre = np.array([[53.3, 49.6]])
    crop = crop_frames(frame, centre, 48, scale)
    assert crop.shape == (1, 1, 48, 48) and 0 <= crop.min() and crop.max() <= 1
    u = frame_to_crop(kps, centre, 48, scale)[0]
    for ux, uy in u:
        if 4 <= ux < 44 and 4 <= uy < 44:
            cx, cy = _centroid(crop[0, 0], ux, uy)
            assert abs(cx - ux) < 0.05 and abs(cy - uy) < 0.05
    np.testing.assert_allclose(crop_to_frame(u[None], centre, 48, scale), kps, atol=1e-9)
    # A crop reaching past the frame edge is filled with the window's median grey.
    edge = crop_frames(frame, np.array([[2.0, 2.0]]), 48, scale)
    assert edge[0, 0, 0, 0] == pytest.approx(40 / 255, abs=1e-4)


def test_crop_of_rgb_frames_and_antialiasing():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    crops = crop_frames(frames, np.array([[31.5, 31.5], [20.0, 30.0]]), 64, 1.0, frame_index=[0, 1])
    assert crops.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(crops[0].permute(1, 2, 0).numpy() * 255, frames[0], atol=0.01)
    # Shrinking a 1-px checkerboard 4x: anti-aliased crops are its mean grey; without the blur every
    # sample lands on a pixel of the same colour (aliasing).
    board = ((np.indices((128, 128)).sum(0) % 2) * 255).astype(np.uint8)[None]
    smooth = crop_frames(board, np.array([[63.0, 63.0]]), 32, 0.25)[0, 0, 4:-4, 4:-4]
    assert abs(smooth.mean() - 0.5) < 0.02 and smooth.std() < 0.02
    aliased = crop_frames(board, np.array([[63.0, 63.0]]), 32, 0.25, antialias=False)[0, 0, 4:-4, 4:-4]
    assert abs(aliased.mean() - 0.5) > 0.45


# --------------------------------------------------------------------------- augmentation


def test_augmentation_moves_keypoints_with_their_pixels_and_swaps_left_right():
    torch.manual_seed(3)
    aug = build_pose_augment({"rotation_deg": 180, "translate": 0.1, "scale": 0.2, "hflip": 0.5, "vflip": 0.5,
                              "brightness": 0.1, "contrast": 0.2, "color_p": 1.0})
    B, S = 32, 65
    img = torch.zeros(B, 1, S, S)
    img[:, 0, 30, 22] = 1.0   # node 1 (left ear): bright
    img[:, 0, 24, 40] = 0.5   # node 2 (right ear): half as bright
    kp = torch.tensor([[float("nan"), float("nan")], [22.0, 30.0], [40.0, 24.0]]).repeat(B, 1, 1)
    perm = Skeleton(["snout", "leftear", "rightear"], flip_pairs=[(1, 2)]).flip_permutation()
    out, kp2 = augment_pose(aug, img, kp, perm)
    mirrored = torch.det(aug.transform_matrix) < 0
    assert 0 < mirrored.sum() < B  # both kinds occurred
    assert torch.isnan(kp2[:, 0]).all()  # missing stays missing
    checked = 0
    for b in range(B):
        peaks = {}
        for k in (1, 2):
            x, y = kp2[b, k].tolist()
            if not (4 <= x < S - 4 and 4 <= y < S - 4):
                continue
            cx, cy = _centroid(out[b, 0], x, y)
            assert abs(cx - x) < 1 and abs(cy - y) < 1, (b, k, (x, y), (cx, cy))
            win = out[b, 0, int(round(y)) - 3:int(round(y)) + 4, int(round(x)) - 3:int(round(x)) + 4]
            peaks[k] = (win - win.min()).sum()  # the pixel's (resampled) intensity
        if len(peaks) == 2:
            checked += 1
            # Unmirrored: "leftear" sits on the bright pixel; mirrored: on the dim one (identities swapped).
            assert (peaks[1] > peaks[2]) == (not bool(mirrored[b]))
    assert checked > B // 2


def test_horizontal_flip_swaps_left_and_right():
    aug = build_pose_augment({"hflip": 1.0})
    S = 33
    img = torch.zeros(1, 1, S, S)
    kp = torch.tensor([[[5.0, 7.0], [10.0, 3.0], [20.0, 12.0], [float("nan"), float("nan")]]])
    perm = Skeleton(["a", "left", "right", "b"], flip_pairs=[(1, 2)]).flip_permutation()
    _, kp2 = augment_pose(aug, img, kp, perm)
    mirror = lambda p: [S - 1 - p[0], p[1]]  # noqa: E731
    np.testing.assert_allclose(kp2[0, 0], mirror(kp[0, 0]), atol=1e-4)
    np.testing.assert_allclose(kp2[0, 1], mirror(kp[0, 2]), atol=1e-4)  # "left" = the mirrored right point
    np.testing.assert_allclose(kp2[0, 2], mirror(kp[0, 1]), atol=1e-4)
    assert torch.isnan(kp2[0, 3]).all()


# --------------------------------------------------------------------------- networks and configs


def test_network_shapes():
    torch.manual_seed(0)
    net = PoseNet(5, deconv_channels=32, pretrained=False).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 64, 96)).shape == (2, 5, 16, 24)
        assert net(torch.rand(1, 3, 32, 32)).shape == (1, 5, 8, 8)
    assert net.stride == 4
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.rand(1, 1, 48, 64))
    leap = LeapCNN(5).eval()
    convs = [m for m in leap.modules() if type(m) is torch.nn.Conv2d]
    ups = [m for m in leap.modules() if type(m) is torch.nn.ConvTranspose2d]
    assert [c.out_channels for c in convs] == [64] * 3 + [128] * 3 + [256] * 3 + [128] * 2  # LEAP's filters
    assert [(u.out_channels, u.kernel_size, u.stride) for u in ups] == [(128, (3, 3), (2, 2)), (5, (3, 3), (2, 2))]
    with torch.no_grad():
        assert leap(torch.rand(2, 1, 32, 24)).shape == (2, 5, 32, 24)
        small = LeapCNN(5, in_channels=3, width_mult=0.25)
        assert small(torch.rand(1, 3, 32, 32)).shape == (1, 5, 32, 32)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in leap.parameters()) / 10
    with pytest.raises(ValueError, match="multiples of 4"):
        leap(torch.rand(1, 1, 30, 32))


def test_configs_load():
    for name, loss in (("posenet", "bce"), ("leap", "mse")):
        cfg = load_model_config(name, ["train.max_steps=3", "data.crop_size=64"])
        assert cfg.model.name == name and cfg.train.max_steps == 3 and cfg.train.loss == loss
        assert {"crop_size", "scale", "rgb"} <= set(cfg.data) and {"batch_size", "min_confidence"} <= set(cfg.infer)
        assert {"rotation_deg", "hflip", "vflip", "brightness", "contrast"} <= set(cfg.augment)
    assert load_model_config("leap").train.sigma_px == 5.0 and load_model_config("leap").model.filters == 64


# --------------------------------------------------------------------------- metrics


def test_pose_metrics_hand_computed():
    truth = np.array([[[0.0, 0.0], [10.0, 0.0], [np.nan, np.nan]],
                      [[0.0, 0.0], [0.0, 20.0], [5.0, 5.0]]])
    pred = np.array([[[3.0, 4.0], [10.0, 1.0], [1.0, 1.0]],
                     [[0.0, 0.0], [np.nan, np.nan], [5.0, 7.0]]])
    err = pose_errors(pred, truth)
    np.testing.assert_allclose(err, [[5, 1, np.nan], [0, np.nan, 2]])
    assert pose_rmse(pred, truth) == pytest.approx(np.sqrt((25 + 1 + 0 + 4) / 4))
    np.testing.assert_allclose(pose_rmse(pred, truth, per_keypoint=True), [np.sqrt(12.5), 1, 2])
    assert pose_median_error(pred, truth) == pytest.approx(1.5)
    assert pck(pred, truth, 1.0) == pytest.approx(0.5)
    np.testing.assert_allclose(pck(pred, truth, [0.5, 2.0, 5.0]), [0.25, 0.75, 1.0])
    np.testing.assert_allclose(pck(pred, truth, [2.0], per_keypoint=True), [[0.5, 1.0, 1.0]])
    np.testing.assert_allclose(body_length(truth, (0, 1)), [10, 20])
    np.testing.assert_allclose(body_length(truth), [10, np.sqrt(5 ** 2 + 20 ** 2)])  # keypoint box diagonals
    np.testing.assert_allclose(normalized_errors(pred, truth, [10, 20]), [[0.5, 0.1, np.nan], [0, np.nan, 0.1]])
    m = pose_metrics(pred, truth, radii=(2.0,), node_names=["a", "b", "c"], body_nodes=(0, 1))
    assert m["n"] == 4 and m["pck"]["2.0"] == pytest.approx(0.75)
    assert m["error_body_fraction"] == pytest.approx((0.5 + 0.1 + 0 + 0.1) / 4)
    assert m["per_keypoint"]["b"]["rmse_px"] == pytest.approx(1.0)
    base = mean_pose_baseline(truth, 3)
    np.testing.assert_allclose(base[0], [[0, 0], [5, 10], [5, 5]])
    rel = mean_pose_baseline(truth, 1, truth[:, 0], np.array([[100.0, 100.0]]))
    np.testing.assert_allclose(rel[0], [[100, 100], [105, 110], [105, 105]])


# --------------------------------------------------------------------------- training


def _synthetic(n: int, seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Frames with a bright blob (keypoint 0) and a dark dot (keypoint 1) 14-22 px away in a random direction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    images = np.empty((n, size, size), np.uint8)
    kps = np.empty((n, 2, 2))
    for i in range(n):
        r, th = rng.uniform(14, 22), rng.uniform(0, 2 * np.pi)
        p0 = rng.uniform(30, size - 30, 2)
        p1 = p0 + r * np.array([np.cos(th), np.sin(th)])
        im = 0.3 + 0.02 * rng.standard_normal((size, size))
        im += 0.5 * np.exp(-((xx - p0[0]) ** 2 + (yy - p0[1]) ** 2) / (2 * 4.0 ** 2))
        im -= 0.3 * np.exp(-((xx - p1[0]) ** 2 + (yy - p1[1]) ** 2) / (2 * 2.5 ** 2))
        images[i] = np.clip(im * 255, 0, 255).astype(np.uint8)
        kps[i] = [p0, p1]
    return images, kps


#: Tiny runs: small crops, no geometric augmentation (its crops would be 1.4x larger), constant lr.
TINY = ["train.batch_size=8", "train.lr_steps=[]", "augment.rotation_deg=0", "augment.translate=0",
        "augment.scale=0", "augment.hflip=0.5", "augment.brightness=0.1", "augment.contrast=0.1"]


@pytest.mark.parametrize("model,overrides", [
    # About 15 s each on one shared CPU core. PoseNet escapes the "average heatmap" plateau after
    # ~40-60 steps at 64 px (the encoder's stride-32 map is 2x2); 80 steps leave a wide margin
    # (RMSE 0.26-0.37 of the baseline over seeds 0-2). LEAP learns the dark dot later than the bright
    # blob: 150 steps on 48 px crops with a sigma scaled to the crop (0.03-0.07 of the baseline).
    ("posenet", ["data.crop_size=64", "train.max_steps=80", "model.deconv_channels=64"]),
    ("leap", ["data.crop_size=48", "train.max_steps=150", "model.width_mult=0.25", "train.sigma_px=3"]),
])
def test_short_training_beats_the_mean_pose(tmp_path, model, overrides):
    from sipec_models.training.pose import load_pose, save_pose, train_pose

    images, kps = _synthetic(64, seed=0)
    kps[::5, 1] = np.nan  # incomplete labels: every 5th dark dot unlabelled
    test_images, test_kps = _synthetic(32, seed=1)
    cfg = load_model_config(model, TINY + overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CI machines: oversubscribed threads are far slower
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
            net = train_pose(images, kps, cfg, model=model, node_names=["blob", "dot"])
        predictor = PosePredictor(net, device="cpu")
        centres = box_centres(test_kps)
        pred, conf = predictor.predict(test_images, centres)
    finally:
        torch.set_num_threads(threads)
    assert pred.shape == (32, 2, 2) and conf.shape == (32, 2)
    assert np.isfinite(pred).all() and ((0 <= conf) & (conf <= 1)).all()
    train_centres = box_centres(kps)
    baseline = mean_pose_baseline(kps, len(test_kps), train_centres, centres)
    rmse, base = pose_rmse(pred, test_kps), pose_rmse(baseline, test_kps)
    assert base > 7  # the keypoints' direction is random: the mean pose sits near the centre
    assert rmse < 0.6 * base, (rmse, base)
    assert np.isfinite(net.history[0]["loss"]) and net.history[-1]["loss"] < net.history[0]["loss"]
    # Checkpoint round trip: same predictions; several animals per frame via frame_index.
    save_pose(net, tmp_path / "pose.pt", meta={"test": True})
    loaded = load_pose(tmp_path / "pose.pt")
    assert loaded.node_names == ["blob", "dot"] and loaded.meta == {"test": True}
    again, conf2 = PosePredictor(loaded, device="cpu").predict(test_images[:4], np.concatenate([centres[:4],
                                                                                                centres[:1]]),
                                                               frame_index=[0, 1, 2, 3, 0])
    np.testing.assert_allclose(again[:4], pred[:4], atol=1e-4)
    np.testing.assert_allclose(again[4], pred[0], atol=1e-4)
    with pytest.raises(ValueError, match="not a pose checkpoint"):
        torch.save({"format": "other"}, tmp_path / "x.pt")
        load_pose(tmp_path / "x.pt")


def test_collapsed_training_restarts_from_the_next_seed(caplog):
    """A run whose peaks stay below train.min_peak is repeated with seed + 1, up to train.restarts times."""
    from sipec_models.training.pose import train_pose

    images, kps = _synthetic(8, seed=0)
    tiny = [*TINY, "data.crop_size=48", "train.max_steps=2", "model.width_mult=0.125", "train.restarts=1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        with caplog.at_level(logging.WARNING, logger="sipec_models.training.pose"):
            net = train_pose(images, kps, load_model_config("leap", [*tiny, "train.min_peak=1.01"]))  # impossible
        assert net.training_seed == 1 and 0 <= net.training_peak < 1.01
        assert "collapsed" in caplog.text and "restarting with the next seed" in caplog.text
        assert "no restarts left" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sipec_models.training.pose"):
            net = train_pose(images, kps, load_model_config("leap", [*tiny, "train.min_peak=0"]))
        assert net.training_seed == 0 and "collapsed" not in caplog.text
