"""Instance-mask label import: COCO and VIA JSON, errors, keypoint pseudo-labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sipec_models.io.masks import load_instance_masks, masks_from_keypoints, read_label_images, to_coco
from sipec_models.segmentation.classical import ClassicalConfig, ClassicalSegmenter

# A 4x3 px rectangle covering pixels x 2..5, y 1..3 (pixel corners at integers, COCO convention).
RECT = [2, 1, 6, 1, 6, 4, 2, 4]


def _expected_rect(h=10, w=12):
    m = np.zeros((h, w), bool)
    m[1:4, 2:6] = True
    return m


def _write(tmp_path, obj, name="labels.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_coco_polygons(tmp_path):
    coco = {
        "images": [{"id": 7, "file_name": "img_0042.png", "height": 10, "width": 12},
                   {"id": 8, "file_name": "x.png", "height": 10, "width": 12, "frame": 3}],
        "annotations": [
            {"id": 1, "image_id": 7, "segmentation": [RECT], "identity": "a"},
            {"id": 2, "image_id": 7, "segmentation": [[8, 6, 10, 6, 10, 8, 8, 8]]},
            {"id": 3, "image_id": 8, "segmentation": [RECT, [8, 6, 10, 6, 10, 8, 8, 8]]},
        ],
    }
    frames = load_instance_masks(_write(tmp_path, coco))
    assert [f.frame for f in frames] == [42, 3]
    f0 = frames[0]
    assert f0.masks.shape == (2, 10, 12) and f0.masks.dtype == bool
    np.testing.assert_array_equal(f0.masks[0], _expected_rect())
    assert f0.masks[1].sum() == 4 and f0.masks[1][6:8, 8:10].all()
    assert f0.identities == ["a", None]
    # Several polygons in one annotation are one instance.
    assert frames[1].masks.shape == (1, 10, 12) and frames[1].masks[0].sum() == 12 + 4


def test_coco_rle_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((3, 9, 11)) > 0.6
    masks[1, 0, 0] = True  # a run starting with foreground
    from sipec_models.io.masks import LabelledFrame

    lf = LabelledFrame(5, "f5.png", 9, 11, masks, ["x", None, "z"])
    back = load_instance_masks(_write(tmp_path, to_coco([lf])))
    assert len(back) == 1 and back[0].frame == 5
    np.testing.assert_array_equal(back[0].masks, masks)
    assert back[0].identities == ["x", None, "z"]


def test_via2_project_and_export(tmp_path):
    entry = {"filename": "frame_0007.png", "size": 123, "regions": [
        {"shape_attributes": {"name": "polygon", "all_points_x": [2, 6, 6, 2], "all_points_y": [1, 1, 4, 4]},
         "region_attributes": {"identity": "mouse1"}},
        {"shape_attributes": {"name": "rect", "x": 8, "y": 6, "width": 2, "height": 2}, "region_attributes": {}},
        {"shape_attributes": {"name": "ellipse", "cx": 6, "cy": 7, "rx": 1.2, "ry": 1.2}},
    ]}
    for obj in ({"_via_settings": {}, "_via_img_metadata": {"frame_0007.png123": entry}},
                {"frame_0007.png123": entry}):
        frames = load_instance_masks(_write(tmp_path, obj), image_size=(10, 12))
        (f,) = frames
        assert f.frame == 7 and f.masks.shape == (3, 10, 12)
        np.testing.assert_array_equal(f.masks[0], _expected_rect())
        assert f.masks[1].sum() == 4 and f.masks[1][6:8, 8:10].all()
        assert f.masks[2][6, 5] and f.masks[2].sum() >= 4
        assert f.identities == ["mouse1", None, None]


def test_via1_regions_dict_and_image_size_from_file(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "a.png")
    obj = {"a.png0": {"filename": "a.png", "regions": {"0": {"shape_attributes": {
        "name": "polygon", "all_points_x": [2, 6, 6, 2], "all_points_y": [1, 1, 4, 4]}}}}}
    (f,) = load_instance_masks(_write(tmp_path, obj))
    assert (f.height, f.width, f.frame) == (10, 12, None)
    np.testing.assert_array_equal(f.masks[0], _expected_rect())
    images = read_label_images([f], image_root=tmp_path)
    assert images.shape == (1, 10, 12) and images.dtype == np.uint8


@pytest.mark.parametrize("content, message", [
    ("not json {", "not a JSON file"),
    ([1, 2], "expected a JSON object"),
    ({"foo": {"bar": 1}}, "not a COCO or VIA label file"),
    ({"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}], "annotations": []},
     "no instance polygons"),
    ({"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}],
      "annotations": [{"id": 1, "image_id": 1, "segmentation": [[50, 50, 60, 50, 60, 60]]}]}, "outside"),
    ({"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}],
      "annotations": [{"id": 1, "image_id": 2, "segmentation": [RECT]}]}, "not among the images"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": []}, "height"),
    ({"a": {"filename": "a.png", "regions": [{"shape_attributes": {"name": "point", "cx": 1, "cy": 1}}]}},
     "unsupported region shape"),
])
def test_bad_input_names_file(tmp_path, content, message):
    path = _write(tmp_path, content, "bad.json")
    with pytest.raises(ValueError, match=message) as info:
        load_instance_masks(path, image_size=(10, 12))
    assert "bad.json" in str(info.value)


def test_read_label_images_from_video(small_video):
    from sipec_models.io.masks import LabelledFrame
    from sipec_models.io.video import read_frames

    labels = [LabelledFrame(f, f"{f}.png", 64, 64, np.zeros((1, 64, 64), bool), [None]) for f in (3, 10, 4)]
    images = read_label_images(labels, video=small_video)
    assert images.shape == (3, 64, 64)
    np.testing.assert_array_equal(images[1], read_frames(small_video, 10, 11, gray=True)[0][0])
    with pytest.raises(ValueError, match="outside"):
        read_label_images([LabelledFrame(99, "x", 64, 64, np.zeros((0, 64, 64), bool))], video=small_video)


def test_masks_from_keypoints_touching():
    bg = np.full((40, 60), 200, np.float32)
    frame = np.full((40, 60), 200, np.uint8)
    frame[10:20, 10:30] = 50  # animal 0 (x 10..29)
    frame[10:20, 30:45] = 50  # animal 1 touches it (x 30..44)
    seg = ClassicalSegmenter(bg, ClassicalConfig(polarity="dark", threshold=30, seed_threshold=60))
    kp = np.array([[[12, 15], [28, 15], [np.nan, np.nan]],
                   [[31, 15], [43, 15], [40, 12]],
                   [[np.nan, np.nan]] * 3])
    m = masks_from_keypoints(frame, seg, kp, margin_px=6)
    assert m.shape == (3, 40, 60) and m.dtype == bool
    assert not m[2].any()
    assert not (m[0] & m[1]).any()
    assert m[0][10:20, 10:29].all() and not m[0][:, 30:].any()
    assert m[1][10:20, 31:45].all()
    assert (m[0] | m[1]).sum() == (frame < 170).sum()


def test_read_label_images_far_apart_frames(small_video):
    from sipec_models.io.masks import LabelledFrame
    from sipec_models.io.video import read_frames

    labels = [LabelledFrame(f, f"{f}.png", 64, 64, np.zeros((1, 64, 64), bool), [None]) for f in (0, 59)]
    images = read_label_images(labels, video=small_video)
    np.testing.assert_array_equal(images[1], read_frames(small_video, 59, 60, gray=True)[0][0])
