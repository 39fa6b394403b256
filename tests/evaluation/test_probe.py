"""The leave-one-group-out spot-label probe on generated data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from histoxmodal.errors import ConfigError
from histoxmodal.evaluation.probe import spot_label_probe


def _clusters(n_groups=4, n_per=150, n_classes=3, dim=8, spread=0.3, seed=0):
    """Spots in ``n_groups`` sections; the label decides the embedding's cluster centre."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim)) * 3
    y = rng.integers(0, n_classes, n_groups * n_per)
    x = centres[y] + spread * rng.standard_normal((len(y), dim))
    groups = np.repeat([f"S{i}" for i in range(n_groups)], n_per)
    return x, np.array([f"c{k}" for k in y], dtype=object), groups


def test_separable_labels_score_perfectly():
    x, y, g = _clusters()
    r = spot_label_probe(x, y, g, seeds=(0,))
    m = r["metrics"]
    for s in ("S0", "S1", "S2", "S3", "mean"):
        assert m[f"auroc_macro.{s}"] == 1.0
        assert m[f"balanced_accuracy.{s}"] == 1.0 and m[f"accuracy.{s}"] == 1.0
    p = r["protocol"]
    assert p["n_spots"] == 600 and p["n_dropped"] == 0 and sum(p["classes"].values()) == 600
    assert p["groups"] == ["S0", "S1", "S2", "S3"]
    assert p["folds"]["S2"]["classes_scored"] == ["c0", "c1", "c2"]


def test_random_labels_score_at_chance():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1200, 8))
    y = rng.choice(["a", "b", "c"], 1200)
    g = np.repeat(["S0", "S1", "S2", "S3"], 300)
    m = spot_label_probe(x, y, g, seeds=(0, 1))["metrics"]
    # measured: 0.50 (per section 0.47-0.53); three balanced classes -> accuracy ~1/3
    assert abs(m["auroc_macro.mean"] - 0.5) < 0.05
    assert abs(m["balanced_accuracy.mean"] - 1 / 3) < 0.06
    assert m["auroc_macro.mean.min_over_seeds"] == m["auroc_macro.mean.max_over_seeds"]


def test_held_out_section_never_reaches_the_probe():
    # one label per section, and the embedding encodes the section: a probe that had seen the
    # held-out section would name it perfectly; an isolated one can never predict its label
    rng = np.random.default_rng(2)
    g = np.repeat(["S0", "S1", "S2"], 100)
    x = np.repeat(rng.standard_normal((3, 6)) * 3, 100, axis=0) + 0.1 * rng.standard_normal(
        (300, 6)
    )
    r = spot_label_probe(x, np.char.add("label_", g), g, seeds=(0,))
    for s in ("S0", "S1", "S2"):
        assert r["metrics"][f"accuracy.{s}"] == 0.0
        assert r["metrics"][f"balanced_accuracy.{s}"] == 0.0
        assert np.isnan(r["metrics"][f"auroc_macro.{s}"])  # one class in the test set
        assert r["protocol"]["folds"][s]["unseen_in_training"] == [f"label_{s}"]


def test_missing_and_unseen_labels():
    x, y, g = _clusters(n_groups=3, n_per=100, seed=3)
    y = y.copy()
    y[:4] = [None, np.nan, "undetermined", ""]
    rare = np.flatnonzero(g == "S2")[:10]
    y[rare] = "rare"
    x[rare] = 50.0  # far from every cluster: only 'rare' is there, and S2 alone has it
    r = spot_label_probe(x, y, g, seeds=(0,))
    assert r["protocol"]["n_dropped"] == 4 and r["protocol"]["classes"]["rare"] == 10
    assert r["protocol"]["folds"]["S2"]["unseen_in_training"] == ["rare"]
    # c0-c2 recalled perfectly, 'rare' never predicted: mean recall over the 4 classes = 3/4
    assert r["metrics"]["balanced_accuracy.S2"] == pytest.approx(0.75)
    assert r["metrics"]["accuracy.S2"] == pytest.approx(90 / 100)
    kept = spot_label_probe(x, y, g, seeds=(0,), exclude=())
    assert kept["protocol"]["n_dropped"] == 3 and kept["protocol"]["classes"]["undetermined"] == 1


def test_probe_input_errors():
    x, y, g = _clusters(n_groups=2, n_per=10)
    with pytest.raises(ConfigError, match="20 embeddings, 19 labels"):
        spot_label_probe(x, y[:19], g)
    with pytest.raises(ConfigError, match="at least two sections"):
        spot_label_probe(x, y, np.zeros(20))
    with pytest.raises(ConfigError, match=r"embeddings has shape \(20,\)"):
        spot_label_probe(x[:, 0], y, g)
