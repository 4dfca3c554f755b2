"""The built-in demo: a deterministic synthetic arena with several mice and full ground truth.

:func:`render_demo` writes, for each demo video ``<id>`` (``arena_0``, ``arena_1``, ...),
the video ``<outdir>/<id>.mp4`` and a ground-truth folder ``<outdir>/<id>/``:

============================  ==========================================================
``masks_coco.json``           COCO instance segmentation of the *visible* part of each
                              animal, every frame (polygons, bbox, area, ``identity``)
``identities.csv``            ``frame, instance, identity``: COCO annotation id -> name
``centroids.csv``             ``frame, animal, x, y, box_x0, box_y0, box_x1, box_y1,
                              area, visible_fraction`` of the visible mask
``keypoints.csv``             every frame: ``frame, animal, <part>_x, <part>_y`` for
                              snout, leftear, rightear, tailbase
``keypoints_dlc.csv``         the same keypoints for every ``dlc_every``-th frame in
                              DeepLabCut's multi-animal CSV format, with the frames as
                              ``labeled-data/<id>/img<frame>.png`` beside it (a DLC
                              project layout that ``sleap_io.load_dlc`` reads)
``behaviour.csv``             ``frame, animal, walk, pause, rear, groom, touch`` (0/1)
``social.csv``                ``frame, animal_a, animal_b, touch`` (0/1): every frame and
                              pair of animals (names in sorted order), 1 where the two
                              outlines lie within ``CONTACT_MM`` of each other
``positions_3d.csv``          ``frame, animal, X_mm, Y_mm, Z_mm, heading_deg``
``camera.json``               the pinhole camera that renders the scene
``meta.json``                 parameters, animal names and appearance, behaviours, seed,
                              package and renderer version
============================  ==========================================================

Conventions
-----------
*Pixels.* ``x`` is the column, ``y`` the row; in the CSV files pixel centres lie at
integer coordinates (pixel ``(r, c)`` covers ``[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]``),
boxes are ``[x0, x1)`` / ``[y0, y1)`` pixel index ranges. ``masks_coco.json`` follows
COCO: polygon vertices and ``bbox`` use pixel *corners* (pixel ``(r, c)`` covers
``[c, c + 1] x [r, r + 1]``), so subtract 0.5 from polygon coordinates before
rasterising them with pixel centres at integers (``skimage.draw.polygon``).

*World.* Millimetres. The arena floor is the square ``|X|, |Y| <= ARENA_MM / 2`` in the
plane ``Z = 0``; ``X`` points right in the image, ``Y`` away from the camera, ``Z`` up.
Walls ``WALL_MM`` high surround it. ``heading`` is the direction of the snout,
counter-clockwise from ``+X`` seen from above.

*Camera* (``camera.json``). An ideal pinhole without distortion mounted
``CAMERA_HEIGHT_MM`` above the floor, horizontally just inside the near wall, tilted
down towards the far side: a world point ``P`` maps to camera coordinates
``Pc = R (P - C)`` and to pixel ``(x, y) = (f Pc_x / Pc_z + cx, f Pc_y / Pc_z + cy)``.
Depth ``Pc_z`` grows from the near (bottom of the image) to the far wall (top), so
animals further away appear smaller and higher in the image.

*Animals.* Each is a flat silhouette (elliptic body, triangular head, two round ears,
a thin tail) lying in the horizontal plane at its body-centre height ``Z`` (about
14 mm, up to 38 mm when rearing), projected through the camera. Masks, centroids,
keypoints and 3D positions come from the same geometry as the pixels. Masks are
the body, head and ears; the tail is drawn but, as in most mouse annotations, not
part of the mask. Animals are drawn in a fixed z-order (animal 0 first, i.e.
lowest); the masks are the visible parts and ``visible_fraction`` is visible
area / full area. Tails do not occlude masks.

*Behaviour.* One of ``walk, pause, rear, groom`` per frame and animal, from a seeded
semi-Markov chain (gamma-distributed bout lengths of tens of frames); ``touch``
(may co-occur) when the animal's outline comes within ``CONTACT_MM`` of another's.

Determinism: the same parameters and seed give byte-identical ground truth (the
``.mp4`` bytes may depend on the encoder build). Video ``i`` draws from
``numpy.random.SeedSequence(seed, spawn_key=(i,))``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from skimage import measure
from tqdm.auto import tqdm

import sipec_models
from sipec_models.io.video import write_video

__all__ = [
    "BEHAVIOURS",
    "BODYPARTS",
    "LABELS",
    "Appearance",
    "Camera",
    "DemoVideo",
    "Trajectories",
    "appearances",
    "make_camera",
    "render_demo",
    "simulate",
]

#: Bumped whenever the rendered content or the ground-truth layout changes, so an
#: existing demo made by an older renderer is rendered again.
RENDERER_VERSION = 1

BEHAVIOURS = ("walk", "pause", "rear", "groom")  #: exclusive main behaviours
LABELS = BEHAVIOURS + ("touch",)  #: columns of behaviour.csv
BODYPARTS = ("snout", "leftear", "rightear", "tailbase")
DLC_SCORER = "sipec_demo"

ARENA_MM = 420.0  #: side of the square arena floor
WALL_MM = 60.0  #: wall height
RIM_MM = 10.0  #: wall thickness (the light rim seen from above)
CAMERA_HEIGHT_MM = 520.0
CAMERA_BACK_MM = ARENA_MM / 2 - 15.0  #: camera's horizontal distance behind the arena centre (inside the near wall)
CONTACT_MM = 10.0  #: outlines closer than this touch
NOISE_GREY = 1.0  #: standard deviation of the per-frame sensor noise, grey levels

# Behaviour chain: mean bout length (s) and transition probabilities (row: from).
_BOUT_MEAN_S = np.array([2.2, 1.3, 1.1, 2.0])
_BOUT_SHAPE = 4.0  # gamma shape: bouts are rarely very short
_BOUT_MIN_S = 0.4
_TRANSITIONS = np.array(
    [
        [0.0, 0.5, 0.25, 0.25],  # walk  -> pause, rear, groom
        [0.6, 0.0, 0.2, 0.2],  # pause -> walk, rear, groom
        [0.4, 0.4, 0.0, 0.2],  # rear  -> walk, pause, groom
        [0.5, 0.4, 0.1, 0.0],  # groom -> walk, pause, rear
    ]
)
_WALK, _PAUSE, _REAR, _GROOM = range(4)


# --------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoVideo:
    """One rendered demo video and where its ground truth lies.

    Attributes:
        id: video id, ``"arena_<i>"``.
        video: the ``.mp4`` file (RGB, ``size`` x ``size``, ``fps``).
        n_animals: animals in the video.
        truth_dir: folder with the ground-truth files (see the module docstring).
        n_frames, fps, size: frame count, frames per second, frame side in pixels.
        animals: animal (identity) names, in z-order.
        seed: the base seed passed to :func:`render_demo`; the video's own stream is
            ``SeedSequence(seed, spawn_key=(index,))``.
        index: the video's index ``i``.
    """

    id: str
    video: Path
    n_animals: int
    truth_dir: Path
    n_frames: int = 0
    fps: float = 25.0
    size: int = 256
    animals: tuple[str, ...] = ()
    seed: int = 0
    index: int = 0


@dataclass(frozen=True)
class Appearance:
    """How one animal looks (grey levels 0..255, sizes in mm)."""

    name: str
    body: float  #: body grey level
    pattern: str  #: "none", "stripe" (dorsal stripe) or "spot" (spot on the back)
    pattern_grey: float  #: grey level of the stripe or spot
    ear: float  #: ear grey level
    tail: float  #: tail grey level
    length_mm: float  #: snout to tail base
    width_mm: float  #: body width


def appearances(n: int) -> list[Appearance]:
    """Distinct appearances for ``n`` animals (the first three: dark, striped, spotted)."""
    base = [
        ("dark", 45.0, "none", 45.0),
        ("stripe", 135.0, "stripe", 60.0),
        ("spot", 80.0, "spot", 180.0),
    ]
    out = []
    for i in range(n):
        if i < len(base):
            name, body, pattern, pgrey = base[i]
        else:
            k = i - len(base)
            pattern = ("none", "stripe", "spot")[k % 3]
            body = float(30 + (k * 37) % 120)
            pgrey = body + 80.0 if body < 90 else body - 70.0
            name = f"{pattern}{k // 3 + 1}" if pattern != "none" else f"plain{k // 3 + 1}"
        length = 88.0 * (1.0 + 0.06 * ((i % 3) - 1))
        out.append(
            Appearance(
                name=name,
                body=body,
                pattern=pattern,
                pattern_grey=pgrey,
                ear=min(body + 45.0, 230.0),
                tail=140.0,
                length_mm=round(length, 3),
                width_mm=round(0.42 * length, 3),
            )
        )
    return out


# --------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: ``Pc = R (P - C)``, ``x = f Pc_x / Pc_z + cx``, ``y = f Pc_y / Pc_z + cy``.

    Attributes:
        f: focal length, pixels.
        cx, cy: principal point, pixels (centre of the image, pixel centres at integers).
        R: (3, 3) world-to-camera rotation; rows are the camera's x (image right),
            y (image down) and z (viewing direction) axes in world coordinates.
        C: (3,) camera centre, world mm.
        size: image side, pixels.
    """

    f: float
    cx: float
    cy: float
    R: np.ndarray
    C: np.ndarray
    size: int

    @property
    def K(self) -> np.ndarray:
        """(3, 3) intrinsic matrix."""
        return np.array([[self.f, 0.0, self.cx], [0.0, self.f, self.cy], [0.0, 0.0, 1.0]])

    def project(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points ``(..., 3)`` mm -> pixels ``(..., 2)`` (x, y) and depth ``(...)`` mm."""
        Pc = (np.asarray(P, float) - self.C) @ self.R.T
        z = Pc[..., 2]
        return self.f * Pc[..., :2] / z[..., None] + (self.cx, self.cy), z

    def rays(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """World directions ``(..., 3)`` through pixels ``(x, y)``, scaled so depth = ray parameter."""
        dc = np.stack([(x - self.cx) / self.f, (y - self.cy) / self.f, np.ones(np.broadcast(x, y).shape)], axis=-1)
        return dc @ self.R

    def to_dict(self) -> dict:
        """JSON-ready description (the contents of ``camera.json``)."""
        t = -self.R @ self.C
        return {
            "model": "pinhole, no distortion",
            "units": "mm (world), pixels (image)",
            "world_frame": (
                "Z up, floor at Z=0; X right in the image, Y away from the camera; "
                "arena floor |X|,|Y| <= arena_mm/2"
            ),
            "projection": "Pc = R (P - C); x = fx Pc_x / Pc_z + cx; y = fy Pc_y / Pc_z + cy",
            "pixel_convention": "x = column, y = row, pixel centres at integer coordinates",
            "image_size": [self.size, self.size],
            "fx": self.f,
            "fy": self.f,
            "cx": self.cx,
            "cy": self.cy,
            "K": self.K.tolist(),
            "R": self.R.tolist(),
            "t": t.tolist(),
            "camera_centre_mm": self.C.tolist(),
            "tilt_below_horizontal_deg": math.degrees(math.asin(-self.R[2, 2])),
            "arena_mm": ARENA_MM,
            "wall_height_mm": WALL_MM,
            "animal_plane": "each animal is drawn in the plane Z = its Z_mm (positions_3d.csv)",
        }


def _look_at(C: np.ndarray, target: np.ndarray) -> np.ndarray:
    forward = (target - C) / np.linalg.norm(target - C)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def make_camera(size: int) -> Camera:
    """The demo camera for ``size`` x ``size`` images.

    The camera sits ``CAMERA_HEIGHT_MM`` above the floor and ``CAMERA_BACK_MM``
    behind the arena centre; its tilt centres the arena (floor and wall tops)
    vertically and its focal length makes the arena fill the frame with a margin.
    """
    C = np.array([0.0, -CAMERA_BACK_MM, CAMERA_HEIGHT_MM])
    h = ARENA_MM / 2
    corners = np.array([[sx * h, sy * h, z] for sx in (-1, 1) for sy in (-1, 1) for z in (0.0, WALL_MM)])

    def extent(target_y: float) -> tuple[float, float, float]:
        R = _look_at(C, np.array([0.0, target_y, 0.0]))
        Pc = (corners - C) @ R.T
        xn, yn = Pc[:, 0] / Pc[:, 2], Pc[:, 1] / Pc[:, 2]
        return yn.min(), yn.max(), np.abs(xn).max()

    lo, hi = -h, h  # bisect the look-at point until the arena is vertically centred
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        ymin, ymax, _ = extent(mid)
        if ymin + ymax > 0:  # arena sits low in the image: look further down (nearer)
            hi = mid
        else:
            lo = mid
    target_y = 0.5 * (lo + hi)
    ymin, ymax, xmax = extent(target_y)
    margin = 0.04 * size
    f = (size / 2 - margin) / max(xmax, ymax, -ymin)
    c = (size - 1) / 2
    return Camera(f=float(f), cx=c, cy=c, R=_look_at(C, np.array([0.0, target_y, 0.0])), C=C, size=int(size))


# --------------------------------------------------------------------------------------
# Body geometry (all in mm, body-local coordinates: s forward along the heading, t to the left)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    a: float  # body ellipse semi-axis along s
    b: float  # body ellipse semi-axis along t
    s0: float  # head triangle base (s)
    hw: float  # head triangle half-width at its base
    s1: float  # snout tip (s)
    se: float  # ear centres (s)
    te: float  # ear centres (|t|)
    re: float  # ear radius
    tail_len: float


def _shape(app: Appearance, rear: float, groom: float) -> _Shape:
    """Body shape; rearing makes it shorter and wider, grooming curls it a little."""
    L, W = app.length_mm, app.width_mm
    a = 0.40 * L * (1 - 0.30 * rear) * (1 - 0.10 * groom)
    b = 0.5 * W * (1 + 0.18 * rear) * (1 + 0.05 * groom)
    head = 0.20 * L * (1 - 0.35 * rear) * (1 - 0.15 * groom)
    return _Shape(
        a=a, b=b, s0=0.45 * a, hw=0.70 * b, s1=a + head, se=0.80 * a, te=0.58 * b, re=0.15 * W, tail_len=0.85 * L
    )


def _sd_animal(s: np.ndarray, t: np.ndarray, sh: _Shape) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (mm, < 0 inside) to body+head and to the ears."""
    # Ellipse: f / |grad f| with f = (s/a)^2 + (t/b)^2 - 1 (exact on the outline).
    f = (s / sh.a) ** 2 + (t / sh.b) ** 2 - 1.0
    grad = 2.0 * np.sqrt((s / sh.a**2) ** 2 + (t / sh.b**2) ** 2) + 1e-9
    sd_body = f / grad
    # Head: triangle (base at s0, tip at s1), intersection of three half-planes.
    length = sh.s1 - sh.s0
    norm = math.hypot(sh.hw, length)
    side = (sh.hw * (s - sh.s1) + length * np.abs(t)) / norm
    sd_head = np.maximum(sh.s0 - s, side)
    sd_ears = np.hypot(s - sh.se, np.abs(t) - sh.te) - sh.re
    return np.minimum(sd_body, sd_head), sd_ears


_PHI16 = np.linspace(0, 2 * np.pi, 16, endpoint=False)
_UNIT16 = np.stack([np.cos(_PHI16), np.sin(_PHI16)], axis=1)


def _outline(sh: _Shape) -> np.ndarray:
    """(19, 2) points (s, t) bounding the silhouette: 16 on the ellipse, snout tip, outer ear edges."""
    extra = ((sh.s1, 0.0), (sh.se, sh.te + sh.re), (sh.se, -(sh.te + sh.re)))
    return np.concatenate([_UNIT16 * (sh.a, sh.b), extra])


_PHI40 = np.linspace(0, 2 * np.pi, 40, endpoint=False)
_UNIT40 = np.stack([np.cos(_PHI40), np.sin(_PHI40)], axis=1)
_ALONG10 = np.linspace(0, 1, 10)


def _boundary(sh: _Shape) -> np.ndarray:
    """(76, 2) points (s, t) every 2-3 mm along the outlines of body, head and ears."""
    body = _UNIT40 * (sh.a, sh.b)
    side = np.stack([sh.s0 + _ALONG10 * (sh.s1 - sh.s0), sh.hw * (1 - _ALONG10)], 1)
    ears = _UNIT16[::2] * sh.re + (sh.se, sh.te)
    return np.concatenate([body, side, side * (1, -1), ears, ears * (1, -1)])


def _tail(sh: _Shape, bend0: float, curvature: float, n: int = 8) -> np.ndarray:
    """(n + 1, 2) tail centre line (s, t) from the tail base backwards."""
    du = sh.tail_len / n
    u = (np.arange(n) + 0.5) * du
    psi = np.pi + bend0 + curvature * u
    steps = np.stack([np.cos(psi), np.sin(psi)], axis=1) * du
    return np.concatenate([[[-sh.a, 0.0]], [-sh.a, 0.0] + np.cumsum(steps, axis=0)])


def _keypoints_local(sh: _Shape) -> np.ndarray:
    """(4, 2) body-local keypoints in BODYPARTS order (left = +t)."""
    return np.array([[sh.s1, 0.0], [sh.se, sh.te], [sh.se, -sh.te], [-sh.a, 0.0]])


def _to_world(local: np.ndarray, x: float, y: float, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return local @ np.array([[c, s], [-s, c]]) + (x, y)


def _to_local(X: np.ndarray, Y: np.ndarray, x: float, y: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = X - x, Y - y
    return dx * c + dy * s, -dx * s + dy * c


# --------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------


@dataclass
class Trajectories:
    """Simulated poses; every array is ``(T, N)`` (frames x animals).

    Attributes:
        x, y: body centre on the floor, mm.
        z: body-centre height, mm.
        heading: snout direction, radians counter-clockwise from +X (grooming wobble included).
        state: main behaviour, index into :data:`BEHAVIOURS`.
        rear, groom: smoothed posture levels in [0, 1] that shape the body.
        tail_bend, tail_curvature: tail angle at its base (rad) and its curvature (rad/mm).
        touch: bool, the outline lies within ``CONTACT_MM`` of another animal's.
        touch_pair: ``(T, P)`` bool, the outlines of pair ``p`` (animal pairs
            ``i < j`` in :func:`itertools.combinations` order) lie within ``CONTACT_MM``.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    heading: np.ndarray
    state: np.ndarray
    rear: np.ndarray
    groom: np.ndarray
    tail_bend: np.ndarray
    tail_curvature: np.ndarray
    touch: np.ndarray
    touch_pair: np.ndarray

    def shape(self, apps: list[Appearance], frame: int, animal: int) -> _Shape:
        return _shape(apps[animal], self.rear[frame, animal], self.groom[frame, animal])


def _bout_length(rng: np.random.Generator, state: int, fps: float) -> int:
    """Frames in a new bout of ``state`` (gamma-distributed seconds, at least ``_BOUT_MIN_S``)."""
    mean = _BOUT_MEAN_S[state]
    seconds = max(_BOUT_MIN_S, rng.gamma(_BOUT_SHAPE, mean / _BOUT_SHAPE))
    return max(1, int(round(seconds * fps)))


def _reach(sh: _Shape) -> float:
    """Largest distance (mm) of the silhouette (tail excluded) from the body centre."""
    return max(sh.s1, sh.a, sh.b, math.hypot(sh.se, sh.te + sh.re))


def _silhouette_sd(points: np.ndarray, pose) -> np.ndarray:
    """Signed distance (mm, < 0 inside) of world points ``(K, 2)`` to a posed silhouette."""
    x, y, theta, sh = pose
    s, t = _to_local(points[:, 0], points[:, 1], x, y, theta)
    body, ears = _sd_animal(s, t, sh)
    return np.minimum(body, ears)


def _pair_gap(a, b, cutoff: float = math.inf) -> float:
    """Gap (mm) between two posed silhouettes (tails excluded); negative when they overlap.

    A pose is ``(x, y, heading, shape)``. Apart, the gap is the distance between
    the outlines (sampled every 2-3 mm); overlapping, it is minus the deepest
    penetration of one outline into the other. Exact (up to the sampling) when
    the gap is at most ``cutoff``; otherwise any number above ``cutoff`` (cheap).
    """
    bound = math.hypot(a[0] - b[0], a[1] - b[1]) - _reach(a[3]) - _reach(b[3])
    if bound > cutoff:
        return bound
    pa = _to_world(_boundary(a[3]), a[0], a[1], a[2])
    pb = _to_world(_boundary(b[3]), b[0], b[1], b[2])
    depth = min(_silhouette_sd(pa, b).min(), _silhouette_sd(pb, a).min())
    if depth < 0:
        return float(depth)
    if cutoff <= 0:
        return max(bound, 0.0) + 1e-6
    d = pa[:, None, :] - pb[None, :, :]
    return float(np.sqrt((d**2).sum(-1).min()))


def _clamp_to_arena(x: float, y: float, theta: float, sh: _Shape, margin: float = 3.0) -> tuple[float, float]:
    """Move the centre so the whole outline stays inside the walls."""
    h = ARENA_MM / 2 - margin
    if max(abs(x), abs(y)) + _reach(sh) <= h:
        return x, y
    pts = _to_world(_outline(sh), 0.0, 0.0, theta)
    x = min(max(x, -h - pts[:, 0].min()), h - pts[:, 0].max())
    y = min(max(y, -h - pts[:, 1].min()), h - pts[:, 1].max())
    return x, y


_WALK_SPEED_MM_S = (80.0, 180.0)  # range of walking speeds
_SOCIAL_P = 0.3  # chance that a walking bout heads for another animal
_AVOID_GAIN = 5.0  # rad/s, turning away from an animal ahead (at zero distance)
_AVOID_RANGE = 1.5  # body lengths within which animals ahead are avoided
_SEPARATE_ROUNDS = 2  # rounds of pushing overlapping animals apart per frame


@dataclass
class _Sim:
    """Mutable state of the simulation, one entry per animal."""

    pos: np.ndarray  # (N, 2) mm
    theta: np.ndarray  # (N,) heading, rad
    omega: np.ndarray  # (N,) random turn rate, rad/s
    speed: np.ndarray  # (N,) mm/s
    target_speed: np.ndarray
    state: np.ndarray  # (N,) behaviour index
    left: np.ndarray  # (N,) frames left in the bout
    social: np.ndarray  # (N,) animal being approached, -1 = none
    rear: np.ndarray  # (N,) posture levels in [0, 1]
    groom: np.ndarray
    bend: np.ndarray  # (N,) tail bend, rad
    curv: np.ndarray  # (N,) tail curvature, rad/mm
    phase: np.ndarray  # (N,) phase of grooming and tail oscillations

    def pose(self, i: int, shapes: list[_Shape]):
        return (self.pos[i, 0], self.pos[i, 1], self.theta[i], shapes[i])


def _start(apps: list[Appearance], fps: float, rng: np.random.Generator) -> _Sim:
    """Random initial state: animals apart from each other, random headings and behaviours."""
    n = len(apps)
    pos = np.zeros((n, 2))
    for i in range(n):
        for _ in range(1000):
            pos[i] = rng.uniform(-0.35 * ARENA_MM, 0.35 * ARENA_MM, 2)
            if all(np.hypot(*(pos[i] - pos[j])) > 1.3 * apps[i].length_mm for j in range(i)):
                break
    theta = rng.uniform(-np.pi, np.pi, n)
    state = rng.choice(4, size=n, p=[0.45, 0.25, 0.1, 0.2])
    left = np.array([rng.integers(1, _bout_length(rng, s, fps) + 1) for s in state])
    return _Sim(
        pos=pos,
        theta=theta,
        omega=np.zeros(n),
        speed=np.zeros(n),
        target_speed=np.where(state == _WALK, rng.uniform(*_WALK_SPEED_MM_S, n), 0.0),
        state=state,
        left=left,
        social=np.full(n, -1),
        rear=(state == _REAR).astype(float),
        groom=(state == _GROOM).astype(float),
        bend=rng.normal(0, 0.3, n),
        curv=rng.normal(0, 0.01, n),
        phase=rng.uniform(0, 2 * np.pi, n),
    )


def _advance_behaviour(sim: _Sim, fps: float, rng: np.random.Generator) -> None:
    """Count down the bouts; an ended bout draws the next state and its length."""
    n = len(sim.state)
    for i in range(n):
        sim.left[i] -= 1
        if sim.left[i] > 0:
            continue
        sim.state[i] = rng.choice(4, p=_TRANSITIONS[sim.state[i]])
        sim.left[i] = _bout_length(rng, sim.state[i], fps)
        sim.social[i] = -1
        sim.target_speed[i] = 0.0
        if sim.state[i] == _WALK:
            sim.target_speed[i] = rng.uniform(*_WALK_SPEED_MM_S)
            if n > 1 and rng.random() < _SOCIAL_P:
                sim.social[i] = rng.choice([j for j in range(n) if j != i])


def _steering(sim: _Sim, i: int, apps: list[Appearance], shapes: list[_Shape]) -> float:
    """Turn rate (rad/s) of animal ``i``: away from walls ahead, towards its social target, away from others."""
    u = np.array([math.cos(sim.theta[i]), math.sin(sim.theta[i])])
    length = apps[i].length_mm
    # Walls: how far a look-ahead point lies inside a band along the walls.
    look = sim.pos[i] + u * (0.6 * length + 0.4 * sim.speed[i])
    band, h = 70.0, ARENA_MM / 2
    away = (np.maximum(0.0, -h + band - look) - np.maximum(0.0, look - h + band)) / band
    steer = 6.0 * (u[0] * away[1] - u[1] * away[0])
    for j in range(len(sim.pos)):
        if j == i:
            continue
        d = sim.pos[j] - sim.pos[i]
        dist = math.hypot(*d) + 1e-9
        cross = (u[0] * d[1] - u[1] * d[0]) / dist  # > 0: j lies to the left
        if sim.social[i] == j:
            steer += 3.0 * cross
            if _pair_gap(sim.pose(i, shapes), sim.pose(j, shapes), cutoff=CONTACT_MM) <= CONTACT_MM:
                sim.social[i] = -1  # reached: from now on it avoids (and passes) the other
        elif dist < _AVOID_RANGE * length and (u @ d) / dist > 0.2:
            steer -= _AVOID_GAIN * (1 - dist / (_AVOID_RANGE * length)) * np.sign(cross + 1e-12)
    return steer if sim.state[i] == _WALK else 0.1 * steer


def _separate(sim: _Sim, shapes: list[_Shape], push: float, rounds: int = _SEPARATE_ROUNDS) -> None:
    """Push overlapping animals apart by ``push`` of their overlap and keep them inside the walls.

    Repeated ``rounds`` times, so an animal pinned against a wall is not pushed
    back into its neighbour by the wall.
    """
    n = len(sim.pos)
    for _ in range(rounds):
        for i in range(n):
            for j in range(i + 1, n):
                gap = _pair_gap(sim.pose(i, shapes), sim.pose(j, shapes), cutoff=0.0)
                if gap < 0:
                    d = sim.pos[i] - sim.pos[j]
                    d = d / (np.hypot(*d) + 1e-9)
                    sim.pos[i] += d * push * -gap / 2
                    sim.pos[j] -= d * push * -gap / 2
        for i in range(n):
            sim.pos[i] = _clamp_to_arena(sim.pos[i, 0], sim.pos[i, 1], sim.theta[i], shapes[i])


def simulate(
    n_frames: int, apps: list[Appearance], fps: float, rng: np.random.Generator, push: float = 0.8
) -> Trajectories:
    """Simulate ``len(apps)`` animals for ``n_frames`` frames at ``fps``.

    Behaviour bouts come from a semi-Markov chain (gamma bout lengths). Walking
    animals move with a smooth random heading (an Ornstein-Uhlenbeck turn rate),
    turn away from walls and mostly from each other; some walking bouts head for
    another animal until they touch, then pass. Overlapping bodies are pushed
    apart by ``push`` of their overlap per frame, so overlaps are brief. Rearing
    and grooming change the body shape smoothly (time constant 0.15 s); grooming
    wobbles the heading and sways the body.
    """
    n, dt, T = len(apps), 1.0 / fps, n_frames
    out = {k: np.zeros((T, n)) for k in ("x", "y", "z", "heading", "rear", "groom", "tail_bend", "tail_curvature")}
    states = np.zeros((T, n), np.int8)
    sim = _start(apps, fps, rng)
    k_posture = 1 - math.exp(-dt / 0.15)
    k_speed = 1 - math.exp(-dt / 0.25)
    for f in range(T):
        _advance_behaviour(sim, fps, rng)
        sim.rear += ((sim.state == _REAR) - sim.rear) * k_posture
        sim.groom += ((sim.state == _GROOM) - sim.groom) * k_posture
        sim.speed += (sim.target_speed - sim.speed) * k_speed
        shapes = [_shape(apps[i], sim.rear[i], sim.groom[i]) for i in range(n)]

        for i in range(n):
            tau, sigma = (0.5, 3.0) if sim.state[i] == _WALK else (0.15, 0.6)
            sim.omega[i] += -sim.omega[i] * dt / tau + sigma * math.sqrt(dt) * rng.standard_normal()
            u = np.array([math.cos(sim.theta[i]), math.sin(sim.theta[i])])
            sim.theta[i] += (sim.omega[i] + _steering(sim, i, apps, shapes)) * dt
            sim.pos[i] += u * sim.speed[i] * dt
        _separate(sim, shapes, push)
        sim.theta = (sim.theta + np.pi) % (2 * np.pi) - np.pi
        sim.bend += -sim.bend * dt / 1.0 + 0.5 * math.sqrt(dt) * rng.standard_normal(n)
        sim.curv += -sim.curv * dt / 1.5 + 0.01 * math.sqrt(dt) * rng.standard_normal(n)

        # The rendered pose: grooming wobbles the heading and sways the body a little.
        t_s = f * dt
        heading = sim.theta + sim.groom * 0.18 * np.sin(2 * np.pi * 3.5 * t_s + sim.phase)
        sway = sim.groom * 1.5 * np.sin(2 * np.pi * 5.0 * t_s + sim.phase)
        out["x"][f] = sim.pos[:, 0] - sway * np.sin(heading)
        out["y"][f] = sim.pos[:, 1] + sway * np.cos(heading)
        out["heading"][f] = (heading + np.pi) % (2 * np.pi) - np.pi
        out["z"][f] = 14.0 + 24.0 * sim.rear
        out["rear"][f] = sim.rear
        out["groom"][f] = sim.groom
        swing = 0.25 * np.sin(2 * np.pi * 1.5 * t_s + sim.phase) * (sim.speed / 150.0)  # tail swings while walking
        for i in range(n):  # a tail that would cross a wall bends along it instead
            pose = (out["x"][f, i], out["y"][f, i], heading[i], shapes[i])
            sim.bend[i] = _tail_inside(pose, sim.bend[i] + swing[i], sim.curv[i]) - swing[i]
        out["tail_bend"][f] = sim.bend + swing
        out["tail_curvature"][f] = sim.curv
        states[f] = sim.state

    traj = Trajectories(state=states, touch=np.zeros((T, n), bool), touch_pair=np.zeros((T, n * (n - 1) // 2), bool),
                        **out)
    _label_touch(traj, apps)
    return traj


def _tail_inside(pose, bend: float, curvature: float, margin: float = 2.0) -> float:
    """The tail bend nearest ``bend`` (rad) that keeps the tail inside the walls."""
    x, y, theta, sh = pose
    h = ARENA_MM / 2 - margin
    if max(abs(x), abs(y)) + sh.a + sh.tail_len <= h:
        return bend
    for delta in (0.0, *[sign * k * 0.2 for k in range(1, 16) for sign in (1, -1)]):
        tail = _to_world(_tail(sh, bend + delta, curvature), x, y, theta)
        if np.abs(tail).max() <= h:
            return bend + delta
    return bend


def _label_touch(traj: Trajectories, apps: list[Appearance]) -> None:
    """Fill ``traj.touch`` and ``traj.touch_pair``: outlines (rendered poses) within CONTACT_MM of each other."""
    T, n = traj.x.shape
    for f in range(T):
        poses = [(traj.x[f, i], traj.y[f, i], traj.heading[f, i], traj.shape(apps, f, i)) for i in range(n)]
        for p, (i, j) in enumerate(itertools.combinations(range(n), 2)):
            if _pair_gap(poses[i], poses[j], cutoff=CONTACT_MM) <= CONTACT_MM:
                traj.touch[f, i] = traj.touch[f, j] = traj.touch_pair[f, p] = True


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _render_background(cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 grey arena: textured floor, walls with a light rim, dark bench, vignette."""
    n = cam.size
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    d = cam.rays(xx, yy)
    C = cam.C
    h = ARENA_MM / 2
    lam = -C[2] / d[..., 2]
    fx, fy = C[0] + lam * d[..., 0], C[1] + lam * d[..., 1]  # floor hit (Z = 0)
    inside = (np.abs(fx) <= h) & (np.abs(fy) <= h)

    # Smooth floor texture in world coordinates (4 mm grid) plus fine grain.
    grid_mm = 4.0
    m = int((ARENA_MM + 4 * RIM_MM + 200) / grid_mm)
    tex = ndimage.gaussian_filter(rng.standard_normal((m, m)), 2.0)
    tex /= tex.std() + 1e-9
    gx = (fx + m * grid_mm / 2) / grid_mm
    gy = (fy + m * grid_mm / 2) / grid_mm
    floor_tex = ndimage.map_coordinates(tex, [np.clip(gy, 0, m - 1), np.clip(gx, 0, m - 1)], order=1)
    to_wall = h - np.maximum(np.abs(fx), np.abs(fy))
    img = 205.0 + 5.0 * floor_tex - 22.0 * np.exp(-np.clip(to_wall, 0, None) / 18.0)

    # Rays that leave the floor square: where do they cross the wall planes?
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = np.where(d[..., 0] > 0, (h - C[0]) / d[..., 0], np.where(d[..., 0] < 0, (-h - C[0]) / d[..., 0], np.inf))
        ty = np.where(d[..., 1] > 0, (h - C[1]) / d[..., 1], np.where(d[..., 1] < 0, (-h - C[1]) / d[..., 1], np.inf))
    t_exit = np.minimum(tx, ty)
    z_exit = C[2] + t_exit * d[..., 2]
    wall = ~inside & (z_exit <= WALL_MM)
    far = ty < tx
    wall_grey = np.where(far, 185.0, 165.0) - 18.0 * (1 - np.clip(z_exit / WALL_MM, 0, 1))
    img = np.where(wall, wall_grey, img)
    lam_top = (WALL_MM - C[2]) / d[..., 2]
    top = np.maximum(np.abs(C[0] + lam_top * d[..., 0]), np.abs(C[1] + lam_top * d[..., 1]))
    rim = ~inside & ~wall & (top <= h + RIM_MM)
    img = np.where(rim, 228.0, img)
    bench = ~inside & ~wall & ~rim
    bench_tex = ndimage.gaussian_filter(rng.standard_normal((n, n)), 3.0)
    img = np.where(bench, 85.0 + 4.0 * bench_tex / (bench_tex.std() + 1e-9), img)

    img += 1.5 * rng.standard_normal(img.shape)
    r2 = ((xx - cam.cx) ** 2 + (yy - cam.cy) ** 2) / (2 * (n / 2) ** 2)
    img *= 1.0 - 0.22 * r2
    return img.astype(np.float32)


@dataclass
class _Drawn:
    """One animal drawn in one frame: its full mask inside its box (pixel index ranges)."""

    x0: int
    y0: int
    mask: np.ndarray  # (h, w) bool, full silhouette (body, head, ears)


def _mm_per_px(cam: Camera, rays: np.ndarray, x: float, y: float, z: float) -> float:
    """Millimetres per pixel in the plane ``Z = z`` near ``(x, y)`` (geometric mean of both image axes)."""
    (u, v), _ = cam.project(np.array([x, y, z]))
    n = cam.size
    c, r = min(max(int(u), 0), n - 2), min(max(int(v), 0), n - 2)
    d = rays[[r, r, r + 1], [c, c + 1, c]]  # the pixel and its neighbours right and below
    P = cam.C + ((z - cam.C[2]) / d[:, 2])[:, None] * d
    return float(math.sqrt(math.dist(P[1], P[0]) * math.dist(P[2], P[0])))


def _pixel_box(cam: Camera, local: np.ndarray, x: float, y: float, z: float, th: float) -> tuple[int, int, int, int]:
    """Pixel index box ``(x0, y0, x1, y1)`` (exclusive ends, clipped) around body-local points."""
    world = _to_world(local, x, y, th)
    px, _ = cam.project(np.concatenate([world, np.full((len(world), 1), z)], axis=1))
    n = cam.size
    x0 = max(int(math.floor(px[:, 0].min())) - 2, 0)
    y0 = max(int(math.floor(px[:, 1].min())) - 2, 0)
    x1 = min(int(math.ceil(px[:, 0].max())) + 3, n)
    y1 = min(int(math.ceil(px[:, 1].max())) + 3, n)
    return x0, y0, x1, y1


def _plane_coords(cam: Camera, rays: np.ndarray, box, x: float, y: float, z: float, th: float):
    """Body-local coordinates ``(s, t)`` (mm, each ``(h, w)``) of the box's pixel centres on the plane ``Z = z``."""
    x0, y0, x1, y1 = box
    d = rays[y0:y1, x0:x1]
    lam = (z - cam.C[2]) / d[..., 2]
    return _to_local(cam.C[0] + lam * d[..., 0], cam.C[1] + lam * d[..., 1], x, y, th)


def _draw_animal(
    canvas: np.ndarray, cam: Camera, rays: np.ndarray, app: Appearance, traj: Trajectories, f: int, i: int
) -> _Drawn | None:
    """Draw animal ``i`` of frame ``f`` onto ``canvas`` (H, W float32) in place; return its mask.

    Every shape is a signed distance in mm on the animal's plane; pixel coverage
    ``clip(0.5 - sd / mm_per_px, 0, 1)`` anti-aliases the edges, and the mask is
    ``sd <= 0`` at the pixel centre (coverage >= 0.5). The tail is drawn first, the
    body over it.
    """
    x, y, z, th = traj.x[f, i], traj.y[f, i], traj.z[f, i], traj.heading[f, i]
    sh = _shape(app, traj.rear[f, i], traj.groom[f, i])
    mm_per_px = _mm_per_px(cam, rays, x, y, z)

    def cover(sd: np.ndarray) -> np.ndarray:
        return np.clip(0.5 - sd / mm_per_px, 0.0, 1.0)

    # Tail: distance to the tapering centre line.
    tail = _tail(sh, traj.tail_bend[f, i], traj.tail_curvature[f, i])
    box = _pixel_box(cam, tail, x, y, z, th)
    if box[2] > box[0] and box[3] > box[1]:
        s, t = _plane_coords(cam, rays, box, x, y, z, th)
        a, ab = tail[:-1], np.diff(tail, axis=0)
        ps, pt = s[..., None] - a[:, 0], t[..., None] - a[:, 1]  # (h, w, segments)
        u = np.clip((ps * ab[:, 0] + pt * ab[:, 1]) / (ab**2).sum(1), 0.0, 1.0)
        dist = np.sqrt((ps - u * ab[:, 0]) ** 2 + (pt - u * ab[:, 1]) ** 2)
        half = np.maximum(1.6 - 0.9 * (np.arange(len(ab)) + u) / len(ab), 0.45 * mm_per_px)
        view = canvas[box[1] : box[3], box[0] : box[2]]
        view += (app.tail - view) * cover((dist - half).min(-1))

    # Body, head and ears.
    box = _pixel_box(cam, _outline(sh), x, y, z, th)
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    s, t = _plane_coords(cam, rays, box, x, y, z, th)
    sd_body, sd_ears = _sd_animal(s, t, sh)
    sd_all = np.minimum(sd_body, sd_ears)
    q = np.clip((s / sh.a) ** 2 + (t / sh.b) ** 2, 0.0, 1.0)
    colour = app.body + 18.0 * (1.0 - q) - 6.0  # rounded back
    if app.pattern == "stripe":
        sd_p = np.maximum(np.abs(t) - 0.26 * sh.b, np.maximum(s - 0.75 * sh.a, -0.85 * sh.a - s))
        colour += (app.pattern_grey - colour) * cover(sd_p)
    elif app.pattern == "spot":
        sd_p = np.sqrt((s + 0.15 * sh.a) ** 2 + t**2) - 0.50 * sh.b
        colour += (app.pattern_grey - colour) * cover(sd_p)
    colour += (app.ear - colour) * cover(sd_ears)
    view = canvas[box[1] : box[3], box[0] : box[2]]
    view += (colour - view) * cover(sd_all)
    return _Drawn(x0=box[0], y0=box[1], mask=sd_all <= 0)


_RGB_LUT = np.clip(np.arange(256)[:, None] * np.array([1.0, 0.985, 0.95]) + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(grey: np.ndarray) -> np.ndarray:
    """(H, W) float grey -> (H, W, 3) uint8 RGB with a faint warm light."""
    return np.take(_RGB_LUT, np.clip(grey + 0.5, 0, 255).astype(np.uint8), axis=0)


# --------------------------------------------------------------------------------------
# Per-frame ground truth
# --------------------------------------------------------------------------------------


def _drop_collinear(c: np.ndarray) -> np.ndarray:
    """Remove vertices of a closed polygon ``(K, 2)`` that lie on a straight run (lossless)."""
    prev = np.diff(c, axis=0, prepend=c[-1:])  # edge into each vertex
    nxt = np.concatenate([prev[1:], prev[:1]])  # edge out of it
    turn = prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0]
    return c[(turn != 0) | ((prev * nxt).sum(1) <= 0)]


def _visible_polygons(vis: np.ndarray, x0: int, y0: int) -> list[list[float]]:
    """COCO polygons (pixel-corner convention) of a visible mask crop at (x0, y0).

    The outlines are the mask's marching-squares contours (vertices on half-pixel
    steps, so exact in floating point) with collinear vertices removed: pixel
    centres inside the polygons are exactly the mask, except that holes (rare:
    an occluder entirely inside the animal) are filled.
    """
    contours = measure.find_contours(np.pad(vis, 1).astype(np.float32), 0.5)
    polys = []
    for c in contours:
        if len(c) > 1 and np.array_equal(c[0], c[-1]):
            c = c[:-1]
        x, y = c[:, 1], c[:, 0]
        if np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:]) + x[-1] * y[0] - y[-1] * x[0] <= 0:
            continue  # a hole's outline runs the other way round (negative signed area)
        c = _drop_collinear(c)
        if len(c) < 3:
            continue
        xy = np.stack([c[:, 1] - 1 + x0 + 0.5, c[:, 0] - 1 + y0 + 0.5], axis=1)
        polys.append(xy.ravel().tolist())  # multiples of 0.5: exact
    return polys


class _Truth:
    """Collects the ground truth while frames are rendered."""

    def __init__(self, vid: str, apps: list[Appearance], size: int):
        self.vid, self.apps, self.size = vid, apps, size
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.centroids: list[tuple] = []
        self.keypoints: list[tuple] = []

    def add_frame(self, f: int, drawn: list[_Drawn | None], label: np.ndarray, kps: np.ndarray) -> None:
        """``label``: (H, W) int8 top-most animal index or -1; ``kps``: (N, 4, 2) pixels."""
        self.images.append(
            {
                "id": f + 1,
                "frame": f,
                "file_name": f"{self.vid}/frame_{f:06d}.png",
                "height": self.size,
                "width": self.size,
            }
        )
        for i, dr in enumerate(drawn):
            name = self.apps[i].name
            full = int(dr.mask.sum()) if dr is not None else 0
            vis = None
            if dr is not None and full:
                h, w = dr.mask.shape
                vis = label[dr.y0 : dr.y0 + h, dr.x0 : dr.x0 + w] == i
            area = int(vis.sum()) if vis is not None else 0
            if area == 0:
                self.centroids.append((f, name) + (np.nan,) * 6 + (0, 0.0))
            else:
                rows, cols = np.nonzero(vis)
                r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                cx, cy = cols.mean() + dr.x0, rows.mean() + dr.y0
                bx0, by0, bx1, by1 = c0 + dr.x0, r0 + dr.y0, c1 + dr.x0, r1 + dr.y0
                fraction = math.floor(area / full * 1e4) / 1e4  # rounded down: < 1 whenever occluded
                self.centroids.append((f, name, cx, cy, bx0, by0, bx1, by1, area, fraction))
                self.annotations.append(
                    {
                        "id": len(self.annotations) + 1,
                        "image_id": f + 1,
                        "frame": f,
                        "category_id": 1,
                        "segmentation": _visible_polygons(vis, dr.x0, dr.y0),
                        "bbox": [int(bx0), int(by0), int(bx1 - bx0), int(by1 - by0)],
                        "area": area,
                        "iscrowd": 0,
                        "identity": name,
                        "visible_fraction": fraction,
                    }
                )
            inside = (kps[i] >= -0.5).all(-1) & (kps[i] < self.size - 0.5).all(-1)
            pts = np.where(inside[:, None], kps[i], np.nan)
            self.keypoints.append((f, name, *pts.ravel()))


# --------------------------------------------------------------------------------------
# Writers (one per file)
# --------------------------------------------------------------------------------------


_FLOAT = "%.3f"


def _write_json(path: Path, obj, compact: bool = False) -> None:
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=2)
    path.write_text(text + "\n")


