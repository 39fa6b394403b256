"""The linear probe against scikit-learn's logistic regression."""

from __future__ import annotations

import numpy as np
import pytest

from histoxmodal.errors import ConfigError
from histoxmodal.heads.probe import LinearProbeHead, linear_probe


def _clusters(n=300, k=3, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    y = rng.integers(0, k, n)
    return centres[y] + rng.standard_normal((n, d)), y


def _norm(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k", [2, 3])
def test_linear_probe_equals_sklearn_on_l2_normalized_embeddings(k):
    from sklearn.linear_model import LogisticRegression

    x, y = _clusters(k=k)
    p = linear_probe(x[:200], y[:200], x[200:], c=0.5, seed=1)
    ref = LogisticRegression(C=0.5, max_iter=2000, random_state=1).fit(_norm(x[:200]), y[:200])
    np.testing.assert_allclose(p, ref.predict_proba(_norm(x[200:])), rtol=1e-12, atol=1e-14)
    head = LinearProbeHead(c=0.5, seed=1).fit(x[:200], y[:200])
    np.testing.assert_array_equal(head.predict(x[200:]), ref.predict(_norm(x[200:])))
    # and the probe is good on separable clusters
    assert (head.predict(x[200:]) == y[200:]).mean() > 0.9


def test_linear_probe_head_string_labels_and_save_load(tmp_path):
    x, y = _clusters()
    names = np.array(["stroma", "tumour", "immune"])[y]
    head = LinearProbeHead(c=2.0).fit(x[:200], names[:200])
    assert head.classes_.tolist() == ["immune", "stroma", "tumour"]  # np.unique order
    back = LinearProbeHead.load(head.save(tmp_path / "probe"))
    assert back == head and back.classes_.dtype == head.classes_.dtype
    np.testing.assert_array_equal(back.predict_proba(x[200:]), head.predict_proba(x[200:]))
    np.testing.assert_array_equal(back.predict(x[200:]), head.predict(x[200:]))


def test_linear_probe_input_errors():
    x, y = _clusters(n=20)
    with pytest.raises(ConfigError, match="one class"):
        LinearProbeHead().fit(x, np.zeros(20))
    with pytest.raises(ConfigError, match=r"y has shape \(19,\)"):
        LinearProbeHead().fit(x, y[:19])
    with pytest.raises(ConfigError, match=r"expected \(n, 8\)"):
        LinearProbeHead().fit(x, y).predict(x[:, :3])
