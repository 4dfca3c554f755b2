"""Figures for the Snakemake report."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def save_figure(fig, out: str | os.PathLike, dpi: float | None = 110) -> None:
    """Write ``fig`` to ``out`` atomically (a temporary file, then a rename) and close it.

    The format follows ``out``'s suffix; ``dpi=None``: matplotlib's default.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def trajectory_figure(table: pd.DataFrame, width: int, height: int, out: str | os.PathLike,
                      title: str = "", bins: int = 48) -> None:
    """Trajectories (left) and occupancy (right) of every animal of one video.

    Args:
        table: per-animal table (columns ``animal``, ``x``, ``y`` in pixels).
        width, height: frame size, pixels (the axes' extent; y points down as in the image).
        out: PNG path, written atomically.
    """
    fig, (ax_traj, ax_occ) = plt.subplots(1, 2, figsize=(10, 4.6), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for i, (animal, t) in enumerate(table.groupby("animal", sort=True)):
        ax_traj.plot(t["x"], t["y"], lw=0.7, color=colours(i % 10), label=str(animal))
    ax_traj.set(xlim=(0, width), ylim=(height, 0), aspect="equal", xlabel="x (px)", ylabel="y (px)",
                title=f"{title} trajectories".strip())
    ax_traj.legend(loc="upper right", fontsize=7, frameon=True)
    xy = table[["x", "y"]].dropna().to_numpy()
    aspect = height / width
    counts, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=(max(1, int(bins * aspect)), bins),
                                  range=((0, height), (0, width)))
    frames = max(1, table["frame"].nunique())
    occupancy = np.ma.masked_equal(counts / frames, 0)
    im = ax_occ.imshow(occupancy, extent=(0, width, height, 0), cmap="magma",
                       norm=matplotlib.colors.LogNorm() if occupancy.count() else None)
    fig.colorbar(im, ax=ax_occ, label="fraction of frames")
    ax_occ.set(xlabel="x (px)", ylabel="y (px)", title="occupancy (all animals)")
    save_figure(fig, out)


def ethogram_figure(table: pd.DataFrame, behaviours: list[str], fps: float, out: str | os.PathLike,
                    title: str = "") -> None:
    """Ethogram raster of one video: one panel per animal, one row per behaviour, a mark per called frame.

    Args:
        table: per-animal table with ``frame``, ``animal`` and a 0/1 (bool)
            column per behaviour (the calls).
        behaviours: the call columns, top to bottom.
        fps: frames per second (the x axis is in seconds).
        out: PNG path, written atomically.
    """
    animals = sorted(table["animal"].unique(), key=str)
    n = max(1, len(animals))
    fig, axes = plt.subplots(n, 1, figsize=(10, 0.35 * len(behaviours) * n + 1.2), sharex=True, squeeze=False,
                             constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for ax, animal in zip(axes[:, 0], animals):
        t = table[table["animal"] == animal].sort_values("frame")
        seconds = t["frame"].to_numpy() / fps
        for k, b in enumerate(behaviours):
            on = t[b].fillna(False).to_numpy(bool)
            # Runs of called frames as horizontal bars (one per bout).
            edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
            spans = [(seconds[s], (e - s) / fps) for s, e in zip(edges[::2], edges[1::2])]
            ax.broken_barh(spans, (k - 0.4, 0.8), color=colours(k % 10))
        ax.set_yticks(range(len(behaviours)), behaviours, fontsize=8)
        ax.set_ylim(len(behaviours) - 0.5, -0.5)
        ax.set_ylabel(str(animal), rotation=0, ha="right", va="center")
    axes[-1, 0].set_xlabel("time (s)")
    axes[0, 0].set_title(f"{title} ethogram".strip())
    save_figure(fig, out)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float) -> np.ndarray:
    """``(2, H, W)`` flow (px) -> ``(H, W, 3)`` RGB in [0, 1]: hue = direction, value = magnitude / max (clipped)."""
    from matplotlib.colors import hsv_to_rgb

    dx, dy = flow
    hue = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi)
    value = np.clip(np.hypot(dx, dy) / max(max_magnitude, 1e-6), 0, 1)
    return hsv_to_rgb(np.stack([hue, np.ones_like(hue), value], -1))


def colour_wheel(n: int = 64) -> np.ndarray:
    """A legend for :func:`flow_to_rgb`: the colour of each direction at full magnitude (``(n, n, 3)``)."""
    y, x = np.mgrid[-1:1:complex(n), -1:1:complex(n)]
    rgb = flow_to_rgb(np.stack([x, y]), 1.0)
    rgb[np.hypot(x, y) > 1] = 1.0
    return rgb


def flow_figure(pair, flow, out: str | os.PathLike, title: str = "") -> None:
    """A frame, its optic flow to the next frame and the reconstruction error without and with the flow.

    Args:
        pair: ``(2, C, H, W)`` frames ``t, t + 1`` in [0, 1] (tensor or array).
        flow: ``(2, H, W)`` flow ``t -> t + 1`` in px of the frames (``dx`` right, ``dy`` down): frame ``t``
            at ``(x, y)`` is frame ``t + 1`` at ``(x + dx, y + dy)``.
    """
    import torch

    from sipec_models.flow_loss import reconstruct

    pair = torch.as_tensor(pair).float()[None]
    flow = torch.as_tensor(flow).float()[None]
    target, recon = reconstruct(pair, flow)
    _, recon0 = reconstruct(pair, torch.zeros_like(flow))
    err_flow = (target - recon).abs().mean(1)[0].numpy()
    err_zero = (target - recon0).abs().mean(1)[0].numpy()
    f = flow[0].numpy()
    vmax_flow = max(float(np.percentile(np.hypot(f[0], f[1]), 99.5)), 0.5)
    vmax_err = max(float(err_zero.max()), 1e-3)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4), constrained_layout=True)
    axes[0].imshow(target[0].mean(0).numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("frame t")
    axes[1].imshow(flow_to_rgb(f, vmax_flow))
    axes[1].set_title(f"flow t -> t+1 (value: |flow|, max {vmax_flow:.1f} px)")
    inset = axes[1].inset_axes([0.78, 0.0, 0.22, 0.22])
    inset.imshow(colour_wheel())
    inset.set_xticks([]), inset.set_yticks([])
    im = axes[2].imshow(err_zero, cmap="magma", vmin=0, vmax=vmax_err)
    axes[2].set_title(f"|error| zero flow (mean {err_zero.mean():.4f})")
    axes[3].imshow(err_flow, cmap="magma", vmin=0, vmax=vmax_err)
    axes[3].set_title(f"|error| with flow (mean {err_flow.mean():.4f})")
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=axes[2:], shrink=0.8, label="|I_t - reconstruction| (intensity, 0-1)")
    if title:
        fig.suptitle(title)
    save_figure(fig, out)