def _write_coco(path: Path, truth: _Truth) -> None:
    coco = {
        "info": {
            "description": f"SIPEC synthetic arena demo, video {truth.vid}",
            "version": sipec_models.__version__,
            "coordinates": "pixel corners (COCO): pixel (r, c) covers [c, c+1] x [r, r+1]",
            "masks": "visible part of each animal (body, head, ears; not the tail); holes filled in polygons",
        },
        "images": truth.images,
        "annotations": truth.annotations,
        "categories": [{"id": 1, "name": "animal", "supercategory": "animal"}],
    }
    _write_json(path, coco, compact=True)


def _write_identities(path: Path, truth: _Truth) -> None:
    rows = [(a["frame"], a["id"], a["identity"]) for a in truth.annotations]
    pd.DataFrame(rows, columns=["frame", "instance", "identity"]).to_csv(path, index=False)


def _write_centroids(path: Path, truth: _Truth) -> None:
    cols = ["frame", "animal", "x", "y", "box_x0", "box_y0", "box_x1", "box_y1", "area", "visible_fraction"]
    df = pd.DataFrame(truth.centroids, columns=cols)
    for c in ("box_x0", "box_y0", "box_x1", "box_y1"):
        df[c] = df[c].astype("Int64")
    df["visible_fraction"] = df["visible_fraction"].map("{:.4f}".format)
    df.to_csv(path, index=False, float_format=_FLOAT)


