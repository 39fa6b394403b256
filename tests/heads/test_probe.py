import numpy as np

from histoxmodal.heads.probe import linear_probe


def test_linear_probe_separates_labelled_clusters():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 3
    y = rng.integers(0, 3, 300)
    x = centres[y] + rng.standard_normal((300, 8))
    p = linear_probe(x[:200], y[:200], x[200:])
    assert p.shape == (100, 3) and np.allclose(p.sum(1), 1)
    assert (p.argmax(1) == y[200:]).mean() > 0.9
