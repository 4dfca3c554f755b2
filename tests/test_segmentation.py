"""Classical segmenter: synthetic scenes drawn here, chunk arrays, config errors, and the real fly clip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from sipec_models.io.video import probe, read_frames, write_video
from sipec_models.segmentation.classical import (
    HIST_BINS, ClassicalConfig, ClassicalSegmenter, calibrate, crop_window, decide_polarity, estimate_background,
    grey_histogram, segment_chunk, segment_frame,
)
from sipec_models.segmentation.flags import AT_BORDER, EXTRA, MERGED_SPLIT, decode_flags, flag_arrays
from sipec_models.tracking import box_iou, identity_switches, instances_to_slots

FLOOR, ANIMAL = 200, 60  # light arena, dark animals (grey levels)


def ellipse(shape, cx, cy, a, b, angle_deg=0.0) -> np.ndarray:
    """Bool mask of a filled ellipse: centre (cx, cy) px, semi-axes a (along angle) and b."""
    y, x = np.mgrid[:shape[0], :shape[1]]
    th = np.deg2rad(angle_deg)
    u = (x - cx) * np.cos(th) + (y - cy) * np.sin(th)
    v = -(x - cx) * np.sin(th) + (y - cy) * np.cos(th)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def scene(shape, animals, noise=3.0, seed=0, floor=FLOOR, value=ANIMAL) -> np.ndarray:
    """uint8 frame: ``floor`` plus Gaussian noise, animals ``(cx, cy, a, b, angle)`` painted ``value``."""
    rng = np.random.default_rng(seed)
    frame = np.full(shape, float(floor)) + rng.normal(0, noise, shape)
    for cx, cy, a, b, ang in animals:
        frame[ellipse(shape, cx, cy, a, b, ang)] = value + rng.normal(0, noise)
    return np.clip(np.round(frame), 0, 255).astype(np.uint8)


BG = np.full((128, 128), float(FLOOR), np.float32)
CFG = ClassicalConfig(polarity="dark", threshold=30, seed_threshold=60)


def centres(instances):
    return np.array([i.com for i in instances])


def test_two_separate_animals():
    frame = scene((128, 128), [(40, 40, 14, 6, 20), (90, 85, 12, 5, -40)])
    inst = segment_frame(frame, BG, CFG, n_animals=2)
    assert len(inst) == 2
    assert all(i.flags == 0 for i in inst)
    got = centres(inst)
    assert np.allclose(got[np.argsort(got[:, 0])], [[40, 40], [90, 85]], atol=0.6)
    big = inst[0]
    assert big.area == pytest.approx(np.count_nonzero(ellipse((128, 128), 40, 40, 14, 6, 20)), rel=0.05)
    assert big.mask.shape == (big.box[3] - big.box[1], big.box[2] - big.box[0])
    assert big.full_mask((128, 128)).sum() == big.area
    assert 0.5 < big.score <= 1 and inst[0].area >= inst[1].area


def test_auto_resolution_from_the_frame():
    frame = scene((128, 128), [(40, 40, 14, 6, 20), (90, 85, 12, 5, -40)])
    assert decide_polarity(BG, frame[None]) == "dark"
    inst = segment_frame(frame, BG, ClassicalConfig(), n_animals=2)
    assert len(inst) == 2
    light = 255 - frame
    assert decide_polarity(255 - BG, light[None]) == "light"
    assert len(segment_frame(light, 255 - BG, ClassicalConfig(), n_animals=2)) == 2


def test_touching_pair_is_split():
    truth = [(50, 64, 16, 7, 0), (78, 64, 16, 7, 0)]  # end to end, overlapping by 4 px
    frame = scene((128, 128), truth)
    seg = ClassicalSegmenter(BG, CFG)
    assert len(seg.blobs(frame)) == 1
    single = np.count_nonzero(ellipse((128, 128), 50, 64, 16, 7))
    for prev in (None, np.array([[48.0, 63.0], [80.0, 65.0]])):
        inst = seg.segment(frame, n_animals=2, prev_centres=prev, ref_area=single)
        assert len(inst) == 2
        assert all(i.flags & MERGED_SPLIT for i in inst)
        got = centres(inst)
        assert np.allclose(got[np.argsort(got[:, 0])], [[50, 64], [78, 64]], atol=2.5)
        assert sum(i.area for i in inst) == seg.blobs(frame)[0][2].sum()


def test_side_by_side_pair_split_follows_seeds():
    truth = [(64, 56, 20, 7, 0), (64, 69, 20, 7, 0)]  # parallel, touching along their length
    frame = scene((128, 128), truth)
    inst = segment_frame(frame, BG, CFG, n_animals=2, prev_centres=np.array([[64.0, 55.0], [64.0, 70.0]]))
    got = centres(inst)
    assert len(inst) == 2
    assert np.allclose(got[np.argsort(got[:, 1])], [[64, 56], [64, 69]], atol=2.0)


def test_single_animal_is_not_split_when_its_area_is_known():
    frame = scene((128, 128), [(64, 64, 16, 7, 30)])
    area = np.count_nonzero(ellipse((128, 128), 64, 64, 16, 7, 30))
    inst = segment_frame(frame, BG, CFG, n_animals=2, ref_area=area)
    assert len(inst) == 1 and inst[0].flags == 0
    assert inst[0].score > 0.5
    # Without n_animals nothing is ever split.
    two = scene((128, 128), [(50, 64, 16, 7, 0), (78, 64, 16, 7, 0)])
    assert len(segment_frame(two, BG, CFG)) == 1


def test_border_blob_is_flagged():
    frame = scene((128, 128), [(4, 60, 14, 6, 0), (80, 80, 12, 6, 0)])
    inst = segment_frame(frame, BG, CFG, n_animals=2)
    border = [i for i in inst if i.box[0] == 0]
    assert len(border) == 1 and border[0].flags == AT_BORDER
    assert [i.flags for i in inst if i.box[0] > 0] == [0]


def test_noise_and_specks_are_rejected():
    rng = np.random.default_rng(3)
    frame = scene((128, 128), [(64, 64, 14, 6, 10)], noise=6.0)
    # Faint blobs (beyond the mask threshold, never beyond the seed threshold) and tiny dark specks.
    for cx, cy in [(20, 20), (100, 30), (30, 100)]:
        frame[ellipse((128, 128), cx, cy, 6, 4)] = FLOOR - 40
    ys, xs = rng.integers(0, 128, 30), rng.integers(0, 128, 30)
    frame[ys, xs] = 0
    inst = segment_frame(frame, BG, CFG, n_animals=1)
    assert len(inst) == 1 and np.allclose(inst[0].com, (64, 64), atol=1)
    # Without hysteresis the faint blobs come back.
    plain = ClassicalConfig(polarity="dark", threshold=30, seed_threshold=30)
    assert len(segment_frame(frame, BG, plain, n_animals=1)) == 4


def test_windowed_labelling_equals_whole_frame():
    """Labelling in windows around seed clusters must find exactly the whole-frame components."""
    rng = np.random.default_rng(7)
    frame = np.full((300, 400), 200, np.uint8)
    lines = [((10, 280), (20, 30)), ((150, 155), (0, 400)), ((40, 260), (300, 304))]  # long, cross windows
    for (y0, y1), (x0, x1) in lines:
        frame[y0:y1, x0:x1] = 150  # faint: mask threshold only
    for cx, cy in rng.uniform(10, 290, (12, 2)):
        frame[ellipse(frame.shape, cx, cy, 9, 5, rng.uniform(0, 180))] = 40  # seeds
    frame[150:154, 395:400] = 40  # a seed at the far end of the long line
    background = np.full(frame.shape, 200, np.float32)
    seg = ClassicalSegmenter(background, ClassicalConfig(polarity="dark", threshold=20, seed_threshold=100,
                                                         open_radius=0, close_radius=0, fill_holes=False))
    labels, n = ndi.label(seg.foreground(frame), structure=np.ones((3, 3), bool))
    seeded = np.unique(labels[seg.foreground(frame, seed=True)])
    expected = {(sl[0].start, sl[1].start, (labels[sl] == k).tobytes())
                for k, sl in enumerate(ndi.find_objects(labels), 1) if k in seeded}
    got = {(y, x, m.tobytes()) for y, x, m in seg._components(frame)}
    assert got == expected


def test_blobs_equal_whole_frame_morphology():
    """Morphology inside boxes and groups must equal opening, closing and hole filling of the whole frame."""
    rng = np.random.default_rng(11)
    frame = scene((160, 160), [], noise=4.0, seed=11)
    for k in range(14):  # animals with gaps of 0..6 px to a neighbour, some at the border
        cx, cy = rng.uniform(0, 160, 2)
        frame[ellipse(frame.shape, cx, cy, rng.uniform(4, 12), rng.uniform(2, 5), rng.uniform(0, 180))] = 70
        frame[ellipse(frame.shape, cx + 13 + k % 7, cy, 5, 3)] = 120  # faint partner a few px away
    frame[ellipse(frame.shape, 80, 80, 10, 10) & ~ellipse(frame.shape, 80, 80, 4, 4)] = 60  # a ring: hole
    cfg = ClassicalConfig(polarity="dark", threshold=40, seed_threshold=100, min_area=15, close_radius=2)
    seg = ClassicalSegmenter(np.full(frame.shape, float(FLOOR), np.float32), cfg)
    eight = np.ones((3, 3), bool)
    labels, _ = ndi.label(seg.foreground(frame), structure=eight)
    seeded = np.isin(labels, np.unique(labels[seg.foreground(frame, seed=True)])) & (labels > 0)
    opened = ndi.binary_opening(seeded, seg.open_se)
    m = cfg.close_radius + 1
    closed = ndi.binary_closing(np.pad(opened, m), seg.close_se)[m:-m, m:-m]
    lab, _ = ndi.label(closed, structure=eight)
    expected = set()
    for k, sl in enumerate(ndi.find_objects(lab), 1):
        mask = ndi.binary_fill_holes(lab[sl] == k)
        if mask.sum() >= cfg.min_area:
            expected.add((sl[0].start, sl[1].start, mask.tobytes()))
    got = {(y, x, mk.tobytes()) for y, x, mk in seg.blobs(frame)}
    assert len(expected) > 5 and got == expected


def test_config_errors():
    with pytest.raises(ValueError, match="'treshold'"):
        ClassicalConfig.from_dict({"treshold": 20})
    with pytest.raises(ValueError, match="'min_area'"):
        ClassicalConfig.from_dict({"min_area": "big"})
    with pytest.raises(ValueError, match="'split_merged'"):
        ClassicalConfig.from_dict({"split_merged": 1})
    with pytest.raises(ValueError, match="'polarity'"):
        ClassicalConfig.from_dict({"polarity": "bright"})
    with pytest.raises(ValueError, match="'seed_threshold'"):
        ClassicalConfig.from_dict({"threshold": 30, "seed_threshold": 10})
    cfg = ClassicalConfig.from_dict({"threshold": 25, "max_area": None, "min_area": 10})
    assert cfg.threshold == 25.0 and cfg.min_area == 10
    assert ClassicalConfig.from_dict(cfg.to_dict()) == cfg


def test_flags_decode():
    assert decode_flags(0) == ()
    assert decode_flags(MERGED_SPLIT | AT_BORDER) == ("merged", "at_border")
    assert decode_flags(EXTRA) == ("extra",)
    with pytest.raises(ValueError):
        decode_flags(8)
    arr = flag_arrays(np.array([[1, 6]], np.uint8))
    assert arr["merged"].tolist() == [[True, False]] and arr["extra"].tolist() == [[False, True]]


# --------------------------------------------------------------------------- videos


def arena_frames(n=24, size=96):
    """Dark animals on a light floor: two walking left to right, a small third one from frame 12."""
    frames = []
    for t in range(n):
        animals = [(20 + 2 * t, 30, 10, 5, 0), (70 - t, 70, 9, 4, 30)]
        if t >= 12:
            animals.append((80, 15, 5, 3, 0))
        frames.append(scene((size, size), animals, noise=2.0, seed=t))
    return np.stack(frames)


@pytest.fixture(scope="module")
def arena_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "arena.mp4"
    write_video(path, arena_frames(), fps=25.0)
    return path


def test_segment_chunk_arrays(arena_video):
    info = probe(arena_video)
    background = np.full((96, 96), float(FLOOR), np.float32)
    cfg = ClassicalConfig(polarity="dark", threshold=30, seed_threshold=60)
    S = 32
    out = segment_chunk(arena_video, 4, 20, background, cfg, n_animals=2, n_instances=2, crop_size=S,
                        info=info, progress=False)
    T = 16
    expect = {"box": ((T, 2, 4), np.float32), "com": ((T, 2, 2), np.float32), "area": ((T, 2), np.float32),
              "score": ((T, 2), np.float32), "flags": ((T, 2), np.uint8), "n_found": ((T,), np.int16),
              "crop_origin": ((T, 2, 2), np.int32), "mask": ((T, 2, S, S), np.bool_),
              "crop": ((T, 2, S, S), np.uint8), "local_track": ((T, 2), np.int32)}
    assert set(out) == set(expect)
    for name, (shape, dtype) in expect.items():
        assert out[name].shape == shape and out[name].dtype == dtype, name
    # The third animal appears at frame 12 (chunk row 8): it is counted, the two largest are kept, flagged EXTRA.
    assert out["n_found"][:8].tolist() == [2] * 8 and out["n_found"][8:].tolist() == [3] * 8
    assert not (out["flags"][:8] & EXTRA).any() and (out["flags"][8:] & EXTRA).all()
    assert np.all(out["area"][8:] > 80)
    # Crops: square windows centred on the COM, masked pixels only.
    origin = np.floor(out["com"] + 0.5).astype(int) - S // 2
    assert np.array_equal(out["crop_origin"], origin)
    assert np.all(out["crop"][~out["mask"]] == 0)
    # Masked pixels are the decoded frame's pixels, exactly (grey levels near the mask's edge depend on the
    # encoder's rounding, so compare with the decoded frames rather than a fixed grey level).
    frames, _ = read_frames(arena_video, 4, 20, gray=True)
    for t in range(T):
        for k in range(2):
            x0, y0 = out["crop_origin"][t, k]
            m = out["mask"][t, k]
            ys, xs = np.nonzero(m)
            assert np.array_equal(out["crop"][t, k][m], frames[t][ys + y0, xs + x0])
    assert np.median(out["crop"][out["mask"]]) < (FLOOR + ANIMAL) / 2  # mostly animal, not floor
    assert np.allclose(out["mask"].sum(axis=(2, 3)), out["area"])
    # Two animals moving apart: one track each, no switches.
    positions = instances_to_slots(out["local_track"], {"com": out["com"]}, n_slots=2)["com"]
    truth = np.array([[[20 + 2 * t, 30], [70 - t, 70]] for t in range(4, 20)], float)
    assert identity_switches(positions, truth).tolist() == [0, 0]
    order = [0, 1] if abs(positions[0, 0, 0] - truth[0, 0, 0]) < 5 else [1, 0]
    assert np.abs(positions[:, order] - truth).max() < 1.5


def test_segment_chunk_rgb_crops_and_padding(arena_video):
    background = np.full((96, 96), float(FLOOR), np.float32)
    cfg = ClassicalConfig(polarity="dark", threshold=30, seed_threshold=60)
    out = segment_chunk(arena_video, 0, 3, background, cfg, n_animals=2, n_instances=3, crop_size=48,
                        color="rgb", progress=False)
    assert out["crop"].shape == (3, 3, 48, 48, 3)
    # Slot 2 is empty: NaN, zeros and -1.
    assert np.isnan(out["box"][:, 2]).all() and not out["mask"][:, 2].any() and (out["local_track"][:, 2] == -1).all()
    # The animal at x ~ 20 has a crop window that starts left of the frame: padded with zeros.
    ox = out["crop_origin"][0, :2, 0]
    assert ox.min() < 0
    k = int(np.argmin(ox))
    assert not out["mask"][0, k, :, : -ox[k]].any()
    assert crop_window((20.5, 30.49), 48) == (-3, 6)


def test_background_ignores_resting_animal(tmp_path):
    """An animal resting at one spot for 70 % of the frames stays out of the default background."""
    frames = []
    for t in range(30):
        x = 30 if t < 21 else 30 + 3 * (t - 20)
        frames.append(scene((64, 64), [(x, 32, 9, 5, 0)], noise=1.0, seed=t))
    path = tmp_path / "rest.mp4"
    write_video(path, np.stack(frames), fps=25.0)
    info = probe(path)
    bg = estimate_background(path, info, n_samples=30)
    median = estimate_background(path, info, n_samples=30, quantile=0.5)
    assert bg.dtype == np.float32 and bg.shape == (64, 64)
    assert abs(bg[32, 30] - FLOOR) < 10        # the resting spot is floor
    assert median[32, 30] < FLOOR - 60          # the median keeps the resting animal
    cfg = calibrate(path, bg, ClassicalConfig(), info=info)
    assert cfg.polarity == "dark" and cfg.threshold >= cfg.min_threshold and cfg.seed_threshold >= cfg.threshold
    out = segment_chunk(path, 0, 30, bg, cfg, n_animals=1, n_instances=1, crop_size=16, info=info, progress=False)
    assert np.isfinite(out["com"][:, 0, 0]).all()
    assert np.allclose(out["com"][:5, 0], [30, 32], atol=1.0)


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_flies_clip_first_frames(shared_data):
    """Both flies of the SLEAP clip are found (box IoU >= 0.5 against keypoint boxes + 10 px) and tracked."""
    folder = shared_data / "sleap_flies"
    if not (folder / "clip.mp4").exists() or not (folder / "clip.slp").exists():
        pytest.skip(f"{folder} lacks clip.mp4 / clip.slp")
    import sleap_io

    video, T = folder / "clip.mp4", 100
    labels = sleap_io.load_slp(str(folder / "clip.slp"))
    pts = np.full((T, 2, len(labels.skeletons[0].nodes), 2), np.nan)
    for lf in labels.labeled_frames:
        for inst in lf.instances:
            if lf.frame_idx < T and inst.track is not None and inst.track.name in ("female", "male"):
                pts[lf.frame_idx, ("female", "male").index(inst.track.name)] = inst.numpy()
    truth = np.concatenate([np.nanmin(pts, 2) - 10, np.nanmax(pts, 2) + 10], axis=-1)
    info = probe(video)
    background = estimate_background(video, info, n_samples=10)
    out = segment_chunk(video, 0, T, background, ClassicalConfig(), n_animals=2, n_instances=2, crop_size=64,
                        info=info, progress=False)
    found = np.array([(box_iou(truth[t], out["box"][t]).max(axis=1) >= 0.5).all() for t in range(T)])
    assert found.mean() >= 0.95
    positions = instances_to_slots(out["local_track"], {"com": out["com"]}, n_slots=2)["com"]
    assert identity_switches(positions, np.nanmean(pts, axis=2)).sum() == 0


def _paint(shape, animals, noise=2.0, seed=0) -> np.ndarray:
    """uint8 frame: FLOOR plus noise, animals ``(cx, cy, a, b, angle, grey)`` painted in order (later on top)."""
    rng = np.random.default_rng(seed)
    frame = np.full(shape, float(FLOOR)) + rng.normal(0, noise, shape)
    for cx, cy, a, b, ang, grey in animals:
        m = ellipse(shape, cx, cy, a, b, ang)
        frame[m] = grey + rng.normal(0, noise, m.sum())
    return np.clip(np.round(frame), 0, 255).astype(np.uint8)


def _run(frames, cfg, n_animals):
    """Segment frames one by one as segment_chunk does; -> (T, n, 4) boxes, (T, n, 2) centres, n_found."""
    seg = ClassicalSegmenter(BG, cfg)
    T = len(frames)
    box, com = np.full((T, n_animals, 4), np.nan), np.full((T, n_animals, 2), np.nan)
    prev = prev_app = None
    ref = None
    n_found = []
    for t, frame in enumerate(frames):
        inst = seg.segment(frame, n_animals, prev, ref, prev_appearance=prev_app)
        n_found.append(len(inst))
        if len(inst) == n_animals and not any(i.flags for i in inst) and ref is None:
            ref = float(np.median([i.area for i in inst]))
        kept = inst[:n_animals]
        for i, x in enumerate(kept):
            box[t, i], com[t, i] = x.box, x.com
        prev = np.array([x.com for x in kept])
        prev_app = np.array([x.appearance for x in kept])
    return box, com, np.array(n_found)


def _crossing(n_frames=60):
    """Two touching ellipses of different grey levels passing each other, merged for most frames.

    Returns the frames and the true centres ``(T, 2, 2)``: animal 0 (dark, 40) moves right along
    y = 60, animal 1 (grey, 120) moves left along y = 69, both parallel to the x axis.
    """
    xs0 = np.linspace(30, 98, n_frames)
    xs1 = xs0[::-1]
    truth = np.stack([np.stack([xs0, np.full(n_frames, 60.0)], 1), np.stack([xs1, np.full(n_frames, 69.0)], 1)], 1)
    frames = [_paint((128, 128), [(xs0[t], 60, 18, 6, 0, 40), (xs1[t], 69, 18, 6, 0, 120)], seed=t)
              for t in range(n_frames)]
    return frames, truth


@pytest.mark.parametrize("method", ["greedy", "hungarian"])
def test_crossing_animals_of_different_grey_keep_identities(method):
    from sipec_models.tracking import track_chunk

    frames, truth = _crossing()
    box, com, n_found = _run(frames, CFG, 2)
    seg = ClassicalSegmenter(BG, CFG)
    merged = np.array([len(seg.blobs(f)) == 1 for f in frames])
    assert merged.sum() >= 25  # the pair stays merged while passing
    assert (n_found == 2).all()
    track = track_chunk(box, com, n_animals=2, method=method)
    pos = instances_to_slots(track, {"com": com}, n_slots=2)["com"]
    assert identity_switches(pos, truth).sum() == 0
    # (Position-only splitting, split_appearance=0, swaps both tracks here.)
    animal_of_track = np.linalg.norm(pos[0, :, None] - truth[0, None], axis=-1).argmin(1)
    assert sorted(animal_of_track) == [0, 1]
    assert np.nanmax(np.linalg.norm(pos - truth[:, animal_of_track], axis=-1)) < 3.0


def test_crossing_split_uses_appearance():
    """Position alone drifts across the pair while it passes; the grey-level cue keeps the parts apart."""
    frames, truth = _crossing()
    _, com, _ = _run(frames, CFG, 2)
    _, com_pos, _ = _run(frames, replace_cfg(CFG, split_appearance=0.0), 2)

    def worst(c):  # largest distance of any truth centre to the nearest found centre
        return np.nanmax(np.min(np.linalg.norm(truth[:, :, None] - c[:, None], axis=-1), axis=2))

    assert worst(com) < 3.0
    assert worst(com) < worst(com_pos)


def replace_cfg(cfg, **kw):
    from dataclasses import replace
    return replace(cfg, **kw)


def test_split_parts_inherit_the_seed_appearance():
    frame = _paint((128, 128), [(54, 64, 16, 7, 0, 40), (76, 64, 16, 7, 0, 130)])
    seg = ClassicalSegmenter(BG, CFG)
    assert len(seg.blobs(frame)) == 1
    h_dark = grey_histogram(np.full(300, 40, np.uint8))
    h_grey = grey_histogram(np.full(300, 130, np.uint8))
    inst = seg.segment(frame, 2, np.array([[53.0, 64.0], [77.0, 64.0]]), prev_appearance=np.stack([h_dark, h_grey]))
    assert len(inst) == 2 and all(i.flags & MERGED_SPLIT for i in inst)
    by_x = sorted(inst, key=lambda i: i.com[0])
    assert np.allclose(by_x[0].appearance, h_dark) and np.allclose(by_x[1].appearance, h_grey)
    # The grey animal lies on top: the dark one's visible part is what it should get.
    top = ellipse((128, 128), 76, 64, 16, 7)
    under = ellipse((128, 128), 54, 64, 16, 7) & ~top
    visible = [np.argwhere(m)[:, ::-1].mean(0) for m in (under, top)]
    assert np.allclose([i.com for i in by_x], visible, atol=1.0)
    # Unknown (NaN) appearance: plain positional split, own histograms.
    inst = seg.segment(frame, 2, np.array([[53.0, 64.0], [77.0, 64.0]]),
                       prev_appearance=np.full((2, HIST_BINS), np.nan))
    assert len(inst) == 2 and all(np.isclose(i.appearance.sum(), 1) for i in inst)


def test_grey_histogram():
    h = grey_histogram(np.array([0, 0, 255, 128], np.uint8))
    assert h.shape == (HIST_BINS,) and np.isclose(h.sum(), 1) and (h > 0).all()
    assert h.argmax() == 0 and h[HIST_BINS // 2] > h[HIST_BINS // 4]
    assert np.allclose(grey_histogram(np.empty(0, np.uint8)), 1 / HIST_BINS)


def test_tiny_fragment_does_not_block_the_split():
    # Two animals merged in one blob, a third on its own, and a small detached fragment (a tail tip).
    animals = [(40, 50, 16, 7, 0, 60), (62, 50, 16, 7, 0, 60), (90, 100, 16, 7, 0, 60), (100, 20, 5, 4, 0, 60)]
    frame = _paint((128, 128), animals)
    single = np.count_nonzero(ellipse((128, 128), 40, 50, 16, 7))
    seg = ClassicalSegmenter(BG, CFG)
    assert len(seg.blobs(frame)) == 3
    inst = seg.segment(frame, 3, np.array([[39.0, 50.0], [63.0, 50.0], [90.0, 100.0]]), single)
    assert len(inst) == 4
    kept = inst[:3]  # what segment_chunk keeps with n_instances = n_animals
    assert all(i.area > 0.5 * single for i in kept)
    assert np.allclose(sorted(i.com for i in kept), [[40, 50], [62, 50], [90, 100]], atol=2.0)
    assert inst[3].area < 0.25 * single and inst[3].flags == 0
    # With fragment_ratio = 0 the fragment counts as an animal and the merged pair stays whole.
    old = ClassicalSegmenter(BG, replace_cfg(CFG, fragment_ratio=0.0))
    assert len(old.segment(frame, 3, None, single)) == 3


def test_new_config_options():
    cfg = ClassicalConfig.from_dict({"split_appearance": 2, "fragment_ratio": 0.1})
    assert cfg.split_appearance == 2 and cfg.fragment_ratio == 0.1
    with pytest.raises(ValueError, match="'split_appearance'"):
        ClassicalConfig.from_dict({"split_appearance": -1.0})
    with pytest.raises(ValueError, match="'fragment_ratio'"):
        ClassicalConfig.from_dict({"fragment_ratio": 1.0})
    with pytest.raises(ValueError, match="'fragment_ratio'"):
        ClassicalConfig.from_dict({"fragment_ratio": "small"})