def _keypoint_columns() -> list[str]:
    return [f"{p}_{c}" for p in BODYPARTS for c in ("x", "y")]


def _write_keypoints(path: Path, truth: _Truth) -> None:
    df = pd.DataFrame(truth.keypoints, columns=["frame", "animal", *_keypoint_columns()])
    df.to_csv(path, index=False, float_format=_FLOAT)


def _dlc_image(vid: str, f: int) -> str:
    return f"labeled-data/{vid}/img{f:05d}.png"


def _write_dlc(path: Path, truth: _Truth, frames: list[int]) -> None:
    """DeepLabCut multi-animal CSV (scorer/individuals/bodyparts/coords header rows)."""
    names = [a.name for a in truth.apps]
    cols = pd.MultiIndex.from_tuples(
        [(DLC_SCORER, name, p, c) for name in names for p in BODYPARTS for c in ("x", "y")],
        names=["scorer", "individuals", "bodyparts", "coords"],
    )
    n = len(names)
    kp = np.array([row[2:] for row in truth.keypoints], float).reshape(-1, n, len(BODYPARTS) * 2)
    data = kp[frames].reshape(len(frames), -1)
    df = pd.DataFrame(data, index=[_dlc_image(truth.vid, f) for f in frames], columns=cols)
    df.to_csv(path, float_format="%.2f")


