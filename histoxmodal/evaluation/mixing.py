"""How well embeddings mix batches: kNN batch purity (lower = better mixed)."""

from __future__ import annotations

import numpy as np


def knn_batch_purity(embeddings: np.ndarray, batch: np.ndarray, *, k: int = 15) -> float:
    """Mean fraction of each point's ``k`` nearest neighbours (cosine) from its own batch,
    divided by what random neighbours would give (1.0 = perfectly mixed, higher = batches
    separate).

    Parameters
    ----------
    embeddings
        ``(n, d)``.
    batch
        ``(n,)`` batch labels.
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(embeddings, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    batch = np.asarray(batch)
    k = min(k, len(x) - 1)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    same = (batch[idx] == batch[:, None]).mean(axis=1)
    _, counts = np.unique(batch, return_inverse=False, return_counts=True)
    frac = counts / counts.sum()
    expected = float((frac**2).sum())
    return float(same.mean() / expected)
