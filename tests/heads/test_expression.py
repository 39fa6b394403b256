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


def _nonlinear(n=800, d=16, g=6, noise=0.1, seed=0):
    """y = sin(z) + |z| + noise with z a random projection of x: no linear model fits it."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    z = 2 * x @ (rng.standard_normal((d, g)) / np.sqrt(d))
    return x, np.sin(z) + np.abs(z) + noise * rng.standard_normal((n, g))


def test_mlp_head_beats_ridge_on_a_nonlinear_target():
    from histoxmodal.heads.expression import MLPHead

    x, y = _nonlinear()
    tr, te = slice(0, 500), slice(500, None)
    mlp = MLPHead(seed=0).fit(x[tr], y[tr])
    ridge = RidgeHead().fit(x[tr], y[tr])
    mse_mlp = ((mlp.predict(x[te]) - y[te]) ** 2).mean()
    mse_ridge = ((ridge.predict(x[te]) - y[te]) ** 2).mean()
    # measured over seeds 0-2: ratio 0.12-0.14 (MSE ~0.21 vs ~1.6)
    assert mse_mlp < 0.4 * mse_ridge
    assert 0 <= mlp.best_epoch_ < len(mlp.history_)


def test_mlp_head_close_to_ridge_on_a_linear_target_and_two_layers():
    from histoxmodal.heads.expression import MLPHead

    x, y = _data(n=800, d=16, g=6)
    tr, te = slice(0, 500), slice(500, None)
    mse_ridge = ((RidgeHead().fit(x[tr], y[tr]).predict(x[te]) - y[te]) ** 2).mean()
    for hidden in [(256,), (128, 64)]:
        mlp = MLPHead(hidden=hidden, seed=1).fit(x[tr], y[tr])
        mse_mlp = ((mlp.predict(x[te]) - y[te]) ** 2).mean()
        # ridge is the right model here; the MLP came within 1.4-1.7x of it over seeds 0-2
        assert mse_mlp < 2.0 * mse_ridge
        assert mse_mlp < 0.1 * y[te].var(0).mean()  # still far better than predicting the mean


def test_mlp_head_is_deterministic_and_splits_by_group():
    from histoxmodal.heads.expression import MLPHead

    x, y = _nonlinear(n=200)
    groups = np.repeat(["a", "b", "c", "d", "e"], 40)
    a = MLPHead(seed=3, max_epochs=20).fit(x, y, groups=groups)
    b = MLPHead(seed=3, max_epochs=20).fit(x, y, groups=groups)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    c = MLPHead(seed=4, max_epochs=20).fit(x, y, groups=groups)
    assert not np.allclose(a.predict(x), c.predict(x))
    val = a._split(200, groups)
    # whole groups go to validation: every group is either all in or all out
    assert {val[groups == g].mean() for g in "abcde"} <= {0.0, 1.0} and 0 < val.sum() < 200


def test_mlp_head_shape_errors_name_the_argument():
    from histoxmodal.errors import ConfigError
    from histoxmodal.heads.expression import MLPHead

    x, y = _nonlinear(n=60)
    with pytest.raises(ConfigError, match=r"y has shape \(60,\).*y\[:, None\]"):
        MLPHead().fit(x, y[:, 0])
    with pytest.raises(ConfigError, match="60 embeddings .* 59 expression rows"):
        MLPHead().fit(x, y[:59])
    with pytest.raises(ConfigError, match="before fit"):
        MLPHead().predict(x)
    with pytest.raises(ConfigError, match="hidden="):
        MLPHead(hidden=(8, 8, 8)).fit(x, y)
    head = MLPHead(max_epochs=2).fit(x, y)
    with pytest.raises(ConfigError, match=r"expected \(n, 16\)"):
        head.predict(x[:, :5])
    with pytest.raises(ConfigError, match="groups has 3 entries"):
        MLPHead().fit(x, y, groups=np.arange(3))