def _write_behaviour(path: Path, traj: Trajectories, apps: list[Appearance]) -> None:
    T, n = traj.state.shape
    onehot = np.eye(len(BEHAVIOURS), dtype=np.int8)[traj.state]  # (T, N, 4)
    df = pd.DataFrame(
        {
            "frame": np.repeat(np.arange(T), n),
            "animal": np.tile([a.name for a in apps], T),
            **{b: onehot[..., k].ravel() for k, b in enumerate(BEHAVIOURS)},
            "touch": traj.touch.ravel().astype(np.int8),
        }
    )
    df.to_csv(path, index=False)


def _write_social(path: Path, traj: Trajectories, apps: list[Appearance]) -> None:
    T = traj.touch_pair.shape[0]
    names = [sorted((apps[i].name, apps[j].name)) for i, j in itertools.combinations(range(len(apps)), 2)]
    P = len(names)
    df = pd.DataFrame(
        {
            "frame": np.repeat(np.arange(T), P),
            "animal_a": np.tile([a for a, _ in names], T),
            "animal_b": np.tile([b for _, b in names], T),
            "touch": traj.touch_pair.ravel().astype(np.int8),
        }
    )
    df.to_csv(path, index=False)


def _write_positions(path: Path, traj: Trajectories, apps: list[Appearance]) -> None:
    T, n = traj.x.shape
    df = pd.DataFrame(
        {
            "frame": np.repeat(np.arange(T), n),
            "animal": np.tile([a.name for a in apps], T),
            "X_mm": traj.x.ravel(),
            "Y_mm": traj.y.ravel(),
            "Z_mm": traj.z.ravel(),
            "heading_deg": np.degrees(traj.heading.ravel()),
        }
    )
    df.to_csv(path, index=False, float_format=_FLOAT)


