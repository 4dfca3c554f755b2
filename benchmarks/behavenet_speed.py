"""CPU (or GPU) speed of BehaveNet: inference frames/s (and training crops/s) and peak memory.

What is timed: :meth:`~sipec_models.training.behavenet.BehaveNetModel.predict_proba` on ``--frames`` crops of
one animal in time order (one sequence): conversion of the uint8 crops to tensors, the frame network in
batches of ``infer.batch_size``, the temporal network's windows over [t-n, t+n], and, with
``infer.flip_average``, the same for each crop's mirror image. Reading crops from Zarr and writing tables are
not included (``benchmarks/throughput.py`` measures the I/O side). The networks have the architecture of the
configuration and untrained weights: inference time does not depend on the weights' values, so no checkpoint
is needed. The crops are random uint8 images at the network's input side (no resizing).

Configurations (``--configs``):

* ``default``: ``config/models/behavenet.yaml`` as it is (SIPEC's shortened Xception on 64 px grey crops,
  n = 10), the network of the demo and the workflow's default.
* ``rodent_clips``: the recommended configuration of ``benchmarks/rodent_clips_behavenet.py``
  (``DEFAULT_OVERRIDES``: ImageNet EfficientNet-Lite0 on 192 px grey crops, n = 7, mirror-image averaging on).
  It is timed with ``infer.flip_average`` on and off; their ratio (within each run) is the cost of the
  mirror-image average.

``--train-steps N`` adds rows ``train``: N frame-network training steps (:func:`measure_train`: a batch of
``frame_train.batch_size`` random crops, forward pass, focal loss, backward pass, gradient clipping, Adam; no
data loading or augmentation), reported as crops per second of training.

Each measurement runs in a fresh subprocess (so its peak resident memory is its own) with ``--threads`` torch
threads; medians of ``--repeats`` runs. Output: one row per (allocator, configuration, mirror average,
threads): frames/s, ms per frame, peak RSS (MiB).

``--allocator``: ``keep`` (default) is what the ``sipec`` command does
(:func:`sipec_models.runtime.keep_freed_memory`: glibc's ``malloc`` keeps freed memory for the next batch);
``default`` leaves glibc's defaults, under which large activations are mapped fresh from the kernel at every
batch. Both (``--allocator keep default``) print their ratio within each run.

    python benchmarks/behavenet_speed.py                                   # both configurations, 1 and 2 threads
    python benchmarks/behavenet_speed.py --configs default --threads 1 --frames 2000
    python benchmarks/behavenet_speed.py --allocator keep default --threads 1   # the allocator's effect
    python benchmarks/behavenet_speed.py --allocator keep default --train-steps 10 \
        --out results/benchmarks/behavenet_speed.json                   # the README's table (about 30 min)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEHAVIOURS = 7  # output classes; their number does not change the cost measurably


def config_overrides(name: str) -> list[str]:
    """The Hydra overrides of a named configuration (see the module docstring)."""
    if name == "default":
        return []
    if name == "rodent_clips":
        if str(REPO / "benchmarks") not in sys.path:
            sys.path.insert(0, str(REPO / "benchmarks"))
        from rodent_clips_behavenet import DEFAULT_OVERRIDES

        return list(DEFAULT_OVERRIDES)
    raise ValueError(f"unknown configuration {name!r}: use default or rodent_clips")


def _row(config: str, cfg, threads: int, batch_size: int, device: str) -> dict:
    """The fields every measurement reports: what was timed, and the peak RSS (MiB) of this process so far."""
    return {"config": config, "threads": threads, "crop_size": int(cfg["data"]["crop_size"]),
            "backbone": str(cfg["frame_net"].get("backbone", "xception")),
            "half_window": int(cfg["tcn"]["half_window"]), "batch_size": batch_size, "device": device,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _sync(device: str) -> None:
    """Wait for queued GPU work, so that the clock measures it (nothing to wait for on the CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure(config: str, flip_average: bool, threads: int, frames: int, device: str = "cpu",
            overrides: list[str] | None = None) -> dict:
    """One measurement in this process: frames/s of ``predict_proba`` and peak RSS (MiB)."""
    import numpy as np
    import torch

    from sipec_models.training.behavenet import BehaveNetModel, build_frame_net, build_tcn, motion_width
    from sipec_models.training.config import load_model_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_model_config("behavenet", config_overrides(config) + list(overrides or [])
                            + [f"infer.flip_average={str(flip_average).lower()}"])
    if motion_width(cfg):
        raise ValueError("tcn.motion_input is not benchmarked here (the motion features cost nothing next to the "
                         "networks)")
    frame_net = build_frame_net(cfg, BEHAVIOURS, load_pretrained=False)
    tcn = build_tcn(cfg, frame_net.num_features, BEHAVIOURS)
    model = BehaveNetModel(frame_net, tcn, [f"b{k}" for k in range(BEHAVIOURS)], cfg).to(device)
    side = int(cfg["data"]["crop_size"])
    shape = (frames, side, side, 3) if cfg["data"]["rgb"] else (frames, side, side)
    crops = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    model.predict_proba(crops[: min(frames, 2 * int(cfg["infer"]["batch_size"]))])  # warm-up (allocator, kernels)
    _sync(device)
    t0 = time.perf_counter()
    p = model.predict_proba(crops)
    _sync(device)
    seconds = time.perf_counter() - t0
    if p.shape != (frames, BEHAVIOURS) or not np.isfinite(p).all():
        raise RuntimeError(f"unexpected output {p.shape} (or non-finite values) for {frames} frames")
    return {**_row(config, cfg, threads, int(cfg["infer"]["batch_size"]), device), "flip_average": flip_average,
            "frames": frames, "seconds": seconds, "fps": frames / seconds}


def measure_train(config: str, threads: int, steps: int, device: str = "cpu",
                  overrides: list[str] | None = None) -> dict:
    """Training steps of the frame network in this process: frames/s (crops per second of training), peak RSS.

    One step: forward pass of a ``frame_train.batch_size`` batch of random crops, focal loss, backward pass,
    gradient clipping and an Adam update (the work of one step of frame-network training, without data
    loading and augmentation). The first step is a warm-up; the median over the other ``steps`` is timed.
    """
    import numpy as np
    import torch

    from sipec_models.training.behavenet import behaviour_loss, build_frame_net
    from sipec_models.training.config import load_model_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_model_config("behavenet", config_overrides(config) + list(overrides or []))
    net = build_frame_net(cfg, BEHAVIOURS, load_pretrained=False).to(device).train()
    ft = cfg["frame_train"]
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=float(ft["lr"]))
    side, batch = int(cfg["data"]["crop_size"]), int(ft["batch_size"])
    x = torch.rand(batch, 3 if cfg["data"]["rgb"] else 1, side, side, device=device)
    y = torch.randint(0, BEHAVIOURS, (batch,), device=device)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = behaviour_loss(net(x), y, False, float(cfg["loss"]["gamma"]), float(cfg["loss"]["alpha"]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, float(ft["clip_norm"]))
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[1:]))
    return {**_row(config, cfg, threads, batch, device), "flip_average": False, "frames": steps * batch,
            "seconds_per_step": step_s, "fps": batch / step_s}


