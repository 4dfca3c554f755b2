"""DeepEthogram flow generator on a real video: held-out reconstruction with the learnt flows vs zero flow.

Data: one unlabelled video (default ``../shared/data/dlc_openfield/videos/m3v1mp4.mp4``,
one mouse in an open field, 640x480 grey, 30 fps, 2330 frames; or
``vame_mouse/cropped_video.mp4``), decoded once and resized to ``--size``
(grey). Frames split in time, never shuffled:

* training: the first ``--train-fraction`` (80 %) of the frames, of which the
  last ``--val-fraction`` of the video (10 %) is the validation block that
  picks the best epoch;
* test: the last 20 %, a contiguous block no training window touches.

The network (``--arch``, default TinyMotionNet, DeepEthogram-fast) is trained
with the DeepEthogram loss (:mod:`sipec_models.flow_loss`) for ``--epochs`` x
``--steps`` steps of ``--batch-size`` 11-frame windows. Deviations from the
paper's schedule, to fit a CPU (1 thread, ~15 min): input 96x128 px, 960
steps instead of 10,000, Adam at 1e-3 with a per-step cosine decay to 1e-5
(paper: 1e-4, plateau decay), training on 64x64 crops (``flow.augment.crop_size``),
half of them drawn where the frames change (``flow.train.motion_sampling``
0.5): the mouse covers ~1 % of the frame, and uniform 300-step runs learnt
no useful flow.

Evaluation on ``--eval-windows`` evenly spaced test windows (10 frame pairs each):

1. the training loss (multi-scale pixel + SSIM + smoothness) of the learnt
   flows and of zero flow;
2. the photometric reconstruction error at the input resolution, with the
   finest flow upsampled to the frame size in input pixels (what the flow
   feature extractor sees): mean generalised Charbonnier (alpha 0.4, the
   pixel loss), mean absolute error and mean SSIM, over all pixels and over
   "moving" pixels (``|frame_t - frame_t+1| > --motion-threshold``);
   zero flow (frame t "reconstructed" as frame t + 1) is the baseline.

Static-camera videos favour the zero-flow baseline on whole-frame averages:
most pixels are bit-identical in consecutive frames (codec skip blocks;
``identical_pixel_fraction``), which zero flow reconstructs exactly and any
non-zero flow blurs; the moving-pixel numbers measure what the flow adds.

A figure (``--figure``) shows the test pair with the most motion: frame t,
its colour-coded flow (hue = direction, value = magnitude), and the absolute
reconstruction error without and with the flow.

Run from the repository root::

    .venv/bin/python benchmarks/deg_flow.py --out results/benchmarks/deg_flow.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sipec_models.flow_loss import FlowLossConfig, flow_loss, photometric_error, zero_flow_loss
from sipec_models.nets.flow import count_parameters, upsample_flow
from sipec_models.training.config import load_model_config
from sipec_models.training.flow import Clip, gather_windows, read_video_frames, train_flow_generator, window_index

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_VIDEO = DATA / "dlc_openfield" / "videos" / "m3v1mp4.mp4"


@torch.no_grad()
def evaluate(model, clips, index, loss_cfg, batch_size: int, threshold: float) -> dict:
    """Training loss and full-resolution photometric errors, learnt flow vs zero flow, averaged over windows."""
    sums: dict[str, dict[str, float]] = {"flow": {}, "zero": {}, "frames": {}}
    worst = None  # (moving pixels, frames, flow) of the pair with the most motion
    n = 0
    for i in range(0, len(index), batch_size):
        x = gather_windows(clips, index[i:i + batch_size], model.n_frames)
        flows = model(x.transpose(1, 2))
        H, W = x.shape[-2:]
        full = upsample_flow(flows[0], (H, W))
        res = {"flow": {**{f"loss_{k}": v for k, v in flow_loss(x, flows, loss_cfg).items()},
                        **photometric_error(x, full, loss_cfg, threshold)},
               "zero": {**{f"loss_{k}": v for k, v in zero_flow_loss(x, [f.shape[-2:] for f in flows],
                                                                     loss_cfg).items()},
                        **photometric_error(x, None, loss_cfg, threshold)}}
        for kind, d in res.items():
            for k, v in d.items():
                sums[kind][k] = sums[kind].get(k, 0.0) + float(v) * len(x)
        n += len(x)
        change = (x[:, 1:] - x[:, :-1]).abs().mean(2)  # (B, T-1, H, W)
        sums["frames"]["identical_fraction"] = sums["frames"].get("identical_fraction", 0.0) + \
            float((change == 0).float().mean()) * len(x)
        diff = change.gt(threshold).flatten(2).sum(-1)  # (B, T-1)
        b, k = np.unravel_index(int(diff.argmax()), tuple(diff.shape))
        if worst is None or int(diff[b, k]) > worst[0]:
            worst = (int(diff[b, k]), x[b:b + 1].clone(), full[b:b + 1].clone(), int(k))
    return {kind: {k: v / n for k, v in d.items()} for kind, d in sums.items()}, worst


def figure(worst, out: Path, title: str) -> None:
    """The held-out frame pair with the most motion: :func:`sipec_models.plots.flow_figure`."""
    from sipec_models.plots import flow_figure

    _, x, full, k = worst
    flow_figure(x[0, k:k + 2], full[0, 2 * k:2 * k + 2], out, title)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"),
                    help="input size, px (multiples of 8; 32 for motionnet)")
    ap.add_argument("--arch", default="tiny_motionnet", choices=("tiny_motionnet", "motionnet", "tiny_motionnet3d"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps", type=int, default=80, help="steps per epoch")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (DeepEthogram: 1e-4 over 10,000 steps)")
    ap.add_argument("--crop", type=int, nargs=2, default=(64, 64), metavar=("H", "W"),
                    help="train on crops of this size (flow.augment.crop_size); evaluation uses full frames")
    ap.add_argument("--motion-sampling", type=float, default=0.5, help="flow.train.motion_sampling")
    ap.add_argument("--lr-schedule", default="cosine", choices=("plateau", "cosine"), help="flow.train.lr_schedule")
    ap.add_argument("--train-fraction", type=float, default=0.8)
    ap.add_argument("--val-fraction", type=float, default=0.1,
                    help="of the whole video, taken from the training part's end")
    ap.add_argument("--eval-windows", type=int, default=120)
    ap.add_argument("--motion-threshold", type=float, default=0.05, help="intensity (0-1) change marking moving pixels")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/deg_flow.json"))
    ap.add_argument("--figure", type=Path, default=None, help="PNG (default: --out with .png)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="also save the trained model here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.video.is_file():
        print(f"{args.video}: video not found", file=sys.stderr)
        return 2
    cpu0, wall0 = time.process_time(), time.perf_counter()

    overrides = [f"flow.arch={args.arch}", f"data.input_size=[{args.size[0]},{args.size[1]}]", "data.rgb=false",
                 f"flow.train.epochs={args.epochs}", f"flow.train.steps_per_epoch={args.steps}",
                 f"flow.train.batch_size={args.batch_size}", f"flow.train.lr={args.lr}",
                 f"flow.train.val_windows={args.eval_windows}", f"flow.train.motion_sampling={args.motion_sampling}",
                 f"flow.train.lr_schedule={args.lr_schedule}", "flow.train.min_lr=1e-5"]
    if args.crop:
        overrides.append(f"flow.augment.crop_size=[{args.crop[0]},{args.crop[1]}]")
    cfg = load_model_config("deepethogram", overrides)
    frames = read_video_frames(args.video, args.size, rgb=False)
    n = len(frames)
    n_train = int(round(args.train_fraction * n))
    n_fit = int(round((args.train_fraction - args.val_fraction) * n))
    train = [Clip(str(args.video), 0, frames[:n_fit])]
    val = [Clip(str(args.video), n_fit, frames[n_fit:n_train])]
    test = [Clip(str(args.video), n_train, frames[n_train:])]
    decode_s = time.perf_counter() - wall0
    print(f"{args.video.name}: {n} frames at {args.size[0]}x{args.size[1]}; fit [0, {n_fit}), "
          f"val [{n_fit}, {n_train}), test [{n_train}, {n})")

    model, history = train_flow_generator(train, val, cfg, out=args.checkpoint, progress=True, device="cpu")
    train_cpu = time.process_time() - cpu0
    loss_cfg = FlowLossConfig.from_cfg(cfg.flow)
    idx = window_index(test, model.n_frames)
    idx = idx[np.linspace(0, len(idx) - 1, min(args.eval_windows, len(idx))).round().astype(int)]
    res, worst = evaluate(model, test, idx, loss_cfg, args.batch_size, args.motion_threshold)

    for d in (res["flow"], res["zero"]):  # Charbonnier over the pixels that are not "moving"
        mf = d["moving_fraction"]
        d["pixel_static"] = (d["pixel"] - mf * d["pixel_moving"]) / max(1 - mf, 1e-12)

    def rel(k: str, higher_better: bool = False) -> float:
        f, z = res["flow"][k], res["zero"][k]
        return (f - z) / z if not higher_better else (f - z) / max(1 - z, 1e-12)

    summary = {
        "video": str(args.video), "n_frames": n, "input_size": list(args.size), "arch": model.arch,
        "parameters": count_parameters(model),
        "split": {"fit": [0, n_fit], "val": [n_fit, n_train], "test": [n_train, n]},
        "train": {"epochs_run": len(history["epochs"]), "steps_per_epoch": args.steps, "batch_size": args.batch_size,
                  "lr": args.lr, "best_epoch": history["best_epoch"], "best_val_loss": history["best_val_loss"],
                  "zero_flow_val_loss": history["zero_flow_val"]["total"],
                  "val_loss_per_epoch": [e["val"]["total"] for e in history["epochs"]],
                  "train_loss_per_epoch": [e["train"]["total"] for e in history["epochs"]],
                  "train_seconds": history["train_seconds"]},
        "test": {"windows": int(len(idx)), "pairs": int(len(idx)) * (model.n_frames - 1),
                 "motion_threshold": args.motion_threshold,
                 "identical_pixel_fraction": res["frames"]["identical_fraction"],
                 "flow": res["flow"], "zero_flow": res["zero"],
                 "relative_change": {
                     "loss_total": rel("loss_total"), "loss_pixel": rel("loss_pixel"), "loss_ssim": rel("loss_ssim"),
                     "pixel": rel("pixel"), "l1": rel("l1"), "pixel_moving": rel("pixel_moving"),
                     "pixel_static": rel("pixel_static"),
                     "l1_moving": rel("l1_moving"),
                     "ssim_dissimilarity": (res["zero"]["ssim"] - res["flow"]["ssim"]) / (1 - res["zero"]["ssim"]),
                 }},
        "cpu_seconds": time.process_time() - cpu0, "train_cpu_seconds": train_cpu,
        "wall_seconds": time.perf_counter() - wall0, "decode_seconds": decode_s, "threads": args.threads,
        "overrides": overrides,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    fig_path = args.figure or args.out.with_suffix(".png")
    figure(worst, fig_path, f"{args.video.name}, test pair with the most motion ({model.arch}, "
                            f"{args.size[0]}x{args.size[1]})")
    f, z = res["flow"], res["zero"]
    print(f"test ({len(idx)} windows): loss {f['loss_total']:.4f} vs zero flow {z['loss_total']:.4f} "
          f"({100 * rel('loss_total'):+.1f} %)")
    print(f"  full-res Charbonnier {f['pixel']:.5f} vs {z['pixel']:.5f} ({100 * rel('pixel'):+.1f} %); "
          f"moving pixels {f['pixel_moving']:.4f} vs {z['pixel_moving']:.4f} ({100 * rel('pixel_moving'):+.1f} %)")
    print(f"  static pixels {f['pixel_static']:.5f} vs {z['pixel_static']:.5f}; identical in both frames: "
          f"{100 * res['frames']['identical_fraction']:.1f} % of pixels")
    print(f"  L1 {f['l1']:.5f} vs {z['l1']:.5f}; moving {f['l1_moving']:.4f} vs {z['l1_moving']:.4f}")
    print(f"  SSIM {f['ssim']:.4f} vs {z['ssim']:.4f}")
    print(f"CPU {summary['cpu_seconds']:.0f} s, wall {summary['wall_seconds']:.0f} s; wrote {args.out}, {fig_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