# --------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------


def _meta(
    vid: str, index: int, n_frames: int, n_animals: int, size: int, fps: float, seed: int, dlc_every: int
) -> dict:
    """The contents of ``meta.json``; a demo whose meta.json equals it is complete and current."""
    apps = appearances(n_animals)
    return {
        "id": vid,
        "index": index,
        "n_frames": int(n_frames),
        "fps": float(fps),
        "size": int(size),
        "n_animals": int(n_animals),
        "animals": [a.name for a in apps],
        "appearance": [asdict(a) for a in apps],
        "behaviours": list(BEHAVIOURS),
        "labels": list(LABELS),
        "bodyparts": list(BODYPARTS),
        "seed": int(seed),
        "seed_sequence": {"entropy": int(seed), "spawn_key": [int(index)]},
        "dlc_every": int(dlc_every),
        "contact_mm": CONTACT_MM,
        "z_order": "animals drawn in the order listed; later ones occlude earlier ones",
        "sipec_models_version": sipec_models.__version__,
        "renderer_version": RENDERER_VERSION,
    }


_TRUTH_FILES = (
    "masks_coco.json",
    "identities.csv",
    "centroids.csv",
    "keypoints.csv",
    "keypoints_dlc.csv",
    "behaviour.csv",
    "social.csv",
    "positions_3d.csv",
    "camera.json",
    "meta.json",
)


