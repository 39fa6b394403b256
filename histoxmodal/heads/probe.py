"""Per-spot linear probe: logistic regression on embeddings for spot-level labels (expression
clusters, pathologist regions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histoxmodal.errors import ConfigError
from histoxmodal.heads.base import Head, HeadState, decode_labels, encode_labels
from histoxmodal.heads.registry import register_head


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ConfigError(f"x has shape {x.shape}: expected (n, d) embeddings")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@register_head(
    "linear_probe",
    task="classification",
    input="spot embeddings (n, d), L2-normalized inside",
    target="one class label per row (n,)",
    output="class probabilities (n, n_classes)",
    backend="scikit-learn (fit), numpy (predict)",
)
@dataclass
class LinearProbeHead(Head):
    """Multinomial logistic regression on L2-normalized embeddings.

    Fitted with scikit-learn's ``LogisticRegression`` (L2 penalty, lbfgs); the fitted
    coefficients are kept and prediction is numpy, so a saved probe needs no scikit-learn
    object. Two classes: the sigmoid of one decision value, as scikit-learn; more: the softmax.

    Parameters
    ----------
    c
        Inverse regularisation strength (scikit-learn's ``C``).
    seed
        ``random_state`` of the solver.
    max_iter
        Solver iterations.
    """

    c: float = 1.0
    seed: int = 0
    max_iter: int = 2000

    _fitted_attrs = ("coef_", "intercept_", "classes_")

    def fit(self, x: np.ndarray, y: np.ndarray) -> LinearProbeHead:
        """Fit on ``x`` ``(n, d)`` embeddings and ``y`` ``(n,)`` labels (at least two classes)."""
        from sklearn.linear_model import LogisticRegression

        x, y = _l2(x), np.asarray(y)
        if y.ndim != 1 or len(y) != len(x):
            raise ConfigError(f"y has shape {y.shape}: expected one label per row of x ({len(x)},)")
        if len(np.unique(y)) < 2:
            raise ConfigError(
                f"y has one class ({np.unique(y).tolist()}): a probe needs at least two"
            )
        clf = LogisticRegression(C=self.c, max_iter=self.max_iter, random_state=self.seed)
        clf.fit(x, y)
        self.coef_ = np.asarray(clf.coef_, np.float64)
        self.intercept_ = np.asarray(clf.intercept_, np.float64)
        self.classes_ = clf.classes_
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """``(n, n_coef)`` linear scores, ``n_coef`` 1 for two classes else ``n_classes``."""
        self._require_fitted("predict")
        x = _l2(x)
        if x.shape[1] != self.coef_.shape[1]:
            raise ConfigError(
                f"x has shape {x.shape}: expected (n, {self.coef_.shape[1]}), the embedding size "
                "the probe was fitted on"
            )
        return x @ self.coef_.T + self.intercept_

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` class probabilities, columns in ``classes_`` order."""
        d = self.decision_function(x)
        if len(self.classes_) == 2:
            p = 1.0 / (1.0 + np.exp(-d[:, 0]))
            return np.stack([1 - p, p], axis=1)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` the most probable class of each row (a value of ``classes_``)."""
        return self.classes_[self.predict_proba(x).argmax(axis=1)]

    def _state(self) -> HeadState:
        return HeadState(
            fitted={"classes_": encode_labels(self.classes_)},
            arrays={"coef_": self.coef_, "intercept_": self.intercept_},
        )

    def _restore(self, state: HeadState) -> None:
        self.coef_, self.intercept_ = state.arrays["coef_"], state.arrays["intercept_"]
        self.classes_ = decode_labels(state.fitted["classes_"])


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, c: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Fit a :class:`LinearProbeHead` (multinomial logistic regression on L2-normalized
    embeddings); returns the class probabilities of ``test_x`` ``(n_test, n_classes)`` in
    ``np.unique(train_y)`` order."""
    return LinearProbeHead(c=c, seed=seed).fit(train_x, train_y).predict_proba(test_x)
