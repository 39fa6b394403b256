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


def ilisi(embeddings: np.ndarray, batch: np.ndarray, *, perplexity: float = 30.0) -> float:
    """Median integration LISI (Korsunsky et al. 2019, harmonypy's implementation): the
    effective number of batches in each point's neighbourhood (1 = separated, n_batches = mixed)."""
    import pandas as pd
    from harmonypy import compute_lisi

    meta = pd.DataFrame({"batch": np.asarray(batch).astype(str)})
    x = np.asarray(embeddings, np.float64)
    perplexity = min(perplexity, (len(x) - 1) / 3)
    return float(np.median(compute_lisi(x, meta, ["batch"], perplexity=perplexity)))


def batch_silhouette(embeddings: np.ndarray, batch: np.ndarray) -> float:
    """scIB's batch score: ``1 - |silhouette|`` per point with batches as clusters, averaged
    (1 = mixed, 0 = separated)."""
    from sklearn.metrics import silhouette_samples

    s = silhouette_samples(np.asarray(embeddings, np.float64), np.asarray(batch), metric="cosine")
    return float(np.mean(1.0 - np.abs(s)))


def batch_mixing(embeddings: np.ndarray, batch: np.ndarray, *, k: int = 15) -> dict[str, float]:
    """iLISI, batch silhouette and kNN batch purity in one dict."""
    return {
        "ilisi": ilisi(embeddings, batch),
        "batch_silhouette": batch_silhouette(embeddings, batch),
        "knn_batch_purity": knn_batch_purity(embeddings, batch, k=k),
    }


def scib_batch_metrics(
    embeddings: np.ndarray, batch: np.ndarray, labels: np.ndarray, *, k: int = 90
) -> dict[str, float]:
    """scIB's batch-correction metrics from scib-metrics itself (the library, not a
    re-implementation): silhouette batch (1 = mixed), iLISI (scaled to [0, 1], 1 = mixed) and
    graph connectivity of each label's kNN subgraph (1 = every label connected), on a
    ``k``-nearest-neighbour graph (scikit-learn, exact; ``k`` = scib-metrics' default 90, or
    fewer on small sets).

    Parameters
    ----------
    embeddings
        ``(n, d)``.
    batch
        ``(n,)`` batch of each point (sample, patient).
    labels
        ``(n,)`` biological labels the metrics condition on (cell type, region, cluster).
    """
    from histoxmodal.deps import require_extra

    require_extra("metrics", "scIB batch metrics")
    import scib_metrics
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(embeddings, np.float32)
    batch, labels = np.asarray(batch).astype(str), np.asarray(labels).astype(str)
    n_neighbors = int(min(k, len(x) - 1))
    dist, idx = NearestNeighbors(n_neighbors=n_neighbors).fit(x).kneighbors(x)
    nn = NeighborsResults(indices=idx, distances=dist)
    return {
        "silhouette_batch": float(scib_metrics.silhouette_batch(x, labels, batch)),
        "ilisi": float(scib_metrics.ilisi_knn(nn, batch)),
        "graph_connectivity": float(scib_metrics.graph_connectivity(nn, labels)),
    }
