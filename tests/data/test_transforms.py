"""The HED stain jitter against scikit-image's colour deconvolution (``skimage.color``)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import hed2rgb, hed_from_rgb, rgb2hed, rgb_from_hed

from histoxmodal.data.transforms import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    Augment,
    hed_jitter,
    hed_shift,
    hed_to_rgb,
    rgb_to_hed,
)

#: skimage's optical densities are natural-log densities divided by this (``-log(1e-6)``).
SK_SCALE = np.log(1e6)
ALPHA = np.array([1.1, 0.9, 1.05])
BETA = np.array([0.05, -0.03, 0.02])  # natural-log units; skimage's HED: BETA / SK_SCALE


@pytest.fixture(scope="module")
def he_image(data_dir):
    """A real H&E crop (mouse brain, 1717 x 950) from the shared data."""
    from PIL import Image

    img = np.asarray(Image.open(data_dir / "visium" / "squidpy" / "test_img.jpg").convert("RGB"))
    assert img.shape == (1717, 950, 3)
    return img


def _stain_image(seed=0, n=(64, 64)):
    """uint8 RGB made in skimage's HED space from non-negative H, E and DAB amounts."""
    rng = np.random.default_rng(seed)
    hed = rng.uniform(0, 1, (*n, 3)) * np.array([0.08, 0.06, 0.02])
    return np.round(hed2rgb(hed) * 255).astype(np.uint8)


def test_stain_matrices_are_skimages():
    np.testing.assert_allclose(RGB_FROM_HED, rgb_from_hed, rtol=1e-6)
    np.testing.assert_allclose(HED_FROM_RGB, hed_from_rgb, rtol=1e-6)
    # Ruifrok & Johnston's published vectors, rows H, E, DAB (not renormalized, as skimage)
    want = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]
    np.testing.assert_allclose(RGB_FROM_HED, want, rtol=1e-6)
    np.testing.assert_allclose(HED_FROM_RGB @ RGB_FROM_HED, np.eye(3), atol=1e-6)


def test_zero_jitter_reproduces_every_colour_and_a_real_image(he_image):
    v = np.r_[np.arange(0, 256, 3), 255]  # 87 levels per channel, black and white included
    cube = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 1, 3).astype(np.uint8)
    assert len(cube) == 87**3
    for img in (cube, he_image):
        np.testing.assert_array_equal(hed_to_rgb(rgb_to_hed(img), img.shape), img)
        np.testing.assert_array_equal(hed_shift(img, np.ones(3), np.zeros(3)), img)
    # skimage's own round trip is lossy where it clips negative densities (a third of this image)
    sk = np.round(hed2rgb(rgb2hed(he_image)) * 255).astype(np.uint8)
    outside = ~(rgb2hed(he_image) > 0).all(-1)
    assert 0.30 < outside.mean() < 0.40  # measured 0.34
    assert np.abs(sk.astype(int) - he_image)[outside].max() > 10


def test_densities_are_skimages_in_natural_log_units(he_image):
    sk = rgb2hed(he_image)
    ours = rgb_to_hed(he_image).reshape(he_image.shape) / SK_SCALE
    # compare where skimage does not clip, and away from black where the two OD offsets differ
    lo = 32
    keep = (sk > 0).all(-1) & (he_image.min(-1) >= lo)
    assert keep.mean() > 0.5
    # our -ln((v+1)/256) vs skimage's -ln(v/255), through the inverse stain matrix
    levels = np.arange(lo, 256)
    d_od = np.abs(np.log((levels + 1) / 256) - np.log(levels / 255)).max()
    bound = d_od * np.abs(hed_from_rgb).sum(0).max() / SK_SCALE + 1e-6
    assert bound < 0.006  # about 10 % of a typical haematoxylin density (0.05)
    assert np.abs(ours - sk)[keep].max() <= bound


@pytest.mark.parametrize("source", ["stains", "he"])
def test_known_jitter_equals_the_same_jitter_in_skimage_hed_space(source, he_image):
    img = _stain_image() if source == "stains" else he_image
    ours = hed_shift(img, ALPHA, BETA).astype(int)
    hed = rgb2hed(img)
    sk = np.round(hed2rgb(hed * ALPHA + BETA / SK_SCALE) * 255).astype(int)
    # skimage clips negative densities and floors black at 1e-6: compare where neither applies
    keep = (hed > 0).all(-1) & (img.min(-1) >= 1)
    assert keep.mean() > (0.99 if source == "stains" else 0.6)
    diff = np.abs(ours - sk)[keep]
    assert diff.max() <= 1  # uint8 rounding
    assert (diff == 0).mean() > 0.9
    # and the jitter moved the colours: it is not the identity
    assert np.abs(ours - img)[keep].mean() > 5


def test_hed_jitter_draws_scale_then_shift_from_the_rng(he_image):
    img = he_image[:64, :64]
    sigma = 0.1
    draws = np.random.default_rng(7)
    alpha = draws.uniform(1 - sigma, 1 + sigma, 3)
    beta = draws.uniform(-sigma, sigma, 3)
    want = hed_shift(img, alpha, beta)
    np.testing.assert_array_equal(hed_jitter(img, np.random.default_rng(7), sigma), want)
    aug = Augment(flips=False, rot90=False, hed_sigma=sigma)
    np.testing.assert_array_equal(aug(img, np.random.default_rng(7)), want)