def run_child(kind: str, config: str, flip_average: bool, threads: int, frames: int, device: str, overrides: list[str],
              allocator: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, config, str(int(flip_average)), str(threads), str(frames), device,
         allocator] + [f"--override={o}" for o in overrides],
        check=True, capture_output=True, text=True, cwd=REPO,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["default", "rodent_clips"],
                        choices=["default", "rodent_clips"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, min(2, os.cpu_count() or 1)])
    parser.add_argument("--frames", type=int, default=1000, help="crops per measurement (default 1000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--override", action="append", default=[],
                        help="Hydra override added to every configuration, e.g. infer.batch_size=16 (repeatable)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON")
    parser.add_argument("--allocator", nargs="+", default=["keep"], choices=["keep", "default"],
                        help="keep: glibc keeps freed memory (what `sipec` does; default); default: glibc's defaults")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="also time this many frame-network training steps per measurement (rows 'train')")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, config, flip, threads, frames, device, allocator = args.child
        if allocator == "keep":
            from sipec_models.runtime import keep_freed_memory

            if not keep_freed_memory():
                raise SystemExit("--allocator keep: the C library is not glibc, or SIPEC_KEEP_FREED_MEMORY=0 is set")
        if kind == "train":
            row = measure_train(config, int(threads), int(frames), device, args.override)
        else:
            row = measure(config, bool(int(flip)), int(threads), int(frames), device, args.override)
        print(json.dumps({**row, "allocator": allocator, "kind": kind}))
        return 0
    if args.frames < 1 or args.repeats < 1 or min(args.threads) < 1 or args.train_steps < 0:
        parser.error("--frames, --repeats and --threads must be positive, --train-steps not negative")
    rows = []
    allocators = list(dict.fromkeys(args.allocator))
    kinds = ["infer"] + (["train"] if args.train_steps else [])
    for kind, config in ((k, c) for k in kinds for c in args.configs):
        flips = [True, False] if config == "rodent_clips" and kind == "infer" else [False]
        n = args.frames if kind == "infer" else args.train_steps
        for threads in dict.fromkeys(args.threads):
            runs = [{(a, f): run_child(kind, config, f, threads, n, args.device, args.override, a)
                     for a in allocators for f in flips} for _ in range(args.repeats)]
            for a in allocators:
                for f in flips:
                    r = runs[0][a, f]
                    row = {k: r[k] for k in ("kind", "allocator", "config", "backbone", "crop_size", "half_window",
                                             "batch_size", "flip_average", "threads", "frames", "device")}
                    row.update({"fps_median": statistics.median(run[a, f]["fps"] for run in runs),
                                "fps_runs": [round(run[a, f]["fps"], 1) for run in runs],
                                "peak_rss_mib_median": statistics.median(run[a, f]["peak_rss_mib"] for run in runs),
                                "repeats": args.repeats})
                    notes = []
                    if f and (a, False) in runs[0]:
                        row["time_ratio_mirror_on_over_off"] = statistics.median(
                            run[a, False]["fps"] / run[a, True]["fps"] for run in runs)
                        notes.append(f"time x{row['time_ratio_mirror_on_over_off']:.2f} of mirror off")
                    if a == "keep" and ("default", f) in runs[0]:
                        row["speedup_over_default_allocator"] = statistics.median(
                            run["keep", f]["fps"] / run["default", f]["fps"] for run in runs)
                        notes.append(f"x{row['speedup_over_default_allocator']:.2f} the default allocator's frames/s")
                    rows.append(row)
                    mirror = ("on " if f else "off") if kind == "infer" else "-  "
                    print(f"{kind:<6}{a:<8} {config:<13} {row['backbone']:<18} {row['crop_size']:>4} px  batch "
                          f"{row['batch_size']:>3}  mirror avg {mirror}  {threads} thr  "
                          f"{row['fps_median']:8.1f} frames/s ({1000 / row['fps_median']:6.2f} ms/frame)  peak "
                          f"{row['peak_rss_mib_median']:6.0f} MiB" + "".join(f"; {n}" for n in notes), flush=True)
    print(f"(medians of {args.repeats} runs of {args.frames} frames each" +
          (f" and of {args.train_steps} training steps" if args.train_steps else "") +
          f", device {args.device}; ratios are taken within each run; train frames/s = crops per second of "
          "frame-network training)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
