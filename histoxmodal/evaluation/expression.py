"""Expression-prediction metrics: per-gene Pearson and Spearman correlation and MSE, pooled over
the test set and per test sample, on the top highly variable genes of the training split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def top_variable_genes(expression: np.ndarray, genes: Sequence[str], n: int = 50) -> list[str]:
    """The ``n`` genes with the highest variance of (normalized) training expression."""
    var = np.asarray(expression, np.float64).var(axis=0)
    order = np.argsort(-var, kind="stable")[:n]
    return [genes[i] for i in sorted(order)]


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    den = np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=0) / den, np.nan)


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return _pearson(rankdata(a, axis=0), rankdata(b, axis=0))


def expression_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    genes: Sequence[str],
    *,
    samples: np.ndarray | None = None,
) -> dict[str, object]:
    """Per-gene correlations and MSE.

    Returns
    -------
    dict
        ``pooled``: mean Pearson/Spearman over genes and MSE on the whole test set, with
        ``per_gene`` values; ``per_sample``: the same within each test sample, and their mean.
        Genes constant in a set give NaN correlations and are left out of the means.
    """
    t, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)

    def block(tt: np.ndarray, pp: np.ndarray) -> dict[str, object]:
        r, rho = _pearson(tt, pp), _spearman(tt, pp)
        return {
            "pearson": float(np.nanmean(r)),
            "spearman": float(np.nanmean(rho)),
            "mse": float(((tt - pp) ** 2).mean()),
            "per_gene": {
                g: {"pearson": float(a), "spearman": float(b)}
                for g, a, b in zip(genes, r, rho, strict=True)
            },
        }

    out: dict[str, object] = {"genes": list(genes), "pooled": block(t, p)}
    if samples is not None:
        per = {str(s): block(t[samples == s], p[samples == s]) for s in np.unique(samples)}
        out["per_sample"] = per
        out["per_sample_mean"] = {
            k: float(np.nanmean([v[k] for v in per.values()]))
            for k in ("pearson", "spearman", "mse")
        }
    return out
