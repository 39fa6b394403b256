"""Per-spot linear probe: logistic regression on embeddings for spot-level labels (expression
clusters, pathologist regions)."""

from __future__ import annotations

import numpy as np


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, c: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Fit a multinomial logistic regression on L2-normalised embeddings; returns the class
    probabilities of ``test_x`` ``(n_test, n_classes)`` in ``np.unique(train_y)`` order."""
    from sklearn.linear_model import LogisticRegression

    def norm(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    clf.fit(norm(train_x), np.asarray(train_y))
    return clf.predict_proba(norm(test_x))
