"""Zero-shot protocols of a multimodal embedding space (Symile's evaluation).

Given every modality but one, pick the missing one's true record among ``k`` candidates (the
true one and ``k - 1`` others drawn from the test set): a Symile model scores a candidate by the
multilinear inner product with the given embeddings, a pairwise (CLIP) model by the sum of its
dot products with them. Plus Recall@k for each ordered pair of modalities.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np


def zero_shot_accuracy(
    embeddings: Mapping[str, np.ndarray],
    target: str,
    *,
    scorer: str = "symile",
    k: int = 10,
    present: np.ndarray | None = None,
    seed: int = 0,
) -> float:
    """Fraction of queries whose true ``target`` record scores highest among ``k`` candidates.

    Parameters
    ----------
    embeddings
        ``{modality: (n, d)}`` (rows aligned).
    target
        The modality to retrieve; the others are given.
    scorer
        ``"symile"``: ``sum_d prod_m z_m[i, d] * z_target[j, d]``; ``"pairwise"``:
        ``sum_m <z_m[i], z_target[j]>``.
    k
        Candidates per query (chance = 1 / k).
    present
        ``(n, n_modalities)`` bool in ``embeddings`` order; only rows with every modality are
        queries and candidates.
    seed
        Seed of the candidate draws.

    Returns
    -------
    float
        Accuracy; ties are shared (a tie of the true record with ``t`` others counts ``1/(t+1)``).
    """
    names = list(embeddings)
    if target not in names:
        raise ValueError(f"target={target!r}: not among {names}")
    if scorer not in ("symile", "pairwise"):
        raise ValueError(f"scorer={scorer!r}: symile or pairwise")
    rows = np.arange(len(embeddings[target]))
    if present is not None:
        rows = rows[np.asarray(present).all(axis=1)]
    if len(rows) < k:
        raise ValueError(f"{len(rows)} complete rows, fewer than k={k} candidates")
    zt = np.asarray(embeddings[target], np.float64)
    given = [np.asarray(embeddings[m], np.float64) for m in names if m != target]
    rng = np.random.default_rng(seed)
    total = 0.0
    for i in rows:
        others = rows[rows != i]
        cand = np.concatenate([[i], rng.choice(others, size=k - 1, replace=False)])
        if scorer == "symile":
            q = np.prod([g[i] for g in given], axis=0)
            s = zt[cand] @ q
        else:
            s = zt[cand] @ np.sum([g[i] for g in given], axis=0)
        best = s.max()
        if s[0] >= best - 1e-12:
            total += 1.0 / np.sum(s >= best - 1e-12)
    return total / len(rows)


def pairwise_recall(
    embeddings: Mapping[str, np.ndarray], present: np.ndarray | None = None
) -> dict[str, float]:
    """Recall@1/5/10 for every ordered pair of modalities over rows where both are present,
    keys ``"{a}_to_{b}.recall@k"``."""
    from histoxmodal.evaluation.retrieval import cross_modal_retrieval

    names = list(embeddings)
    out = {}
    for i, j in itertools.combinations(range(len(names)), 2):
        rows = np.arange(len(embeddings[names[i]]))
        if present is not None:
            rows = rows[np.asarray(present)[:, [i, j]].all(axis=1)]
        ret = cross_modal_retrieval(embeddings[names[i]][rows], embeddings[names[j]][rows])
        for direction, (a, b) in (
            ("image_to_gene", (names[i], names[j])),
            ("gene_to_image", (names[j], names[i])),
        ):
            for kk in (1, 5, 10):
                out[f"{a}_to_{b}.recall@{kk}"] = float(ret[direction][f"R@{kk}"])
    return out


def cohort_metrics(
    embeddings: Mapping[str, np.ndarray],
    present: np.ndarray,
    *,
    loss: str,
    k: int = 10,
    seed: int = 0,
) -> tuple[dict[str, float], str]:
    """Zero-shot accuracy for each modality given the others (:func:`zero_shot_accuracy`, the
    scorer matching ``loss``: ``symile`` or pairwise) and Recall@k for each pair of modalities
    (:func:`pairwise_recall`). Keys name the loss: ``zero_shot.symile.report.accuracy@k10``,
    ``retrieval.symile.cxr_to_ecg.recall@5``. Returns the metrics and the scorer used."""
    scorer = "symile" if loss == "symile" else "pairwise"
    m: dict[str, float] = {}
    for target in embeddings:
        acc = zero_shot_accuracy(embeddings, target, scorer=scorer, k=k, present=present, seed=seed)
        m[f"zero_shot.{loss}.{target}.accuracy@k{k}"] = acc
    for key, v in pairwise_recall(embeddings, present).items():
        m[f"retrieval.{loss}.{key}"] = v
    return m, scorer
