"""Cross-modal retrieval metrics, computed in tiles so memory stays bounded.

The whole-test-set protocol ranks every query against every item: rank = number of items scored
strictly above the query's own positive (0 = retrieved first). Scores are float32 inner products
(use L2-normalized embeddings for cosine similarity). Tiles of ``query_chunk`` x ``item_chunk``
scores are formed with a BLAS matrix product and counted with NumPy, so 100,000 x 100,000
128-d embeddings take tens of seconds and about 200 MB beyond the embeddings, where a full
N x N similarity matrix and its argsort would need ~120 GB.

:func:`in_batch_recall` is the protocol HESCAPE reports: Recall@k inside consecutive, unshuffled
test batches of size B (labelled with B so results compare with its tables).

How a query scores an item (``score``, the config's ``head.retrieval_score``):

- ``ip``: the inner product as given (cosine for the unit embeddings a tower emits);
- ``cosine``: the inner product of L2-normalised rows. Centring a section or smoothing over
  neighbours leaves rows of unequal length, and long rows then act as hubs for every query;
- ``csls``: cross-domain similarity local scaling (Conneau et al. 2018, "Word translation
  without parallel data"), on cosines: ``2 cos(q, i) - r_q - r_i``, where ``r_q`` is the mean
  cosine of query q to its ``csls_k`` nearest items and ``r_i`` that of item i to its
  ``csls_k`` nearest queries. An item close to every query (a hub) is discounted. It reads the
  other queries (no labels), as section centring does. No well-kept library computes it in
  bounded memory over 100k x 100k pairs, so the running top-k is written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: the ways a query may score an item; see the module docstring
RETRIEVAL_SCORES = ("ip", "cosine", "csls")


def check_retrieval_score(score: str, csls_k: int = 10) -> None:
    """Raise ``ValueError`` naming the fix for an unknown ``score`` or a ``csls_k`` below 1."""
    if score not in RETRIEVAL_SCORES:
        raise ValueError(
            f"retrieval score {score!r}: expected one of {', '.join(RETRIEVAL_SCORES)}"
        )
    if int(csls_k) < 1:
        raise ValueError(f"csls_k={csls_k}: expected at least 1 neighbour")


def _unit(x):
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _row_radii(x, y, k: int, x_chunk: int, y_chunk: int):
    """Each row of ``x``: the mean of its ``k`` highest scores against the rows of ``y``, by a
    running top-k over tiles (row-wise, so every top-k reads contiguous memory)."""
    import torch

    k = min(k, len(y))
    out = torch.empty(len(x))
    for i0 in range(0, len(x), x_chunk):
        xi = x[i0 : i0 + x_chunk]
        best = torch.full((len(xi), k), -torch.inf)
        for j0 in range(0, len(y), y_chunk):
            s = xi @ y[j0 : j0 + y_chunk].T
            top = s.topk(min(k, s.shape[1]), dim=1).values
            best = torch.cat([best, top], dim=1).topk(k, dim=1).values
        out[i0 : i0 + len(xi)] = best.mean(dim=1)
    return out


def csls_radii(queries, items, k: int = 10, *, query_chunk: int = 4096, item_chunk: int = 8192):
    """``(r_q, r_i)``: the mean score of each query to its ``k`` best items and of each item to
    its ``k`` best queries (``k`` capped at the count), by running top-k over tiles, so memory
    stays ``O(k * n)`` beyond one tile. Inputs are torch float tensors, scored as given."""
    return (
        _row_radii(queries, items, k, query_chunk, item_chunk),
        _row_radii(items, queries, k, query_chunk, item_chunk),
    )


def retrieval_ranks(
    queries: np.ndarray,
    items: np.ndarray,
    *,
    score: str = "ip",
    csls_k: int = 10,
    query_chunk: int = 4096,
    item_chunk: int = 8192,
) -> np.ndarray:
    """Rank of each query's positive (item ``i`` for query ``i``) among all items.

    Parameters
    ----------
    queries, items
        ``(n, d)`` float embeddings; row i of each is a positive pair.
    score
        ``ip``, ``cosine`` or ``csls`` (module docstring); ``csls_k`` neighbours for ``csls``.

    Returns
    -------
    np.ndarray
        ``(n,)`` int64 ranks, 0-based.
    """
    import torch

    check_retrieval_score(score, csls_k)
    q = torch.as_tensor(np.ascontiguousarray(queries, np.float32))
    it = torch.as_tensor(np.ascontiguousarray(items, np.float32))
    if q.shape != it.shape:
        raise ValueError(
            f"queries {tuple(q.shape)} and items {tuple(it.shape)} must pair up "
            f"row by row (same shape)"
        )
    if score != "ip":
        q, it = _unit(q), _unit(it)
    n = len(q)
    # csls: q_i ranks item j above its positive when 2 s_ij - r_j > 2 s_ii - r_i (r_q cancels)
    r_it = _row_radii(it, q, csls_k, query_chunk, item_chunk) if score == "csls" else None
    ranks = np.zeros(n, np.int64)
    scores = torch.empty(min(query_chunk, n), min(item_chunk, n), dtype=torch.float32)
    mask = np.empty(scores.shape, bool)
    for i0 in range(0, n, query_chunk):
        qi = q[i0 : i0 + query_chunk]
        p = (qi * it[i0 : i0 + len(qi)]).sum(dim=1)
        if r_it is not None:
            p = 2 * p - r_it[i0 : i0 + len(qi)]
        p = p.numpy()[:, None]
        rows = np.arange(len(qi))
        for j0 in range(0, n, item_chunk):
            ij = it[j0 : j0 + item_chunk]
            s = scores[: len(qi), : len(ij)]
            torch.mm(qi, ij.T, out=s)
            if r_it is not None:
                s.mul_(2).sub_(r_it[j0 : j0 + len(ij)])
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
    image: np.ndarray,
    gene: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    score: str = "ip",
    csls_k: int = 10,
) -> dict[str, dict[str, float]]:
    """Whole-test-set retrieval both ways: ``image_to_gene`` and ``gene_to_image``, each
    query scoring the items by ``score`` (module docstring)."""
    kw = {"score": score, "csls_k": csls_k}
    return {
        "image_to_gene": rank_metrics(retrieval_ranks(image, gene, **kw), ks),
        "gene_to_image": rank_metrics(retrieval_ranks(gene, image, **kw), ks),
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
