"""Classification protocol: patient-level cross-validation, AUROC and balanced accuracy, mean and
95 % interval over seeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def grouped_folds(groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Boolean test masks: each group (patient) entirely in one fold, groups shuffled by seed."""
    uniq = np.random.default_rng(seed).permutation(np.unique(groups))
    return [np.isin(groups, part) for part in np.array_split(uniq, min(n_folds, len(uniq)))]


def cross_validate(
    n_items: int,
    labels: np.ndarray,
    groups: np.ndarray,
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    n_folds: int = 5,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
) -> dict[str, object]:
    """Cross-validate a classifier with patients kept apart between train and test.

    Parameters
    ----------
    n_items
        Number of items (slides, patients or spots).
    labels, groups
        ``(n_items,)`` integer labels and patient ids.
    fit_predict
        ``fit_predict(train_index, test_index) -> (n_test,) scores`` of the positive class (or
        ``(n_test, n_classes)`` probabilities).

    Returns
    -------
    dict
        Per seed AUROC and balanced accuracy (pooled over the folds), their means and
        2.5-97.5 % percentile intervals over seeds, and the protocol (folds, seeds).
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    labels, groups = np.asarray(labels), np.asarray(groups)
    per_seed = []
    for seed in seeds:
        scores = None
        for test in grouped_folds(groups, n_folds, seed):
            s = np.asarray(fit_predict(np.flatnonzero(~test), np.flatnonzero(test)))
            if scores is None:
                scores = np.zeros((n_items, *s.shape[1:]))
            scores[test] = s
        if scores.ndim == 1:
            auroc = roc_auc_score(labels, scores)
            pred = (scores >= 0.5).astype(int)
        else:
            auroc = roc_auc_score(labels, scores, multi_class="ovr")
            pred = scores.argmax(axis=1)
        per_seed.append(
            {
                "seed": seed,
                "auroc": float(auroc),
                "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
            }
        )
    out: dict[str, object] = {
        "protocol": f"{n_folds}-fold patient-level CV",
        "seeds": list(seeds),
        "per_seed": per_seed,
    }
    for k in ("auroc", "balanced_accuracy"):
        v = np.array([r[k] for r in per_seed])
        out[k] = {
            "mean": float(v.mean()),
            "ci95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))],
        }
    return out
