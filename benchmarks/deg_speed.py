"""DeepEthogram inference speed per preset (fast, medium, slow): frames/s at 256x256, per stage and end to end.

For each preset (``deg_preset=fast|medium|slow``, DeepEthogram Table 2) the
three stages are built from ``config/models/deepethogram.yaml`` with
**untrained, randomly initialised weights**: inference speed does not depend
on the weight values (no stage has data-dependent control flow or early
exits), so no trained checkpoint is needed. The input is ``--frames`` random
uint8 RGB frames of ``--size`` x ``--size`` px already in memory (video
decoding and resizing are not timed; DeepEthogram reads videos sequentially
in separate loader processes).

Pipelines (``--pipeline``):

* ``staged`` (default), the path the workflow runs
  (:mod:`sipec_models.training.deepethogram`):
  1. ``flow``: :func:`sipec_models.training.flow.flows_for_frames`, the flow
     generator over the 11-frame window centred on every frame (edges
     repeated), ``--batch-size`` windows per call, the finest flow upsampled
     to the input size and returned on the CPU: ``(T, 20, H, W)`` float32 px;
  2. ``features``: :func:`sipec_models.training.deg_features.extract_features`,
     the two-stream feature extractor on each frame and its flow stack
     (slow: the 11 RGB frames centred on it), ``--batch-size`` frames per call:
     512 spatial + 512 flow features per frame;
  3. ``sequence``: :func:`sipec_models.training.deg_sequence.sequence_probs`,
     the TGM sequence model over the ``(T, 1024)`` features of the whole clip
     at once (``chunk_length=None``, as the workflow's ``behave`` step).
* ``fused``: DeepEthogram's own inference loop (its ``HiddenTwoStream``: the
  flow generator and both streams run on each batch of sequential frames on
  the device, flows never leave it), then the TGM on the features kept on the
  device. ``--flow-res half`` feeds the flow stream the generator's finest
  output at 1/2 of the input size, as DeepEthogram's code does
  (``flow_classifier(flows[0])``); ``full`` (default) upsamples it to the
  input size as this repository's feature extractor is trained. Stage times
  come from device synchronisations around each model call of every batch.

Timing: one warm-up pass, then ``--repeats`` timed passes; each stage's
seconds and the end-to-end seconds are the medians over the passes, and
``fps = frames / median end-to-end seconds``. CUDA (``--device cuda``):
``torch.backends.cudnn.benchmark = True`` (the warm-up pass absorbs the
algorithm search), ``torch.cuda.synchronize()`` before and after every timed
stage, optional autocast (``--amp bf16|fp16``). Peak memory: CUDA
``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``) since the
preset's models were built; CPU the resident-set high-water mark
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of a fresh process per preset
(``--in-process``: of the whole process so far, so only the first preset's
is its own).

The anchor is DeepEthogram Table 1 (Bohnslav et al. eLife 2021),
Mouse-Ventral1 at 256 x 256: Titan RTX fast 235, medium 128, slow 34
frames/s (GeForce 1080 Ti: 152, 76, 13); ``ratio_to_titan_rtx = fps /
anchor``. A CPU ratio compares different hardware and says only how far a CPU
is from the paper's GPU.

Run from the repository root::

    .venv/bin/python benchmarks/deg_speed.py --threads 1 --presets fast --frames 16 --repeats 1
    .venv/bin/python benchmarks/deg_speed.py --device cuda --threads 8 --presets fast medium slow \
        --out results/benchmarks/deg_speed_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

PRESETS = ("fast", "medium", "slow")
#: DeepEthogram Table 1, Mouse-Ventral1, 256 x 256, inference frames/s on an Nvidia Titan RTX.
ANCHOR_TITAN_RTX = {"fast": 235.0, "medium": 128.0, "slow": 34.0}
#: DeepEthogram Table 1, Mouse-Ventral1, 256 x 256, on an Nvidia GeForce 1080 Ti.
ANCHOR_GTX_1080TI = {"fast": 152.0, "medium": 76.0, "slow": 13.0}
#: Default clip length per preset and device (ours: a CPU pass of each takes tens of seconds with 1-2 threads).
DEFAULT_FRAMES = {"cpu": {"fast": 64, "medium": 32, "slow": 8}, "cuda": {"fast": 1024, "medium": 512, "slow": 256}}
#: Default windows / frames per model call (ours; DeepEthogram sizes batches to the GPU).
DEFAULT_BATCH = {"cpu": 8, "cuda": 32}
#: Behaviours K of the untrained heads (ours; the speed hardly depends on it). DeepEthogram data sets have 2-10.
N_CLASSES = 5
STAGES = ("flow", "features", "sequence")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _n_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def synthetic_frames(n_frames: int, size: int, seed: int = 0) -> np.ndarray:
    """``(n_frames, 3, size, size)`` uint8 random RGB frames (content does not change the speed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n_frames, 3, size, size), generator=g, dtype=torch.uint8).numpy()


