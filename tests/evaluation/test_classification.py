import numpy as np
import pytest

from histoxmodal.evaluation.classification import cross_validate, grouped_folds


def test_patients_never_split_and_metrics():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 5)
    labels = (groups % 2).astype(int)
    x = labels + 0.3 * rng.standard_normal(100)
    seen = []

    def fit_predict(train, test):
        assert not set(groups[train]) & set(groups[test])  # patient-level separation
        seen.append(len(test))
        thr = (x[train][labels[train] == 0].mean() + x[train][labels[train] == 1].mean()) / 2
        return 1 / (1 + np.exp(-(x[test] - thr) * 10))

    r = cross_validate(100, labels, groups, fit_predict, n_folds=4, seeds=(0, 1, 2))
    assert sum(seen) == 300 and r["auroc"]["mean"] > 0.95
    per_seed = np.array([s["auroc"] for s in r["per_seed"]])
    assert r["auroc"]["mean"] == pytest.approx(per_seed.mean())
    assert r["auroc"]["ci95"] == pytest.approx(np.percentile(per_seed, [2.5, 97.5]).tolist())
    assert r["protocol"] == "4-fold patient-level CV" and len(r["per_seed"]) == 3
    folds = grouped_folds(groups, 4, 0)
    assert np.sum(folds, axis=0).tolist() == [1] * 100


def test_mean_and_interval_over_seeds_in_closed_form():
    """Seed 0 ranks perfectly, seed 1 ties every item, seed 2 ranks backwards: per-seed AUROC
    and balanced accuracy 1, 0.5 and 0, so the mean is 0.5 and the 2.5-97.5 % interval (linear
    interpolation between order statistics 0, 0.5, 1) is [0.5 * 0.05, 0.5 + 0.5 * 0.95]."""
    groups = np.repeat(np.arange(20), 5)
    labels = (groups % 2).astype(int)
    n_folds, calls = 4, []

    def fit_predict(train, test):
        seed = len(calls) // n_folds  # cross_validate runs the folds of one seed in turn
        calls.append(seed)
        return (labels[test], np.full(len(test), 0.5), 1.0 - labels[test])[seed]

    r = cross_validate(100, labels, groups, fit_predict, n_folds=n_folds, seeds=(0, 1, 2))
    assert calls == [0] * 4 + [1] * 4 + [2] * 4
    assert [s["auroc"] for s in r["per_seed"]] == [1.0, 0.5, 0.0]
    assert [s["balanced_accuracy"] for s in r["per_seed"]] == [1.0, 0.5, 0.0]
    for k in ("auroc", "balanced_accuracy"):
        assert r[k]["mean"] == pytest.approx(0.5)
        assert r[k]["ci95"] == pytest.approx([0.025, 0.975])
    one = cross_validate(100, labels, groups, lambda tr, te: labels[te], n_folds=4, seeds=(3,))
    assert one["auroc"] == {"mean": 1.0, "ci95": [1.0, 1.0]}
