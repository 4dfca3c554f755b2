"""Instance-mask labels for SegNet: COCO and VIA (VGG Image Annotator) JSON, and keypoint pseudo-labels.

SIPEC's animals were outlined with the VGG Image Annotator (VIA); COCO JSON
is what most other tools (and :mod:`sipec_models.demo`) write. Both are read
into :class:`LabelledFrame` objects holding rasterised ``(N, H, W)`` bool
masks, one per animal.

* **COCO**: ``images`` (``id``, ``file_name``, ``height``, ``width``, optional
  ``frame``) and ``annotations`` (``image_id``, ``segmentation`` as a list of
  polygons ``[x0, y0, x1, y1, ...]`` or uncompressed RLE ``{"counts": [...],
  "size": [h, w]}``, optional ``identity``). An annotation with several
  polygons is one instance (their union).
* **VIA 2** project or export: ``{"_via_img_metadata": {key: entry}}`` or
  ``{key: entry}`` with ``entry = {"filename", "regions": [...]}``; VIA 1
  keeps ``regions`` as a dict. Region ``shape_attributes`` of ``name``
  ``polygon`` / ``polyline`` (``all_points_x``, ``all_points_y``), ``rect``
  (``x, y, width, height``) or ``ellipse`` (``cx, cy, rx, ry``, optional
  ``theta``); the identity is taken from ``region_attributes`` ``identity``,
  ``id``, ``name`` or ``animal`` when present. VIA files carry no image size:
  it comes from ``image_size`` (given, or read from the image file next to
  the JSON).

The frame index of a label is an image's ``frame`` field, else the last
group of digits in its file name (``img0042.png`` -> 42), else ``None``.

Where no human masks exist, :func:`masks_from_keypoints` makes pseudo-labels
from keypoint labels and the classical background-subtraction foreground.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from skimage.draw import ellipse as draw_ellipse
from skimage.draw import polygon as draw_polygon


@dataclass
class LabelledFrame:
    """One labelled image.

    Attributes:
        frame: frame index in the video, or None when unknown.
        file_name: image file name as written in the label file.
        height, width: image size, px.
        masks: ``(N, H, W)`` bool, one per animal.
        identities: ``N`` identity names (None when not labelled).
    """

    frame: int | None
    file_name: str
    height: int
    width: int
    masks: np.ndarray
    identities: list[str | None] = field(default_factory=list)


def _frame_index(image: dict, file_name: str) -> int | None:
    if image.get("frame") is not None:
        return int(image["frame"])
    digits = re.findall(r"\d+", Path(file_name).stem)
    return int(digits[-1]) if digits else None


def _polygon_mask(xs, ys, h: int, w: int, path, where: str) -> np.ndarray:
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if len(xs) < 3 or len(xs) != len(ys):
        raise ValueError(f"{path}: {where}: a polygon needs >= 3 points with as many x as y values")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ValueError(f"{path}: {where}: polygon has non-finite coordinates")
    if xs.max() < -0.5 or ys.max() < -0.5 or xs.min() > w - 0.5 or ys.min() > h - 0.5:
        raise ValueError(f"{path}: {where}: polygon lies outside the {w}x{h} image")
    mask = np.zeros((h, w), bool)
    # COCO/VIA coordinates are continuous with pixel centres at integer + 0.5.
    rr, cc = draw_polygon(ys - 0.5, xs - 0.5, shape=(h, w))
    mask[rr, cc] = True
    return mask


def _rle_mask(seg: dict, h: int, w: int, path, where: str) -> np.ndarray:
    counts = seg.get("counts")
    size = seg.get("size", [h, w])
    if isinstance(counts, str):
        raise ValueError(f"{path}: {where}: compressed RLE is not supported; export polygons or uncompressed RLE")
    if not isinstance(counts, list) or list(size) != [h, w]:
        raise ValueError(f"{path}: {where}: RLE needs a list of counts and size [{h}, {w}]")
    flat = np.zeros(h * w, bool)
    pos, val = 0, False
    for c in counts:
        if val:
            flat[pos:pos + int(c)] = True
        pos += int(c)
        val = not val
    if pos != h * w:
        raise ValueError(f"{path}: {where}: RLE counts sum to {pos}, not {h * w}")
    return flat.reshape(w, h).T  # column-major, as COCO writes it


def _load_coco(data: dict, path) -> list[LabelledFrame]:
    if not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: COCO JSON needs lists 'images' and 'annotations'")
    frames, by_id = [], {}
    for img in data["images"]:
        try:
            h, w, name = int(img["height"]), int(img["width"]), str(img["file_name"])
            image_id = img["id"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: every COCO image needs 'id', 'file_name', 'height' and 'width'") from None
        lf = LabelledFrame(_frame_index(img, name), name, h, w, np.zeros((0, h, w), bool), [])
        by_id[image_id] = (lf, [])
        frames.append(lf)
    for k, ann in enumerate(data["annotations"]):
        where = f"annotation {ann.get('id', k)}"
        if ann.get("image_id") not in by_id:
            raise ValueError(f"{path}: {where}: image_id {ann.get('image_id')!r} is not among the images")
        lf, masks = by_id[ann["image_id"]]
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            mask = _rle_mask(seg, lf.height, lf.width, path, where)
        elif isinstance(seg, list) and seg:
            polys = seg if isinstance(seg[0], (list, tuple)) else [seg]
            mask = np.zeros((lf.height, lf.width), bool)
            for poly in polys:
                poly = np.asarray(poly, np.float64)
                if poly.size % 2:
                    raise ValueError(f"{path}: {where}: a polygon needs an even number of coordinates")
                mask |= _polygon_mask(poly[0::2], poly[1::2], lf.height, lf.width, path, where)
        else:
            raise ValueError(f"{path}: {where}: no polygon or RLE 'segmentation'")
        masks.append(mask)
        ident = ann.get("identity")
        lf.identities.append(None if ident is None else str(ident))
    for lf, masks in by_id.values():
        if masks:
            lf.masks = np.stack(masks)
    return frames


def _via_entries(data: dict, path) -> list[dict]:
    if "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    entries = list(data.values()) if isinstance(data, dict) else []
    if not entries or not all(isinstance(e, dict) and "filename" in e and "regions" in e for e in entries):
        raise ValueError(f"{path}: not a COCO or VIA label file (expected 'images' + 'annotations', "
                         "'_via_img_metadata', or entries with 'filename' and 'regions')")
    return entries


def _image_size(file: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(file) as im:
        return im.height, im.width


def _load_via(data: dict, path, image_size: tuple[int, int] | None) -> list[LabelledFrame]:
    frames = []
    for entry in _via_entries(data, path):
        name = str(entry["filename"])
        if image_size is not None:
            h, w = image_size
        else:
            file = Path(path).parent / name
            if not file.is_file():
                raise ValueError(f"{path}: VIA labels carry no image size; pass image_size or put {name} "
                                 "next to the JSON")
            h, w = _image_size(file)
        regions = entry["regions"]
        if isinstance(regions, dict):  # VIA 1
            regions = list(regions.values())
        masks, idents = [], []
        for k, region in enumerate(regions):
            where = f"{name} region {k}"
            shape = region.get("shape_attributes", {}) if isinstance(region, dict) else {}
            kind = shape.get("name")
            if kind in ("polygon", "polyline"):
                if "all_points_x" not in shape or "all_points_y" not in shape:
                    raise ValueError(f"{path}: {where}: polygon without all_points_x / all_points_y")
                masks.append(_polygon_mask(shape["all_points_x"], shape["all_points_y"], h, w, path, where))
            elif kind == "rect":
                x, y, rw, rh = (float(shape[key]) for key in ("x", "y", "width", "height"))
                masks.append(_polygon_mask([x, x + rw, x + rw, x], [y, y, y + rh, y + rh], h, w, path, where))
            elif kind == "ellipse":
                cx, cy, rx, ry = (float(shape[key]) for key in ("cx", "cy", "rx", "ry"))
                mask = np.zeros((h, w), bool)
                rr, cc = draw_ellipse(cy - 0.5, cx - 0.5, ry, rx, shape=(h, w),
                                      rotation=-float(shape.get("theta", 0.0)))
                if not len(rr):
                    raise ValueError(f"{path}: {where}: ellipse lies outside the {w}x{h} image")
                mask[rr, cc] = True
                masks.append(mask)
            else:
                raise ValueError(f"{path}: {where}: unsupported region shape {kind!r} "
                                 "(polygon, polyline, rect or ellipse)")
            attrs = region.get("region_attributes", {}) or {}
            ident = next((attrs[key] for key in ("identity", "id", "name", "animal") if attrs.get(key) not in
                          (None, "")), None)
            idents.append(None if ident is None else str(ident))
        frames.append(LabelledFrame(_frame_index(entry, name), name, h, w,
                                    np.stack(masks) if masks else np.zeros((0, h, w), bool), idents))
    return frames


def load_instance_masks(path: str | os.PathLike, image_size: tuple[int, int] | None = None) -> list[LabelledFrame]:
    """Read a COCO or VIA instance-mask label file.

    Args:
        path: JSON label file.
        image_size: ``(H, W)`` px for VIA files (which do not store it); when
            omitted, read from the image files next to the JSON.

    Returns:
        One :class:`LabelledFrame` per labelled image (images without
        annotations included, with ``(0, H, W)`` masks).

    Raises:
        ValueError: naming ``path`` and the problem: not JSON, neither COCO
            nor VIA, no polygons at all, malformed or out-of-image polygons.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (COCO or VIA), got {type(data).__name__}")
    if "images" in data or "annotations" in data:
        frames = _load_coco(data, path)
    else:
        frames = _load_via(data, path, image_size)
    if not any(len(f.masks) for f in frames):
        raise ValueError(f"{path}: holds no instance polygons")
    return frames


