"""Zero-shot protocol: the true record among k candidates, Symile (MIP) vs pairwise scoring."""

from __future__ import annotations

import numpy as np
import pytest

from histoxmodal.evaluation.zeroshot import pairwise_recall, zero_shot_accuracy


def _xor_embeddings(n=400, seed=0):
    """Perfect XOR codes: one ±1 dimension per bit, report = cxr XOR ecg."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, (n, 3)), rng.integers(0, 2, (n, 3))
    sign = lambda bits: 1.0 - 2.0 * bits  # noqa: E731
    return {"cxr": sign(a), "ecg": sign(b), "report": sign(a ^ b)}


def _brute(z, target, scorer, k, seed):
    """Loop version of the protocol with the same candidate draws."""
    rng = np.random.default_rng(seed)
    n = len(z[target])
    given = [z[m] for m in z if m != target]
    total = 0.0
    for i in range(n):
        cand = [i, *rng.choice([j for j in range(n) if j != i], size=k - 1, replace=False)]
        scores = []
        for j in cand:
            if scorer == "symile":
                scores.append(
                    sum(np.prod([g[i][d] for g in given]) * z[target][j][d] for d in range(3))
                )
            else:
                scores.append(sum(float(g[i] @ z[target][j]) for g in given))
        best = max(scores)
        if scores[0] >= best - 1e-12:
            total += 1 / sum(s >= best - 1e-12 for s in scores)
    return total / n


def test_symile_scoring_solves_xor_and_pairwise_does_not():
    z = _xor_embeddings()
    sym = zero_shot_accuracy(z, "report", scorer="symile", k=8, seed=1)
    pair = zero_shot_accuracy(z, "report", scorer="pairwise", k=8, seed=1)
    assert sym == pytest.approx(_brute(z, "report", "symile", 8, 1))
    assert pair == pytest.approx(_brute(z, "report", "pairwise", 8, 1))
    # with 3 bits a candidate shares the true code with p = 1/8: expected accuracy ~0.66
    assert sym > 0.6
    assert abs(pair - 1 / 8) < 0.05


def test_only_complete_rows_are_queries():
    z = _xor_embeddings(n=50)
    present = np.ones((50, 3), bool)
    present[:45, 1] = False
    with pytest.raises(ValueError, match="fewer than k=10"):
        zero_shot_accuracy(z, "report", k=10, present=present)
    assert zero_shot_accuracy(z, "report", k=5, present=present) > 0


def test_pairwise_recall_keys_and_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # embeddings are unit vectors
    r = pairwise_recall({"cxr": x, "ecg": x.copy(), "report": rng.normal(size=(30, 8))})
    assert r["cxr_to_ecg.recall@1"] == 1.0 and r["ecg_to_cxr.recall@1"] == 1.0
    assert set(r) == {
        f"{a}_to_{b}.recall@{k}"
        for a, b in [
            ("cxr", "ecg"),
            ("ecg", "cxr"),
            ("cxr", "report"),
            ("report", "cxr"),
            ("ecg", "report"),
            ("report", "ecg"),
        ]
        for k in (1, 5, 10)
    }
