"""Hand-crafted patch features and the ridge-into-expression-space retrieval baseline."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")

from histoxmodal.evaluation.baselines import handcrafted_features, ridge_to_expression_space


def test_handcrafted_features_values():
    flat = np.full((2, 16, 16, 3), (200, 100, 150), np.uint8)
    f = handcrafted_features(flat)
    assert f.shape == (2, 35) and f.dtype == np.float32
    np.testing.assert_allclose(f[0, :3], [200, 100, 150])  # RGB means
    np.testing.assert_allclose(f[0, 3:6], 0, atol=1e-6)  # no variation
    np.testing.assert_allclose(f[0, 6:9], [200, 100, 150])  # 10th percentile
    grey_bin = int(150 // (255 / 8))  # mean grey 150 falls in one histogram bin
    assert f[0, 21 + grey_bin] == 1.0 and f[0, 21:29].sum() == pytest.approx(1.0)
    assert f[0, 29] == 0 and f[0, 31] == 0  # no gradient, flat Laplacian
    # darker, nucleus-like pixels raise the haematoxylin-density fractions
    dotted = flat.copy()
    dotted[:, ::4, ::4] = (60, 30, 110)
    assert (handcrafted_features(dotted)[0, 32:] >= f[0, 32:]).all()
    assert handcrafted_features(dotted)[0, 32] > f[0, 32]


def test_ridge_to_expression_space_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    y = x @ rng.normal(size=(6, 20)) + 0.01 * rng.normal(size=(300, 20))
    pred, true = ridge_to_expression_space(x[:200], y[:200], x[200:], y[200:], n_components=5)
    assert pred.shape == true.shape == (100, 5)
    assert np.corrcoef(pred.ravel(), true.ravel())[0, 1] > 0.99
