"""Ridge head and expression metrics against scikit-learn and SciPy."""

from __future__ import annotations

import numpy as np
import pytest

from histoxmodal.evaluation.expression import expression_metrics, top_variable_genes
from histoxmodal.heads.expression import RidgeHead


def _data(n=200, d=12, g=5, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((d, g))
    y = x @ w + 3.0 + noise * rng.standard_normal((n, g))
    return x, y


def test_ridge_equals_sklearn_at_the_chosen_alpha():
    from sklearn.linear_model import Ridge

    x, y = _data()
    head = RidgeHead(alphas=(0.1, 1.0, 10.0, 100.0)).fit(x, y)
    ref = Ridge(alpha=head.alpha_).fit(x, y)
    np.testing.assert_allclose(head.predict(x), ref.predict(x), rtol=1e-8, atol=1e-8)
    assert head.alpha_ in (0.1, 1.0, 10.0)  # a heavy penalty loses on clean linear data
    assert head.cv_mse_[100.0] > head.cv_mse_[head.alpha_]


def test_ridge_with_pca_and_grouped_folds():
    x, y = _data(d=40)
    groups = np.repeat(["a", "b", "c", "d"], 50)
    head = RidgeHead(pca=8, cv=4).fit(x, y, groups=groups)
    assert head.components_.shape == (40, 8) and head.predict(x).shape == y.shape


def test_metrics_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    _, y = _data(g=4)
    pred = y + np.random.default_rng(1).standard_normal(y.shape)
    genes = ["A", "B", "C", "D"]
    samples = np.repeat(["s1", "s2"], 100)
    m = expression_metrics(y, pred, genes, samples=samples)
    want = np.mean([pearsonr(y[:, j], pred[:, j])[0] for j in range(4)])
    assert m["pooled"]["pearson"] == pytest.approx(want)
    want_s = np.mean([spearmanr(y[:, j], pred[:, j])[0] for j in range(4)])
    assert m["pooled"]["spearman"] == pytest.approx(want_s)
    s1 = np.mean([pearsonr(y[:100, j], pred[:100, j])[0] for j in range(4)])
    assert m["per_sample"]["s1"]["pearson"] == pytest.approx(s1)
    assert m["pooled"]["mse"] == pytest.approx(((y - pred) ** 2).mean())
    assert top_variable_genes(
        np.c_[np.zeros(5), np.arange(5), 2 * np.arange(5)], genes[:3], n=2
    ) == ["B", "C"]


def test_retrieval_head_matches_a_loop():
    from histoxmodal.heads.expression import RetrievalHead

    rng = np.random.default_rng(2)
    keys, values = rng.standard_normal((60, 6)), rng.standard_normal((60, 3))
    queries = rng.standard_normal((7, 6))
    got = RetrievalHead(k=5, temperature=0.2).fit(keys, values).predict(queries, chunk=3)
    kn = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    for i, q in enumerate(queries):
        sim = kn @ (q / np.linalg.norm(q))
        top = np.argsort(-sim)[:5]
        w = np.exp(sim[top] / 0.2)
        np.testing.assert_allclose(got[i], (w / w.sum()) @ values[top], rtol=1e-5)
    mean = RetrievalHead(k=60, temperature=None).fit(keys, values).predict(queries)
    np.testing.assert_allclose(mean, np.broadcast_to(values.mean(0), mean.shape))
