import numpy as np

from histoxmodal.evaluation.mixing import knn_batch_purity


def test_purity_separated_vs_mixed():
    rng = np.random.default_rng(0)
    batch = np.repeat([0, 1], 100)
    separated = rng.normal(0, 0.1, (200, 5)) + np.where(batch[:, None] == 0, 5.0, -5.0)
    mixed = rng.normal(0, 1.0, (200, 5))
    assert knn_batch_purity(separated, batch, k=10) == 2.0  # all neighbours own batch / 0.5
    assert abs(knn_batch_purity(mixed, batch, k=10) - 1.0) < 0.15
