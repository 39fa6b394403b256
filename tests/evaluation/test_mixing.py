import numpy as np
import pytest

from histoxmodal.evaluation.mixing import knn_batch_purity


def test_purity_separated_vs_mixed():
    rng = np.random.default_rng(0)
    batch = np.repeat([0, 1], 100)
    separated = rng.normal(0, 0.1, (200, 5)) + np.where(batch[:, None] == 0, 5.0, -5.0)
    mixed = rng.normal(0, 1.0, (200, 5))
    assert knn_batch_purity(separated, batch, k=10) == 2.0  # all neighbours own batch / 0.5
    assert abs(knn_batch_purity(mixed, batch, k=10) - 1.0) < 0.15


def test_harmony_removes_a_batch_shift():
    from histoxmodal.evaluation.harmony import harmony

    rng = np.random.default_rng(1)
    state = rng.integers(0, 3, 300)
    batch = np.repeat([0, 1], 150)
    centres = rng.normal(0, 3, (3, 8))
    x = centres[state] + rng.normal(0, 0.5, (300, 8)) + np.where(batch[:, None] == 1, 2.0, 0.0)
    before = knn_batch_purity(x, batch)
    z = harmony(x, batch)
    after = knn_batch_purity(z, batch)
    assert before > 1.8 and after < 1.3, (before, after)
    # the biological structure survives: neighbours still share the state
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=6).fit(z).kneighbors(z, return_distance=False)[:, 1:]
    assert (state[idx] == state[:, None]).mean() > 0.9


def test_ilisi_and_silhouette_order_mixed_above_separated():
    from histoxmodal.evaluation.mixing import batch_mixing

    rng = np.random.default_rng(2)
    batch = np.repeat([0, 1], 100)
    separated = rng.normal(0, 0.1, (200, 5)) + np.where(batch[:, None] == 0, 5.0, -5.0)
    mixed = rng.normal(0, 1.0, (200, 5))
    s, m = batch_mixing(separated, batch), batch_mixing(mixed, batch)
    assert s["ilisi"] == pytest.approx(1.0, abs=0.01) and m["ilisi"] > 1.7
    assert s["batch_silhouette"] < 0.2 and m["batch_silhouette"] > 0.9
