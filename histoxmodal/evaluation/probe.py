"""The spot-label probe: per-spot labels (pathologist regions, expression clusters) probed from
embeddings with whole sections or patients held out.

Arrays in, numbers out: every function takes embeddings, labels and groups the caller provides
and returns flat dotted metric keys (``{"metrics": {...}, "protocol": {...}}`` for
:func:`spot_label_probe`, the layout of ``metrics.json``). Experiments that compute the
embeddings per fold (gene towers fitted without the held-out patient) live in
:mod:`histoxmodal.bench.labels` and run the same :func:`leave_one_group_out_probe`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from histoxmodal.errors import ConfigError

#: the metrics of one held-out group, in the order they are reported
PROBE_METRICS = ("auroc_macro", "balanced_accuracy", "accuracy")


def _missing(labels: np.ndarray, exclude: Sequence[str]) -> np.ndarray:
    """``(n,)`` True where a label is None, NaN, empty or one of ``exclude``."""
    import pandas as pd

    s = pd.Series(np.asarray(labels, dtype=object))
    bad = s.isna().to_numpy()
    text = s.astype(str).str.strip()
    bad |= text.isin(["", "nan", "None", *map(str, exclude)]).to_numpy()
    return bad


def _probe_fold(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    c: float,
    seed: int,
) -> dict[str, object]:
    """Fit :func:`~histoxmodal.heads.probe.linear_probe` on one fold and score the test spots.

    Macro AUROC: mean one-vs-rest AUROC over the classes seen in training that occur in the test
    set alongside at least one other class (NaN when there is none). Balanced accuracy: mean
    recall over the classes present in the test set; a test class never seen in training is
    never predicted and counts with recall 0. Accuracy: share of test spots predicted right.
    """
    from sklearn.metrics import roc_auc_score

    from histoxmodal.heads.probe import linear_probe

    classes = np.unique(train_y)
    if len(classes) == 1:  # logistic regression needs two classes: predict the only one
        proba = np.ones((len(test_x), 1))
    else:
        proba = linear_probe(train_x, train_y, test_x, c=c, seed=seed)
    pred = classes[proba.argmax(axis=1)]
    present = np.unique(test_y)
    aucs = {}
    for k, cl in enumerate(classes):
        pos = test_y == cl
        if len(classes) > 1 and 0 < pos.sum() < len(test_y):
            aucs[str(cl)] = float(roc_auc_score(pos, proba[:, k]))
    recalls = [float((pred[test_y == cl] == cl).mean()) for cl in present]
    return {
        "auroc_macro": float(np.mean(list(aucs.values()))) if aucs else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)),
        "accuracy": float((pred == test_y).mean()),
        "n_test": len(test_y),
        "classes_scored": sorted(aucs),
        "unseen_in_training": sorted(str(x) for x in set(present) - set(classes)),
    }


def leave_one_group_out_probe(
    get_embeddings: Callable[[object, int], np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    seeds: Sequence[int],
    c: float,
    prefix: str = "",
) -> tuple[dict[str, float], dict[str, object]]:
    """Run the linear probe with each group held out in turn, for each seed.

    The protocol of :func:`spot_label_probe`, with embeddings that may be recomputed per fold
    (e.g. a gene tower fitted without the held-out patient).

    Parameters
    ----------
    get_embeddings
        ``get_embeddings(held_out_group, seed) -> (n_spots, dim)`` embeddings of every spot;
        called once per group and seed, in group order.
    labels
        ``(n_spots,)`` class per spot, none missing (drop them first, see :func:`check_labels`).
    groups
        ``(n_spots,)`` the unit held out (section or patient).
    seeds
        The probe's ``random_state`` values, each also passed to ``get_embeddings``.
    c
        Inverse L2 penalty of the logistic regression.
    prefix
        Put before every metric key, e.g. ``"pca50."``.

    Returns
    -------
    metrics, folds
        ``{prefix}{metric}.{group}`` (mean over seeds), ``{prefix}{metric}.mean`` (unweighted
        over groups, then over seeds) and ``{prefix}{metric}.mean.{min,max}_over_seeds``,
        metric one of :data:`PROBE_METRICS`; per group its test size, the classes scored and
        those never seen in training.
    """
    uniq = np.unique(groups)
    per: dict[str, dict[str, list[float]]] = {m: {} for m in PROBE_METRICS}
    folds: dict[str, object] = {}
    for g in uniq:
        test = groups == g
        for seed in seeds:
            z = np.asarray(get_embeddings(g, seed), np.float64)
            r = _probe_fold(z[~test], labels[~test], z[test], labels[test], c=c, seed=seed)
            for m in PROBE_METRICS:
                per[m].setdefault(str(g), []).append(r[m])
        folds[str(g)] = {
            "n_test": int(test.sum()),
            "classes_scored": r["classes_scored"],
            "unseen_in_training": r["unseen_in_training"],
        }
    metrics: dict[str, float] = {}
    for m in PROBE_METRICS:
        table = np.array([per[m][str(g)] for g in uniq])  # (n_groups, n_seeds)
        for g, row in zip(uniq, table, strict=True):
            metrics[f"{prefix}{m}.{g}"] = float(np.mean(row))
        # one mean over held-out groups per seed; groups with nothing to score (NaN) left out
        scored = ~np.isnan(table)
        over_groups = np.where(scored, table, 0).sum(0) / np.maximum(scored.sum(0), 1)
        over_groups[~scored.any(axis=0)] = np.nan
        metrics[f"{prefix}{m}.mean"] = float(np.mean(over_groups))
        metrics[f"{prefix}{m}.mean.min_over_seeds"] = float(np.min(over_groups))
        metrics[f"{prefix}{m}.mean.max_over_seeds"] = float(np.max(over_groups))
    return metrics, folds


def check_labels(
    n: int,
    labels: Sequence[object] | np.ndarray,
    groups: Sequence[object] | np.ndarray,
    exclude: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate one label and one group per spot for ``n`` spots.

    Returns
    -------
    labels, groups, keep
        ``(n,)`` labels as objects, ``(n,)`` groups, and ``(n,)`` True where the label is
        present (not None, NaN, empty or in ``exclude``). Raises :class:`ConfigError` when the
        lengths differ or fewer than two groups have labelled spots.
    """
    labels = np.asarray(labels, dtype=object)
    groups = np.asarray(groups)
    if len(labels) != n or len(groups) != n:
        raise ConfigError(
            f"{n} embeddings, {len(labels)} labels and {len(groups)} groups: pass one label and "
            "one group (section or patient id) per spot"
        )
    keep = ~_missing(labels, exclude)
    if len(np.unique(groups[keep])) < 2:
        raise ConfigError(
            f"groups: {len(np.unique(groups[keep]))} group(s) with labelled spots; "
            "leave-one-group-out needs at least two sections or patients"
        )
    return labels, groups, keep


