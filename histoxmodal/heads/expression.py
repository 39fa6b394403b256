"""Expression prediction from image embeddings: closed-form ridge regression with the penalty
chosen by cross-validation on the training folds (optionally after PCA, as HEST-Benchmark does)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from histoxmodal.errors import ConfigError


def _ridge_path(x: np.ndarray, y: np.ndarray, alphas: np.ndarray):
    """Coefficients for every alpha from one SVD: ``(n_alphas, d, g)``."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    return np.stack([(vt.T * (s / (s**2 + a))) @ uty for a in alphas])


@dataclass
class RidgeHead:
    """Multi-output ridge regression ``Y ~ X`` with an intercept.

    Parameters
    ----------
    alphas
        Penalties tried; the one with the lowest mean squared error over ``cv`` folds of the
        training data (grouped by ``groups`` when given, e.g. samples) is kept.
    pca
        Reduce the embeddings to this many principal components first (fitted on training data).
    cv
        Number of folds.
    """

    alphas: tuple[float, ...] = tuple(np.logspace(-3, 5, 17))
    pca: int | None = None
    cv: int = 5
    alpha_: float = field(default=float("nan"), init=False)
    cv_mse_: dict[float, float] = field(default_factory=dict, init=False)

    def _features(self, x: np.ndarray, fit: bool) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if fit:
            self.x_mean_ = x.mean(axis=0)
        x = x - self.x_mean_
        if self.pca is not None:
            if fit:
                k = min(self.pca, *x.shape)
                _, _, vt = np.linalg.svd(x, full_matrices=False)
                self.components_ = vt[:k].T
            x = x @ self.components_
        return x

    def fit(self, x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None) -> RidgeHead:
        """Choose the penalty by cross-validation, then fit on all of ``x``, ``y``."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if len(x) != len(y):
            raise ConfigError(f"{len(x)} embeddings for {len(y)} expression rows")
        alphas = np.asarray(self.alphas, np.float64)
        n = len(x)
        if groups is not None and len(np.unique(groups)) >= 2:
            uniq = np.unique(groups)
            folds = [np.isin(groups, g) for g in np.array_split(uniq, min(self.cv, len(uniq)))]
        else:
            order = np.random.default_rng(0).permutation(n)
            folds = [np.isin(np.arange(n), f) for f in np.array_split(order, self.cv)]
        err = np.zeros(len(alphas))
        for test in folds:
            tr = ~test
            head = RidgeHead(pca=self.pca)
            xt = head._features(x[tr], fit=True)
            ym = y[tr].mean(axis=0)
            coefs = _ridge_path(xt, y[tr] - ym, alphas)
            xv = head._features(x[test], fit=False)
            for i, c in enumerate(coefs):
                err[i] += ((xv @ c + ym - y[test]) ** 2).sum()
        err /= n * y.shape[1]
        self.cv_mse_ = dict(zip(alphas.tolist(), err.tolist(), strict=True))
        self.alpha_ = float(alphas[int(np.argmin(err))])
        xf = self._features(x, fit=True)
        self.y_mean_ = y.mean(axis=0)
        self.coef_ = _ridge_path(xf, y - self.y_mean_, np.array([self.alpha_]))[0]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n, d)`` embeddings -> ``(n, n_genes)`` predicted expression."""
        return self._features(x, fit=False) @ self.coef_ + self.y_mean_


@dataclass
class RetrievalHead:
    """Retrieval-based expression prediction (BLEEP, Xie et al. 2023): the similarity-weighted
    average of the expression of the ``k`` training spots whose *gene* embeddings are closest to
    the query's *image* embedding.

    Parameters
    ----------
    k
        Neighbours averaged.
    temperature
        Softmax temperature on cosine similarities (``None``: plain mean of the k).
    """

    k: int = 50
    temperature: float | None = 0.1

    def fit(self, gene_embeddings: np.ndarray, expression: np.ndarray) -> RetrievalHead:
        z = np.asarray(gene_embeddings, np.float32)
        self.keys_ = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        self.values_ = np.asarray(expression, np.float64)
        return self

    def predict(self, image_embeddings: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
        q = np.asarray(image_embeddings, np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        k = min(self.k, len(self.keys_))
        out = np.empty((len(q), self.values_.shape[1]))
        for s in range(0, len(q), chunk):
            sim = q[s : s + chunk] @ self.keys_.T
            idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(sim, idx, axis=1).astype(np.float64)
            if self.temperature is None:
                w = np.full_like(top, 1.0 / k)
            else:
                w = np.exp((top - top.max(axis=1, keepdims=True)) / self.temperature)
                w /= w.sum(axis=1, keepdims=True)
            out[s : s + chunk] = np.einsum("nk,nkg->ng", w, self.values_[idx])
        return out
