"""Helpers of the pose benchmarks: per-frame instance matching."""

from __future__ import annotations

import numpy as np
import pytest

from sipec_models.metrics import match_instances, take_matched

NAN = np.nan


def test_match_instances_per_frame_with_misses_and_distance_limit():
    truth = np.array([[[0, 0], [100, 0]],          # two animals
                      [[0, 0], [100, 0]],
                      [[0, 0], [NAN, NAN]],         # second animal unlabelled
                      [[0, 0], [100, 0]]], float)
    pred = np.array([[[98, 1], [1, 1], [NAN, NAN]],        # swapped order: matched by distance
                     [[50, 0], [NAN, NAN], [NAN, NAN]],    # one instance half-way: goes to one animal only
                     [[100, 0], [2, 0], [NAN, NAN]],       # extra instance left unmatched
                     [[0, 300], [300, 0], [NAN, NAN]]], float)  # both too far
    idx = match_instances(pred, truth, max_distance=60)
    np.testing.assert_array_equal(idx[[0, 2, 3]], [[1, 0], [1, -1], [-1, -1]])
    assert (idx[1] == 0).sum() == 1 and (idx[1] == -1).sum() == 1
    np.testing.assert_array_equal(match_instances(pred, truth)[3], [0, 1])  # no limit: nearest overall
    got = take_matched(pred, idx)
    np.testing.assert_allclose(got[0], [[1, 1], [98, 1]])
    assert np.isnan(got[3]).all()
    # Works on keypoint arrays too: (T, I, K, 2) -> (T, G, K, 2).
    kp = np.repeat(pred[:, :, None], 3, axis=2)
    assert take_matched(kp, idx).shape == (4, 2, 3, 2)
    with pytest.raises(ValueError, match="positions"):
        match_instances(pred[0], truth)