def spot_label_probe(
    embeddings: np.ndarray,
    labels: Sequence[object] | np.ndarray,
    groups: Sequence[object] | np.ndarray,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    exclude: Sequence[str] = ("undetermined",),
    c: float = 1.0,
) -> dict[str, object]:
    """Per-spot linear probe with leave-one-group-out: how well do embeddings separate spot
    labels in a section (or patient) the probe never saw?

    Protocol: spots whose label is missing (None, NaN, empty) or listed in ``exclude`` are
    dropped. For each group ``g`` (a section or patient) in turn, a multinomial logistic
    regression on L2-normalized embeddings (:func:`~histoxmodal.heads.probe.linear_probe`,
    inverse penalty ``c``) is fitted on the labelled spots of every other group and predicts the
    spots of ``g``. Per held-out group: macro AUROC (one-vs-rest, averaged over the classes
    seen in training that occur in ``g`` next to another class), balanced accuracy (mean
    recall over the classes present in ``g``; a class absent from training counts with recall
    0) and accuracy. ``mean`` is the unweighted mean over held-out groups (groups with no
    scorable class left out of the AUROC mean). The whole is repeated for each seed (the
    probe's ``random_state``; the lbfgs fit is deterministic, so with fixed embeddings the
    seeds agree) and values are averaged over seeds, with the range of the group mean.

    Parameters
    ----------
    embeddings
        ``(n_spots, dim)``.
    labels
        ``(n_spots,)`` class per spot (strings or integers; missing values allowed).
    groups
        ``(n_spots,)`` section or patient of each spot: the unit held out.
    exclude
        Label values treated as missing, e.g. her2st's ``"undetermined"``; ``()`` keeps all.

    Returns
    -------
    dict
        ``metrics``: ``{auroc_macro,balanced_accuracy,accuracy}.{<group>,mean}`` and
        ``<metric>.mean.{min,max}_over_seeds``; ``protocol``: the description, classes with
        their counts, spots dropped, and per held-out group the classes scored and those never
        seen in training.
    """
    z = np.asarray(embeddings, np.float64)
    if z.ndim != 2:
        raise ConfigError(f"embeddings has shape {z.shape}: expected (n_spots, dim)")
    labels, groups, keep = check_labels(len(z), labels, groups, exclude)
    z, y, g = z[keep], labels[keep].astype(str), groups[keep]
    metrics, folds = leave_one_group_out_probe(lambda _g, _s: z, y, g, seeds=seeds, c=c)
    cls, counts = np.unique(y, return_counts=True)
    return {
        "metrics": metrics,
        "protocol": {
            "description": (
                "leave-one-group-out linear probe (multinomial logistic regression on "
                f"L2-normalized embeddings, C={c}); macro one-vs-rest AUROC, balanced accuracy "
                "and accuracy per held-out group, unweighted mean over groups, averaged over "
                "seeds"
            ),
            "n_spots": int(keep.sum()),
            "n_dropped": int((~keep).sum()),
            "excluded_labels": list(exclude),
            "classes": dict(zip(cls.tolist(), counts.tolist(), strict=True)),
            "groups": [str(x) for x in np.unique(g)],
            "seeds": list(seeds),
            "folds": folds,
        },
    }
