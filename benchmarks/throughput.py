"""Throughput of the no-training path: decoding (the I/O floor) versus segmentation + tracking.

For each video: decode frames/s (grey, sequential), segment+track frames/s (classical segmenter
over chunks, chunk-local tracking and stitching, the work of the `segment` and `track` rules
without the Zarr writes), their ratio, and the peak resident memory of each measurement (each
runs in a fresh subprocess). Medians over --repeats runs; the ratio is taken within each run.

    python benchmarks/throughput.py                       # the two default real videos
    python benchmarks/throughput.py --videos my.mp4:3     # path:n_animals
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEFAULT_VIDEOS = [f"{DATA / 'vame_mouse/cropped_video.mp4'}:1", f"{DATA / 'sleap_flies/clip.mp4'}:2"]


def measure(kind: str, video: str, n_animals: int, chunk_size: int) -> dict:
    """One measurement in this process: frames/s and peak RSS (MiB)."""
    import numpy as np

    from sipec_models.inference.ingest import plan_chunks
    from sipec_models.io.video import iter_frames, probe
    from sipec_models.segmentation.classical import ClassicalConfig, estimate_background, segment_chunk
    from sipec_models.tracking import stitch_chunks

    info = probe(video)
    if kind == "decode":
        t0 = time.perf_counter()
        n = sum(1 for _ in iter_frames(video, gray=True, info=info))
        seconds = time.perf_counter() - t0
    else:
        background = estimate_background(video, info=info)
        t0 = time.perf_counter()
        chunks = [segment_chunk(video, c["start"], c["stop"], background, ClassicalConfig(), n_animals=n_animals,
                                n_instances=n_animals, crop_size=64, info=info, progress=False)
                  for c in plan_chunks(info.n_frames, chunk_size)]
        ids = stitch_chunks(chunks, n_animals=n_animals)
        seconds = time.perf_counter() - t0
        n = sum(len(i) for i in ids)
        assert np.concatenate(ids).shape[0] == info.n_frames
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"frames": n, "seconds": seconds, "fps": n / seconds, "peak_rss_mib": peak}


def run_child(kind: str, video: str, n_animals: int, chunk_size: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, video, str(n_animals), str(chunk_size)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", default=DEFAULT_VIDEOS, help="path:n_animals")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, video, n, chunk = args.child
        print(json.dumps(measure(kind, video, int(n), int(chunk))))
        return
    rows = []
    for spec in args.videos:
        video, n_animals = spec.rsplit(":", 1)
        if not Path(video).exists():
            print(f"skip {video}: not found", file=sys.stderr)
            continue
        runs = []
        for _ in range(args.repeats):
            d = run_child("decode", video, int(n_animals), args.chunk_size)
            s = run_child("segment", video, int(n_animals), args.chunk_size)
            runs.append((d, s))
        row = {
            "video": Path(video).name,
            "frames": runs[0][0]["frames"],
            "decode_fps": statistics.median(d["fps"] for d, _ in runs),
            "segment_track_fps": statistics.median(s["fps"] for _, s in runs),
            "ratio_decode_over_segment": statistics.median(d["fps"] / s["fps"] for d, s in runs),
            "decode_peak_mib": statistics.median(d["peak_rss_mib"] for d, _ in runs),
            "segment_peak_mib": statistics.median(s["peak_rss_mib"] for _, s in runs),
            "repeats": args.repeats,
        }
        rows.append(row)
    header = f"{'video':<22}{'frames':>7}{'decode fps':>12}{'seg+track fps':>15}{'ratio':>7}{'peak MiB dec/seg':>19}"
    print(header)
    for r in rows:
        print(f"{r['video']:<22}{r['frames']:>7}{r['decode_fps']:>12.1f}{r['segment_track_fps']:>15.1f}"
              f"{r['ratio_decode_over_segment']:>7.2f}{r['decode_peak_mib']:>10.0f}/{r['segment_peak_mib']:<8.0f}")
    print(f"(medians of {args.repeats} runs; ratio = decode fps / segment+track fps within each run)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
