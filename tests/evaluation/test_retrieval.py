"""Retrieval metrics against brute force."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from histoxmodal.evaluation.retrieval import (
    cross_modal_retrieval,
    in_batch_recall,
    rank_metrics,
    retrieval_ranks,
)


def _data(n=300, d=16, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d)).astype(np.float32)
    b = (a + noise * rng.standard_normal((n, d))).astype(np.float32)
    return a, b


def test_tiled_ranks_equal_brute_force_and_argsort():
    from histoxmodal.bench.retrieval import full_argsort_ranks

    a, b = _data()
    sim = a.astype(np.float64) @ b.T.astype(np.float64)
    brute = np.array([(sim[i] > sim[i, i]).sum() for i in range(len(a))])
    np.testing.assert_array_equal(retrieval_ranks(a, b, query_chunk=37, item_chunk=50), brute)
    np.testing.assert_array_equal(full_argsort_ranks(a, b), brute)
    m = rank_metrics(brute)
    assert m["R@1"] == np.mean(brute == 0) and m["median_rank"] == np.median(brute) + 1
    both = cross_modal_retrieval(a, b)
    assert both["image_to_gene"]["R@10"] == pytest.approx(np.mean(brute < 10))
    brute_t = np.array([(sim[:, i] > sim[i, i]).sum() for i in range(len(a))])
    assert both["gene_to_image"]["R@5"] == pytest.approx(np.mean(brute_t < 5))


def test_in_batch_protocol_matches_a_loop():
    a, b = _data(n=103, noise=2.0)
    got = in_batch_recall(a, b, batch_size=25, ks=(1, 5))
    hits = 0
    for s in range(0, 103, 25):
        sim = a[s : s + 25] @ b[s : s + 25].T
        hits += sum(int((sim[i] > sim[i, i]).sum() < 5) for i in range(len(sim)))
    assert got["image_to_gene:R@5"] == pytest.approx(hits / 103)
    assert got["protocol"] == "in-batch, B=25"
    # smaller batches are easier: in-batch recall is not the whole-set recall
    whole = rank_metrics(retrieval_ranks(a, b))["R@5"]
    assert got["image_to_gene:R@5"] > whole


def test_chance_levels_are_exact_and_match_random_embeddings():
    from histoxmodal.evaluation.retrieval import in_batch_chance, retrieval_chance

    c = retrieval_chance(179, ks=(1, 5, 10))
    assert c["R@5"] == 5 / 179 and c["R@1"] == 1 / 179 and c["median_rank"] == 90.0
    assert retrieval_chance(3, ks=(5,))["R@5"] == 1.0
    # 103 queries in batches 25, 25, 25, 25, 3: the last batch's 3 queries always hit at k = 5
    ib = in_batch_chance(103, batch_size=25, ks=(5,))
    assert ib["image_to_gene:R@5"] == (4 * 5 + 3) / 103
    # unrelated embeddings average to the chance level (500 draws of 60 pairs)
    rng = np.random.default_rng(0)
    got = [
        rank_metrics(retrieval_ranks(rng.standard_normal((60, 8)), rng.standard_normal((60, 8))))
        for _ in range(500)
    ]
    assert np.mean([g["R@5"] for g in got]) == pytest.approx(5 / 60, abs=0.005)
    assert np.mean([g["mean_rank"] for g in got]) == pytest.approx(30.5, abs=0.5)
    with pytest.raises(ValueError, match="n=0"):
        retrieval_chance(0)
