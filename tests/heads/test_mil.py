"""MIL heads on bags whose label is carried by a small minority of instances."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from histoxmodal.heads.mil import fit_mil, predict_proba  # noqa: E402


def _bags(n_bags=60, seed=0):
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal(8)
    bags, labels, positives = [], [], []
    for b in range(n_bags):
        n = int(rng.integers(20, 40))
        x = rng.standard_normal((n, 8))
        label = b % 2
        pos = np.zeros(n, bool)
        if label:
            pos[rng.choice(n, 3, replace=False)] = True
            x[pos] += 3 * signal
        bags.append(x.astype(np.float32))
        labels.append(label)
        positives.append(pos)
    return bags, np.array(labels), positives


def test_abmil_finds_the_few_positive_instances():
    from sklearn.metrics import roc_auc_score

    bags, labels, _ = _bags()
    test_bags, test_labels, test_pos = _bags(seed=1)
    net = fit_mil(bags, labels, model="abmil", epochs=15)
    p = predict_proba(net, test_bags)[:, 1]
    assert roc_auc_score(test_labels, p) > 0.95
    # attention goes to the instances that carry the label
    with torch.no_grad():
        att = [net.attention(torch.as_tensor(b)).numpy() for b in test_bags]
    mass = np.mean(
        [a[pos].sum() for a, pos, y in zip(att, test_pos, test_labels, strict=True) if y == 1]
    )
    uniform = np.mean([pos.mean() for pos, y in zip(test_pos, test_labels, strict=True) if y == 1])
    assert mass > 2.5 * uniform, (mass, uniform)  # 3 of 20-40 instances: ~0.1 if uniform
    base = fit_mil(bags, labels, model="mean", epochs=15)
    assert predict_proba(base, test_bags).shape == (60, 2)