def _is_complete(video: Path, truth_dir: Path, meta: dict) -> bool:
    if not video.is_file() or not all((truth_dir / name).is_file() for name in _TRUTH_FILES):
        return False
    try:
        return json.loads((truth_dir / "meta.json").read_text()) == meta
    except (OSError, ValueError):
        return False


@dataclass
class _Scene:
    """What every frame of one video shares."""

    cam: Camera
    rays: np.ndarray  # (H, W, 3) world direction through each pixel centre
    background: np.ndarray  # (H, W) float32 grey
    apps: list[Appearance]


def _keypoints_px(scene: _Scene, traj: Trajectories, f: int, i: int) -> np.ndarray:
    """(4, 2) pixel coordinates of animal ``i``'s keypoints (BODYPARTS order) in frame ``f``."""
    sh = _shape(scene.apps[i], traj.rear[f, i], traj.groom[f, i])
    world = _to_world(_keypoints_local(sh), traj.x[f, i], traj.y[f, i], traj.heading[f, i])
    return scene.cam.project(np.concatenate([world, np.full((len(world), 1), traj.z[f, i])], axis=1))[0]


def _frames(
    scene: _Scene, traj: Trajectories, noise_rng: np.random.Generator, truth: _Truth, dlc_dir: Path,
    dlc_frames: set[int], bar,
) -> Iterator[np.ndarray]:
    """Render every frame, yielding ``(H, W, 3)`` uint8 RGB, and record its ground truth in ``truth``.

    Frames in ``dlc_frames`` are also saved as ``dlc_dir/img<frame>.png``.
    """
    n = scene.cam.size
    T, N = traj.x.shape
    label = np.empty((n, n), np.int8)  # top-most animal at each pixel, -1 = none
    for f in range(T):
        canvas = scene.background.copy()
        label.fill(-1)
        drawn = []
        for i in range(N):  # z-order: later animals occlude earlier ones
            dr = _draw_animal(canvas, scene.cam, scene.rays, scene.apps[i], traj, f, i)
            drawn.append(dr)
            if dr is not None:
                h, w = dr.mask.shape
                label[dr.y0 : dr.y0 + h, dr.x0 : dr.x0 + w][dr.mask] = i
        kps = np.stack([_keypoints_px(scene, traj, f, i) for i in range(N)])
        truth.add_frame(f, drawn, label, kps)
        canvas += NOISE_GREY * noise_rng.standard_normal((n, n), dtype=np.float32)
        rgb = _to_rgb(canvas)
        if f in dlc_frames:
            Image.fromarray(rgb).save(dlc_dir / Path(_dlc_image(truth.vid, f)).name, compress_level=1)
        bar.update(1)
        yield rgb


