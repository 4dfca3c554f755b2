"""Video probing and frame-exact chunk decoding."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sipec_models.io.video import VideoError, file_checksum, iter_frames, probe, read_frames


def test_probe_small_video(small_video):
    info = probe(small_video)
    assert (info.n_frames, info.width, info.height) == (60, 64, 64)
    assert info.fps == pytest.approx(25.0)
    assert info.codec == "h264"
    assert info.seek_exact


def test_probe_counts_frames_when_asked(small_video):
    info = probe(small_video, count=True)
    assert info.counted and info.n_frames == 60


@pytest.mark.parametrize("start,stop,halo", [(0, 10, 0), (27, 33, 2), (50, 60, 5), (24, 26, 3), (59, 60, 0)])
def test_chunks_are_frame_exact(small_video, start, stop, halo):
    info = probe(small_video)
    everything = np.stack(list(iter_frames(small_video, gray=True, info=info)))
    frames, first = read_frames(small_video, start, stop, halo=halo, gray=True, info=info)
    assert first == max(0, start - halo)
    assert np.array_equal(frames, everything[first:min(60, stop + halo)])


def test_rgb_and_grey_shapes(small_video):
    rgb, _ = read_frames(small_video, 5, 8)
    grey, _ = read_frames(small_video, 5, 8, gray=True)
    assert rgb.shape == (3, 64, 64, 3) and grey.shape == (3, 64, 64)
    assert rgb.dtype == grey.dtype == np.uint8


def test_missing_file_is_named(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        probe(tmp_path / "nope.mp4")


def test_garbage_file_is_named(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoError, match="bad.mp4"):
        probe(bad)


def test_truncated_file_counts_what_decodes(small_video, tmp_path):
    truncated = tmp_path / "truncated.mp4"
    data = small_video.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    try:
        info = probe(truncated)
    except VideoError as exc:  # a cut that loses the index is reported, naming the file
        assert "truncated.mp4" in str(exc)
        return
    assert info.n_frames < 60
    frames, _ = read_frames(truncated, 0, info.n_frames, gray=True, info=info)
    assert len(frames) == info.n_frames


def test_checksum_changes_with_content(small_video, tmp_path):
    copy = tmp_path / "copy.mp4"
    shutil.copy(small_video, copy)
    assert file_checksum(copy) == file_checksum(small_video)
    with open(copy, "ab") as f:
        f.write(b"x")
    assert file_checksum(copy) != file_checksum(small_video)


@pytest.mark.realdata
def test_real_video_seek_check(shared_data):
    """dlc_openfield's video marks frames as keyframes that do not decode alone: reads fall back to
    sequential decoding and stay exact; the flies video seeks exactly."""
    odd = shared_data / "dlc_openfield/videos/m3v1mp4.mp4"
    info = probe(odd)
    assert not info.seek_exact
    everything = np.stack(list(iter_frames(odd, 0, 320, gray=True, info=info)))
    frames, first = read_frames(odd, 290, 300, halo=3, gray=True, info=info)
    assert np.array_equal(frames, everything[287:303])
    flies = shared_data / "sleap_flies/clip.mp4"
    info = probe(flies)
    assert info.seek_exact and info.n_frames == 1500
    everything = np.stack(list(iter_frames(flies, 240, 260, gray=True, info=info)))
    frames, _ = read_frames(flies, 250, 255, gray=True, info=info)
    assert np.array_equal(frames, everything[10:15])
