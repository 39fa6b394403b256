import numpy as np

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
    assert r["auroc"]["ci95"][0] <= r["auroc"]["mean"] <= r["auroc"]["ci95"][1]
    assert r["protocol"] == "4-fold patient-level CV" and len(r["per_seed"]) == 3
    folds = grouped_folds(groups, 4, 0)
    assert np.sum(folds, axis=0).tolist() == [1] * 100