def _render_video(outdir: Path, index: int, meta: dict, seed: int, bar) -> None:
    """Render one video into a temporary folder in ``outdir``, then move it into place.

    Leftovers of an earlier run that was killed (``.<id>.partial-*``) are removed
    first: one output folder is meant to be written by one process at a time.
    """
    vid, n_frames, size, fps = meta["id"], meta["n_frames"], meta["size"], meta["fps"]
    for stale in outdir.glob(f".{vid}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    sim_ss, scene_ss, noise_ss = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(3)
    apps = appearances(meta["n_animals"])
    cam = make_camera(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    scene = _Scene(cam, cam.rays(xx, yy), _render_background(cam, np.random.default_rng(scene_ss)), apps)
    tmp = Path(tempfile.mkdtemp(prefix=f".{vid}.partial-", dir=outdir))
    try:
        truth_dir = tmp / vid
        dlc_dir = truth_dir / "labeled-data" / vid
        dlc_dir.mkdir(parents=True)
        traj = simulate(n_frames, apps, fps, np.random.default_rng(sim_ss))
        truth = _Truth(vid, apps, size)
        dlc_frames = list(range(0, n_frames, meta["dlc_every"]))
        frames = _frames(scene, traj, np.random.default_rng(noise_ss), truth, dlc_dir, set(dlc_frames), bar)
        write_video(tmp / f"{vid}.mp4", frames, fps)

        _write_coco(truth_dir / "masks_coco.json", truth)
        _write_identities(truth_dir / "identities.csv", truth)
        _write_centroids(truth_dir / "centroids.csv", truth)
        _write_keypoints(truth_dir / "keypoints.csv", truth)
        _write_dlc(truth_dir / "keypoints_dlc.csv", truth, dlc_frames)
        _write_behaviour(truth_dir / "behaviour.csv", traj, apps)
        _write_social(truth_dir / "social.csv", traj, apps)
        _write_positions(truth_dir / "positions_3d.csv", traj, apps)
        _write_json(truth_dir / "camera.json", cam.to_dict())
        _write_json(truth_dir / "meta.json", meta)

        # Old truth first (it holds meta.json, the completeness mark), then the video, then the new truth.
        final_truth, final_video = outdir / vid, outdir / f"{vid}.mp4"
        if final_truth.exists():
            shutil.rmtree(final_truth)
        os.replace(tmp / f"{vid}.mp4", final_video)
        os.replace(truth_dir, final_truth)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def render_demo(
    outdir: str | os.PathLike,
    n_videos: int = 2,
    n_frames: int = 600,
    n_animals: int = 3,
    size: int = 256,
    fps: float = 25.0,
    seed: int = 0,
    progress: bool = True,
    dlc_every: int = 10,
    workers: int | None = None,
) -> list[DemoVideo]:
    """Render the demo videos ``arena_0 .. arena_<n_videos-1>`` with their ground truth.

    Args:
        outdir: folder to write into (created if missing). Each video ``<id>`` gives
            ``<outdir>/<id>.mp4`` and ``<outdir>/<id>/`` (see the module docstring).
        n_videos: number of videos; video ``i`` uses ``SeedSequence(seed, spawn_key=(i,))``.
        n_frames: frames per video.
        n_animals: animals per video (the first three are dark, striped and spotted).
        size: frame side, pixels (frames are ``size`` x ``size`` RGB).
        fps: frame rate, frames per second; bout lengths and speeds are in seconds.
        seed: base seed; the same seed gives byte-identical ground truth.
        progress: show a tqdm progress bar over all frames.
        dlc_every: every ``dlc_every``-th frame goes into ``keypoints_dlc.csv`` with its
            image (``labeled-data/<id>/img<frame>.png``); ``keypoints.csv`` has every frame.
        workers: videos rendered at once, each in its own process; ``None`` = the CPU
            cores this process may use (at most the number of videos to render). The
            output does not depend on it.

    Returns:
        One :class:`DemoVideo` per video. A video whose folder already holds a
        complete demo made with the same parameters (``meta.json`` equal) is not
        rendered again. Each video is written to a temporary folder inside
        ``outdir`` and moved into place when complete.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if n_videos < 0 or n_frames < 1 or n_animals < 1 or size < 32 or fps <= 0 or dlc_every < 1:
        raise ValueError(
            f"invalid demo parameters: n_videos={n_videos}, n_frames={n_frames}, n_animals={n_animals}, "
            f"size={size}, fps={fps}, dlc_every={dlc_every}"
        )
    videos, todo = [], []
    for index in range(n_videos):
        vid = f"arena_{index}"
        meta = _meta(vid, index, n_frames, n_animals, size, fps, seed, dlc_every)
        video = DemoVideo(
            id=vid, video=outdir / f"{vid}.mp4", n_animals=n_animals, truth_dir=outdir / vid, n_frames=n_frames,
            fps=float(fps), size=size, animals=tuple(meta["animals"]), seed=seed, index=index,
        )
        videos.append(video)
        if not _is_complete(video.video, video.truth_dir, meta):
            todo.append((index, meta))
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(int(workers), len(todo)))
    with tqdm(total=len(todo) * n_frames, desc="demo", unit="frame", disable=not progress) as bar:
        if workers == 1:
            for index, meta in todo:
                _render_video(outdir, index, meta, seed, bar)
        else:
            _render_parallel(outdir, todo, seed, workers, bar)
    return videos


# --------------------------------------------------------------------------------------
# Several videos at once: x264 holds the GIL, so each video renders in its own
# interpreter (``python -m sipec_models.demo <job>``), which, unlike
# multiprocessing's spawn, works from unguarded scripts too.
# --------------------------------------------------------------------------------------


class _PrintBar:
    """Stands in for the tqdm bar in a worker: prints frame counts (one number a line) in batches."""

    def __init__(self, every: int = 10):
        self.every, self.n = every, 0

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.n >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.n:
            print(self.n, flush=True)
            self.n = 0


def _render_parallel(outdir: Path, todo: list[tuple[int, dict]], seed: int, workers: int, bar) -> None:
    """Render ``todo`` in up to ``workers`` child processes, forwarding their progress to ``bar``."""
    lock = threading.Lock()
    env = dict(os.environ)
    package_root = str(Path(sipec_models.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)

    def run(index: int, meta: dict) -> None:
        job = json.dumps({"outdir": str(outdir), "index": index, "meta": meta, "seed": seed})
        with tempfile.TemporaryFile("w+") as err:
            with subprocess.Popen(
                [sys.executable, "-m", "sipec_models.demo", job], stdout=subprocess.PIPE, stderr=err, text=True, env=env
            ) as proc:
                for line in proc.stdout:
                    with lock:
                        bar.update(int(line))
            if proc.returncode:
                err.seek(0)
                raise RuntimeError(f"rendering demo video {meta['id']} failed:\n{err.read()[-4000:]}")

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(run, index, meta) for index, meta in todo]:
            future.result()


def _worker_main(job: str) -> None:
    args = json.loads(job)
    bar = _PrintBar()
    try:
        _render_video(Path(args["outdir"]), args["index"], args["meta"], args["seed"], bar)
    finally:
        bar.flush()


if __name__ == "__main__":
    _worker_main(sys.argv[1])