def read_label_images(labels: list[LabelledFrame], video: str | os.PathLike | None = None,
                      image_root: str | os.PathLike | None = None) -> np.ndarray:
    """``(N, H, W)`` uint8 grey images of the labelled frames.

    Args:
        labels: from :func:`load_instance_masks`.
        video: read each label's ``frame`` index from this video (one
            sequential decode over the labelled range when frames are close).
        image_root: else read image files ``image_root / file_name`` (usually
            the label file's folder).

    Raises:
        ValueError: a label has no frame index (with ``video``), an image is
            missing, or an image's size differs from its label's.
    """
    if video is None and image_root is None:
        raise ValueError("read_label_images needs a video or an image_root")
    if video is not None:
        from sipec_models.io.video import iter_frames, probe, read_frames

        if any(lf.frame is None for lf in labels):
            raise ValueError(f"{video}: some labels have no frame index ('frame' field or digits in the file name)")
        info = probe(video)
        idx = [lf.frame for lf in labels]
        bad = [i for i in idx if not 0 <= i < info.n_frames]
        if bad:
            raise ValueError(f"{video}: label frames {bad[:5]} are outside the video's {info.n_frames} frames")
        lo, hi = min(idx), max(idx) + 1
        if hi - lo <= 20 * len(set(idx)):
            wanted = set(idx)
            got = {lo + t: f for t, f in enumerate(iter_frames(video, lo, hi, gray=True, info=info))
                   if lo + t in wanted}
        else:
            got = {i: read_frames(video, i, i + 1, gray=True, info=info)[0][0] for i in sorted(set(idx))}
        images = [got[i] for i in idx]
    else:
        from PIL import Image

        images = []
        for lf in labels:
            file = Path(image_root) / lf.file_name
            if not file.is_file():
                raise ValueError(f"{file}: labelled image not found")
            with Image.open(file) as im:
                images.append(np.asarray(im.convert("L")))
    for lf, im in zip(labels, images):
        if im.shape != (lf.height, lf.width):
            raise ValueError(f"{lf.file_name}: image is {im.shape[1]}x{im.shape[0]} but labelled as "
                             f"{lf.width}x{lf.height}")
    return np.stack(images).astype(np.uint8) if images else np.zeros((0, 0, 0), np.uint8)


