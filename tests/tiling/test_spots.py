"""Spot-centred patches (``tiling/spots.py``): window geometry, border flags and padding, order."""

from __future__ import annotations

import numpy as np

from histoxmodal.io.slide_readers import ArraySlide
from histoxmodal.tiling.spots import patch_windows, spot_patches


def test_spot_patches_flag_and_pad_the_border():
    img = np.zeros((100, 120, 3), np.uint8)
    img[40:60, 50:70] = (200, 0, 0)
    s = ArraySlide(img, mpp=1.0)
    batches = list(spot_patches(s, np.array([[60.0, 50.0], [5.0, 5.0]]), patch_um=20, patch_px=20))
    patches, border = batches[0]
    assert border.tolist() == [False, True]
    assert (patches[0] == (200, 0, 0)).all()  # the red square, centred
    assert (patches[1][:5, :5] == 255).all() and (patches[1][5:, 5:] == 0).all()


def test_windows_are_centred_and_batches_keep_the_spot_order():
    # 112 µm at 0.5 µm/px is a 224 px side; a centre at (300.4, 99.6) starts at (188, -12)
    corners, side = patch_windows(np.array([[300.4, 99.6], [1000.0, 50.0]]), 0.5, 112.0)
    assert side == 224 and corners.tolist() == [[188, -12], [888, -62]]
    # every pixel's value names its own coordinates, so each patch shows where it was read
    h, w = 90, 130
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    centres = np.array([[10 + 7 * i, 10 + 4 * i] for i in range(15)], np.float64)
    slide = ArraySlide(img, mpp=1.0)
    one = list(spot_patches(slide, centres, patch_um=6, patch_px=6, batch_size=4))
    assert [len(p) for p, _ in one] == [4, 4, 4, 3]
    patches = np.concatenate([p for p, _ in one])
    for (cx, cy), p in zip(centres.astype(int), patches, strict=True):
        assert p[0, 0, 0] == cx - 3 and p[0, 0, 1] == cy - 3  # top-left corner = centre - side/2
        assert p[5, 5, 0] == cx + 2 and p[5, 5, 1] == cy + 2
    threaded = spot_patches(slide, centres, patch_um=6, patch_px=6, batch_size=4, workers=3)
    np.testing.assert_array_equal(np.concatenate([p for p, _ in threaded]), patches)
