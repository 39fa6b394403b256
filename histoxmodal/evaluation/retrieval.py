"""Cross-modal retrieval metrics, computed in tiles so memory stays bounded.

The whole-test-set protocol ranks every query against every item: rank = number of items scored
strictly above the query's own positive (0 = retrieved first). Scores are float32 inner products
(use L2-normalized embeddings for cosine similarity). Tiles of ``query_chunk`` x ``item_chunk``
scores are formed with a BLAS matrix product and counted with NumPy, so 100,000 x 100,000
128-d embeddings take tens of seconds and about 200 MB beyond the embeddings, where a full
N x N similarity matrix and its argsort would need ~120 GB.

:func:`in_batch_recall` is the protocol HESCAPE reports: Recall@k inside consecutive, unshuffled
test batches of size B (labelled with B so results compare with its tables).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def retrieval_ranks(
    queries: np.ndarray,
    items: np.ndarray,
    *,
    query_chunk: int = 4096,
    item_chunk: int = 8192,
) -> np.ndarray:
    """Rank of each query's positive (item ``i`` for query ``i``) among all items.

    Parameters
    ----------
    queries, items
        ``(n, d)`` float embeddings; row i of each is a positive pair.

    Returns
    -------
    np.ndarray
        ``(n,)`` int64 ranks, 0-based.
    """
    import torch

    q = torch.as_tensor(np.ascontiguousarray(queries, np.float32))
    it = torch.as_tensor(np.ascontiguousarray(items, np.float32))
    if q.shape != it.shape:
        raise ValueError(
            f"queries {tuple(q.shape)} and items {tuple(it.shape)} must pair up "
            f"row by row (same shape)"
        )
    n = len(q)
    ranks = np.zeros(n, np.int64)
    scores = torch.empty(min(query_chunk, n), min(item_chunk, n), dtype=torch.float32)
    mask = np.empty(scores.shape, bool)
    for i0 in range(0, n, query_chunk):
        qi = q[i0 : i0 + query_chunk]
        p = (qi * it[i0 : i0 + len(qi)]).sum(dim=1).numpy()[:, None]
        rows = np.arange(len(qi))
        for j0 in range(0, n, item_chunk):
            ij = it[j0 : j0 + item_chunk]
            s = scores[: len(qi), : len(ij)]
            torch.mm(qi, ij.T, out=s)
            m = mask[: len(qi), : len(ij)]
            np.greater(s.numpy(), p, out=m)
            # the positive itself never counts, whatever its rounding in this tile
            own = rows + i0 - j0
            inside = (own >= 0) & (own < len(ij))
            m[rows[inside], own[inside]] = False
            ranks[i0 : i0 + len(qi)] += np.count_nonzero(m, axis=1)
    return ranks


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k, mean and median rank (1-based, as papers report) from 0-based ranks."""
    r = np.asarray(ranks)
    out = {f"R@{k}": float(np.mean(r < k)) for k in ks}
    out["mean_rank"] = float(np.mean(r) + 1)
    out["median_rank"] = float(np.median(r) + 1)
    return out


def cross_modal_retrieval(
    image: np.ndarray, gene: np.ndarray, *, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """Whole-test-set retrieval both ways: ``image_to_gene`` and ``gene_to_image``."""
    return {
        "image_to_gene": rank_metrics(retrieval_ranks(image, gene), ks),
        "gene_to_image": rank_metrics(retrieval_ranks(gene, image), ks),
        "n": len(image),
    }


def in_batch_recall(
    image: np.ndarray, gene: np.ndarray, *, batch_size: int, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, object]:
    """HESCAPE's protocol: Recall@k within consecutive test batches of ``batch_size`` (in the
    given order, not shuffled; a last partial batch counts as it is), averaged over queries."""
    n = len(image)
    hits = {f"{d}:R@{k}": 0 for d in ("image_to_gene", "gene_to_image") for k in ks}
    for s in range(0, n, batch_size):
        a, b = image[s : s + batch_size], gene[s : s + batch_size]
        sim = a @ b.T
        for name, m in (("image_to_gene", sim), ("gene_to_image", sim.T)):
            r = (m > np.diag(m)[:, None]).sum(axis=1)
            for k in ks:
                hits[f"{name}:R@{k}"] += int((r < k).sum())
    return {
        "protocol": f"in-batch, B={batch_size}",
        "batch_size": batch_size,
        **{k: v / n for k, v in hits.items()},
    }


def retrieval_chance(n: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """What embeddings unrelated to their partners score on average, in the keys of
    :func:`rank_metrics`: Recall@k is ``min(k, n) / n`` and the mean and median rank (1-based)
    are ``(n + 1) / 2``, the true partner's rank being uniform over ``1..n``."""
    if n < 1:
        raise ValueError(f"n={n}: need at least one query")
    out = {f"R@{k}": min(k, n) / n for k in ks}
    out["mean_rank"] = out["median_rank"] = (n + 1) / 2
    return out


def in_batch_chance(n: int, *, batch_size: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Chance level of :func:`in_batch_recall` in its keys: a query of a batch of ``b`` items
    finds its partner among the top ``k`` with probability ``min(k, b) / b`` (the last batch may
    be partial), averaged over the ``n`` queries."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n={n}, batch_size={batch_size}: both must be at least 1")
    sizes = [min(batch_size, n - s) for s in range(0, n, batch_size)]
    return {
        f"{d}:R@{k}": sum(min(k, b) for b in sizes) / n
        for d in ("image_to_gene", "gene_to_image")
        for k in ks
    }