def masks_from_keypoints(frame: np.ndarray, segmenter, keypoints: np.ndarray, margin_px: float = 10.0) -> np.ndarray:
    """Pseudo-label masks from keypoints and the classical foreground (no human outlines).

    Each animal's mask is the classical foreground (:meth:`ClassicalSegmenter.foreground`,
    the plain threshold, no morphology) inside the box around its labelled
    keypoints grown by ``margin_px``; a pixel inside several animals' boxes
    goes to the animal with the nearest labelled keypoint. These are
    pseudo-labels: they inherit the classical segmenter's errors (shadows,
    missed faint parts) and cut appendages at the box edge; they are only as
    good as a training target where no human masks exist.

    Args:
        frame: ``(H, W)`` uint8 grey frame.
        segmenter: a :class:`~sipec_models.segmentation.classical.ClassicalSegmenter`
            for the video.
        keypoints: ``(N, K, 2)`` float ``(x, y)`` px, NaN for missing.
        margin_px: px added to every side of each keypoint box.

    Returns:
        ``(N, H, W)`` bool; all False for an animal with no labelled keypoint.
    """
    keypoints = np.asarray(keypoints, np.float64)
    H, W = frame.shape
    n = len(keypoints)
    out = np.zeros((n, H, W), bool)
    fg = segmenter.foreground(frame)
    boxes = []
    for k in range(n):
        pts = keypoints[k][np.isfinite(keypoints[k]).all(axis=1)]
        if not len(pts):
            boxes.append(None)
            continue
        x0 = int(max(0, np.floor(pts[:, 0].min() - margin_px)))
        y0 = int(max(0, np.floor(pts[:, 1].min() - margin_px)))
        x1 = int(min(W, np.ceil(pts[:, 0].max() + margin_px) + 1))
        y1 = int(min(H, np.ceil(pts[:, 1].max() + margin_px) + 1))
        boxes.append((x0, y0, x1, y1, pts))
        if x1 > x0 and y1 > y0:
            out[k, y0:y1, x0:x1] = fg[y0:y1, x0:x1]
    claimed = out.sum(0) > 1
    if claimed.any():
        ys, xs = np.nonzero(claimed)
        best = np.full(len(ys), np.inf)
        owner = np.full(len(ys), -1)
        for k, b in enumerate(boxes):
            if b is None:
                continue
            pts = b[4]
            d = np.min((xs[:, None] - pts[None, :, 0]) ** 2 + (ys[:, None] - pts[None, :, 1]) ** 2, axis=1)
            d = np.where(out[k, ys, xs], d, np.inf)
            better = d < best
            best[better], owner[better] = d[better], k
        out[:, ys, xs] = False
        ok = owner >= 0
        out[owner[ok], ys[ok], xs[ok]] = True
    return out


def to_coco(labels: list[LabelledFrame]) -> dict[str, Any]:
    """COCO JSON (uncompressed RLE) of :class:`LabelledFrame` objects (for tests and exports)."""
    images, anns = [], []
    for i, lf in enumerate(labels):
        images.append({"id": i, "file_name": lf.file_name, "height": lf.height, "width": lf.width,
                       **({"frame": lf.frame} if lf.frame is not None else {})})
        for k, m in enumerate(lf.masks):
            flat = m.T.reshape(-1)
            change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
            counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
            if flat.size and flat[0]:
                counts = [0] + counts
            counts = [int(c) for c in counts]
            anns.append({"id": len(anns), "image_id": i, "segmentation": {"counts": counts, "size": [lf.height,
                                                                                                   lf.width]},
                         "identity": lf.identities[k] if k < len(lf.identities) else None})
    return {"images": images, "annotations": anns}