def build_models(preset: str, n_classes: int = N_CLASSES, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """Untrained ``(flow generator, feature extractor, TGM sequence model, config)`` of a preset, eval mode, CPU.

    The config is ``load_model_config("deepethogram", ["deg_preset=<preset>"])``; RGB input (``data.rgb``).
    """
    from sipec_models.nets.deg_features import build_feature_extractor
    from sipec_models.nets.flow import build_flow_generator
    from sipec_models.training.config import load_model_config
    from sipec_models.training.deg_sequence import build_sequence_model

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")
    cfg = load_model_config("deepethogram", [f"deg_preset={preset}"])
    torch.manual_seed(seed)
    flow = build_flow_generator(cfg.flow, 3 if bool(cfg.data.rgb) else 1).eval()
    features = build_feature_extractor(cfg.features, n_classes).eval()
    sequence = build_sequence_model(cfg, 2 * features.feature_dim, n_classes).eval()
    return flow, features, sequence, cfg


# --------------------------------------------------------------------------- one pass


def staged_pass(flow, features, sequence, frames: np.ndarray, batch_size: int, device: torch.device,
                amp: str | None = None) -> tuple[dict[str, float], np.ndarray]:
    """One pass of the workflow's path (module docstring, ``staged``): seconds per stage, ``(T, K)`` probabilities."""
    from sipec_models.training.deg_features import extract_features
    from sipec_models.training.deg_sequence import sequence_probs
    from sipec_models.training.flow import flows_for_frames

    seconds: dict[str, float] = {}
    with _autocast(device, amp):
        _sync(device)
        t0 = time.perf_counter()
        flows = flows_for_frames(flow, frames, batch_size=batch_size).numpy()  # (T, 20, H, W) float32, CPU
        _sync(device)
        t1 = time.perf_counter()
        f = extract_features(features, frames, flows, batch_size=batch_size)
        feats = np.concatenate([f["spatial"], f["flow"]], 1)  # (T, 1024)
        _sync(device)
        t2 = time.perf_counter()
        probs = sequence_probs(sequence, feats, chunk_length=None, device=device)
        _sync(device)
        t3 = time.perf_counter()
    seconds.update(flow=t1 - t0, features=t2 - t1, sequence=t3 - t2)
    return seconds, probs


@torch.inference_mode()
def fused_pass(flow, features, sequence, frames: np.ndarray | torch.Tensor, batch_size: int, device: torch.device,
               amp: str | None = None, flow_res: str = "full") -> tuple[dict[str, float], np.ndarray]:
    """One pass of DeepEthogram's inference loop (module docstring, ``fused``): seconds per stage, ``(T, K)`` probs.

    Per batch of ``batch_size`` centre frames, the frames they need (5 either
    side, edges repeated) are copied to the device once; the 11-frame windows,
    the flows and both streams' features are computed there.
    """
    from sipec_models.nets.flow import upsample_flow
    from sipec_models.training.deg_sequence import sequence_probs

    if flow_res not in ("full", "half"):
        raise ValueError(f"flow_res must be 'full' or 'half', got {flow_res!r}")
    T, _, H, W = frames.shape
    n = flow.n_frames
    offsets = torch.arange(n) - (n - 1) // 2  # -5 .. 5
    rgb_offsets = torch.arange(features.n_rgb) - features.n_rgb // 2  # 2D: [0]; slow: -5 .. 5
    host = torch.as_tensor(frames)
    if device.type == "cuda" and not host.is_pinned():
        host = host.pin_memory()  # bench_preset pins once, outside the timed passes
    seconds = dict.fromkeys(STAGES, 0.0)
    feats = torch.empty((T, 2 * features.feature_dim), dtype=torch.float32, device=device)
    lo_off = int(min(offsets.min(), rgb_offsets.min()))
    hi_off = int(max(offsets.max(), rgb_offsets.max()))
    with _autocast(device, amp):
        for i in range(0, T, batch_size):
            _sync(device)
            t0 = time.perf_counter()
            centres = torch.arange(i, min(i + batch_size, T))
            a, b = max(0, i + lo_off), min(T, int(centres[-1]) + hi_off + 1)
            span = host[a:b].to(device, non_blocking=True).float().div_(255.0)  # (b - a, 3, H, W)
            idx = ((centres[:, None] + offsets[None, :]).clamp(0, T - 1) - a).to(device)
            clip = span[idx].transpose(1, 2)  # (B, 3, 11, H, W)
            fl = flow(clip)[0]  # (B, 20, H/2, W/2), px of the half-size grid
            if flow_res == "full":
                fl = upsample_flow(fl, (H, W))
            _sync(device)
            t1 = time.perf_counter()
            ridx = ((centres[:, None] + rgb_offsets[None, :]).clamp(0, T - 1) - a).to(device)
            rgb = span[ridx[:, 0]] if features.n_rgb == 1 else span[ridx].transpose(1, 2)
            fs, ff = features.features(rgb, fl)
            feats[i:i + len(centres), :features.feature_dim] = fs.float()
            feats[i:i + len(centres), features.feature_dim:] = ff.float()
            _sync(device)
            t2 = time.perf_counter()
            seconds["flow"] += t1 - t0
            seconds["features"] += t2 - t1
        t2 = time.perf_counter()
        probs = sequence_probs(sequence, feats, chunk_length=None, device=device)
        _sync(device)
        seconds["sequence"] = time.perf_counter() - t2
    return seconds, probs


# --------------------------------------------------------------------------- one preset


def bench_preset(preset: str, n_frames: int, size: int = 256, batch_size: int | None = None, device: str = "cpu",
                 amp: str | None = None, repeats: int = 3, pipeline: str = "staged", flow_res: str = "full",
                 n_classes: int = N_CLASSES, seed: int = 0) -> dict[str, Any]:
    """Time one preset in this process: a warm-up pass, then ``repeats`` timed passes.

    Args:
        preset: ``fast`` | ``medium`` | ``slow``.
        n_frames: frames of the clip (>= 1).
        size: frame height = width, px (a multiple of the flow generator's size multiple: 8, 32 for medium).
        batch_size: windows / frames per model call (None: 8 on CPU, 32 on CUDA).
        device: ``cpu`` or ``cuda``.
        amp: None, ``bf16`` or ``fp16`` (autocast; CUDA only).
        repeats: timed passes (>= 1).
        pipeline: ``staged`` or ``fused`` (module docstring).
        flow_res: ``full`` or ``half``; ``fused`` only.
        n_classes: behaviours K of the heads.
        seed: weights and frames.

    Returns:
        A JSON-able dict: ``preset``, ``arch``, ``parameters``, settings,
        ``runs`` (seconds per stage and ``total`` of every timed pass),
        ``median_seconds`` (per stage and ``total``), ``fps``, ``stage_fps``,
        ``peak_memory_mib`` with ``peak_memory_kind``, the Table 1 anchors and
        ``ratio_to_titan_rtx``, ``output_shape``.

    Raises:
        ValueError: bad settings (unknown preset/pipeline/amp, size not a valid multiple, CUDA missing, ...).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")
    if pipeline not in ("staged", "fused"):
        raise ValueError(f"pipeline must be 'staged' or 'fused', got {pipeline!r}")
    if pipeline == "staged" and flow_res != "full":
        raise ValueError("--flow-res half needs --pipeline fused (the staged path always upsamples flows to full size)")
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)} or None, got {amp!r}")
    if n_frames < 1 or repeats < 1 or size < 1:
        raise ValueError(f"need frames >= 1, repeats >= 1 and size >= 1, got {n_frames}, {repeats}, {size}")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch.cuda.is_available() is False")
    if amp is not None and dev.type != "cuda":
        raise ValueError("--amp is for CUDA only (CPU autocast is not what DeepEthogram measured)")
    batch_size = DEFAULT_BATCH[dev.type] if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    rss_before = _rss_mib()
    flow, features, sequence, cfg = build_models(preset, n_classes, seed)
    if size % flow.size_multiple:
        raise ValueError(f"preset {preset} ({flow.arch}) needs a frame size that is a multiple of "
                         f"{flow.size_multiple} px, got {size}")
    frames = synthetic_frames(n_frames, size, seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)
    for m in (flow, features, sequence):
        m.to(dev)

    host = torch.from_numpy(frames)  # the fused loop copies sequential frame spans from (pinned) host memory
    if pipeline == "fused" and dev.type == "cuda":
        host = host.pin_memory()

    def one_pass() -> tuple[dict[str, float], np.ndarray]:
        if pipeline == "staged":
            return staged_pass(flow, features, sequence, frames, batch_size, dev, amp)
        return fused_pass(flow, features, sequence, host, batch_size, dev, amp, flow_res)

    _, probs = one_pass()  # warm-up (allocator, cuDNN algorithm search, lazy init)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        secs, probs = one_pass()
        secs["total"] = time.perf_counter() - t0
        runs.append(secs)
    median = {k: statistics.median(r[k] for r in runs) for k in (*STAGES, "total")}
    if dev.type == "cuda":
        peak = {"peak_memory_mib": torch.cuda.max_memory_allocated(dev) / 2 ** 20,
                "peak_memory_reserved_mib": torch.cuda.max_memory_reserved(dev) / 2 ** 20,
                "peak_memory_kind": "cuda max_memory_allocated"}
    else:
        peak = {"peak_memory_mib": _rss_mib(), "rss_before_models_mib": rss_before,
                "peak_memory_kind": "cpu ru_maxrss (process high-water mark)"}
    fps = n_frames / median["total"]
    return {
        "preset": preset,
        "arch": {"flow": flow.arch, "features": features.meta["arch"], "sequence": str(cfg.sequence.arch)},
        "parameters": {"flow": _n_params(flow), "features": _n_params(features), "sequence": _n_params(sequence)},
        "frames": int(n_frames), "size": [int(size), int(size)], "batch_size": batch_size, "n_classes": int(n_classes),
        "device": str(dev), "amp": amp, "pipeline": pipeline, "flow_res": flow_res,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "repeats": int(repeats), "runs": runs, "median_seconds": median, "fps": fps,
        "stage_fps": {k: (n_frames / median[k] if median[k] > 0 else None) for k in STAGES},
        **peak,
        "anchor_fps_titan_rtx": ANCHOR_TITAN_RTX[preset], "anchor_fps_gtx_1080ti": ANCHOR_GTX_1080TI[preset],
        "ratio_to_titan_rtx": fps / ANCHOR_TITAN_RTX[preset],
        "output_shape": list(probs.shape), "output_finite": bool(np.isfinite(probs).all()),
    }


# --------------------------------------------------------------------------- driver


def environment(device: str) -> dict[str, Any]:
    """Torch version, CPU and GPU names, thread counts and the load average (other jobs share the cores)."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "loadavg_1_5_15": list(os.getloadavg()), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available() and torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def _frames_per_preset(presets: Sequence[str], frames: Sequence[int] | None, device: str) -> dict[str, int]:
    kind = torch.device(device).type
    if not frames:
        return {p: DEFAULT_FRAMES.get(kind, DEFAULT_FRAMES["cpu"])[p] for p in presets}
    if len(frames) == 1:
        return {p: int(frames[0]) for p in presets}
    if len(frames) != len(presets):
        raise ValueError(f"--frames takes one value or one per preset ({len(presets)}), got {len(frames)}")
    return {p: int(n) for p, n in zip(presets, frames)}


def _child_argv(args: argparse.Namespace, preset: str, n_frames: int) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--presets", preset, "--frames", str(n_frames),
            "--size", str(args.size), "--device", args.device, "--repeats", str(args.repeats),
            "--pipeline", args.pipeline, "--flow-res", args.flow_res, "--classes", str(args.classes),
            "--seed", str(args.seed)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if args.batch_size is not None:
        argv += ["--batch-size", str(args.batch_size)]
    if args.amp:
        argv += ["--amp", args.amp]
    return argv


def format_table(results: Sequence[dict]) -> str:
    """A plain-text table of :func:`bench_preset` results."""
    head = (f"{'preset':<7} {'device':<6} {'amp':<4} {'thr':>3} {'batch':>5} {'frames':>6} {'flow s':>8} "
            f"{'feat s':>8} {'seq s':>7} {'total s':>8} {'fps':>8} {'peak MiB':>9} {'TitanRTX':>8} {'ratio':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        m = r["median_seconds"]
        lines.append(f"{r['preset']:<7} {r['device']:<6} {r['amp'] or '-':<4} {r['threads']:>3} {r['batch_size']:>5} "
                     f"{r['frames']:>6} {m['flow']:>8.3f} {m['features']:>8.3f} {m['sequence']:>7.3f} "
                     f"{m['total']:>8.3f} {r['fps']:>8.2f} {r['peak_memory_mib']:>9.0f} "
                     f"{r['anchor_fps_titan_rtx']:>8.0f} {r['ratio_to_titan_rtx']:>7.3f}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--frames", type=int, nargs="+", default=None,
                    help="clip length: one value, or one per preset (default: cpu fast 64, medium 32, slow 8; "
                         "cuda 1024, 512, 256)")
    ap.add_argument("--size", type=int, default=256, help="frame height = width, px (DeepEthogram Table 1: 256)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the CPU here has 2 shared cores)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--amp", default=None, choices=sorted(AMP_DTYPES), help="autocast dtype (CUDA only)")
    ap.add_argument("--batch-size", type=int, default=None, help="windows / frames per model call (default: cpu 8, "
                                                                  "cuda 32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes after one warm-up; medians are reported")
    ap.add_argument("--pipeline", default="staged", choices=("staged", "fused"))
    ap.add_argument("--flow-res", default="full", choices=("full", "half"),
                    help="flow-stream input size in the fused pipeline (half: DeepEthogram's code)")
    ap.add_argument("--classes", type=int, default=N_CLASSES, help="behaviours K of the untrained heads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--in-process", action="store_true",
                    help="run every preset in this process (CPU peak memory is then the process high-water mark)")
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/deg_speed.json"), help="JSON results")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    return args


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Benchmark every preset of ``args`` (each in a fresh subprocess unless ``args.in_process``); the JSON dict."""
    torch.set_num_threads(args.threads)
    frames = _frames_per_preset(args.presets, args.frames, args.device)
    t0 = time.perf_counter()
    env = environment(args.device)
    results = []
    for preset in args.presets:
        log(f"{preset}: {frames[preset]} frames at {args.size}x{args.size}, {args.device}, {args.threads} thread(s)")
        if args.in_process:
            r = bench_preset(preset, frames[preset], args.size, args.batch_size, args.device, args.amp, args.repeats,
                             args.pipeline, args.flow_res, args.classes, args.seed)
        else:
            proc = subprocess.run(_child_argv(args, preset, frames[preset]), capture_output=True, text=True,
                                  cwd=str(REPO))
            if proc.returncode:
                raise RuntimeError(f"preset {preset} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["peak_memory_kind"] = r["peak_memory_kind"].replace("process high-water mark",
                                                                  "fresh process per preset")
        log(f"  median {r['median_seconds']['total']:.3f} s -> {r['fps']:.2f} frames/s "
            f"({r['ratio_to_titan_rtx']:.3f} x Titan RTX {r['anchor_fps_titan_rtx']:.0f})")
        results.append(r)
    env["loadavg_1_5_15_end"] = list(os.getloadavg())
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"}
    return {"benchmark": "deg_speed", "config": config, "frames_per_preset": frames, "environment": env,
            "weights": "untrained (random initialisation): speed does not depend on the weight values",
            "input": "random uint8 RGB frames in memory; decoding and resizing not timed",
            "anchor": "DeepEthogram Table 1 (Bohnslav et al. 2021), Mouse-Ventral1 256x256",
            "wall_seconds": time.perf_counter() - t0, "results": results}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry; returns the JSON dict it writes to ``--out`` (child mode: prints one preset's JSON)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        frames = _frames_per_preset(args.presets, args.frames, args.device)
        p = args.presets[0]
        r = bench_preset(p, frames[p], args.size, args.batch_size, args.device, args.amp, args.repeats,
                         args.pipeline, args.flow_res, args.classes, args.seed)
        print(json.dumps(r))
        return r
    summary = run(args)
    print()
    print(format_table(summary["results"]))
    print(f"load average at start / end: {summary['environment']['loadavg_1_5_15']} / "
          f"{summary['environment']['loadavg_1_5_15_end']} on {summary['environment']['cpu_count']} cores")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
