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


def _dense_csls(a, b, k):
    a = a.astype(np.float64) / np.linalg.norm(a, axis=1, keepdims=True)
    b = b.astype(np.float64) / np.linalg.norm(b, axis=1, keepdims=True)
    cos = a @ b.T
    k_row, k_col = min(k, cos.shape[1]), min(k, cos.shape[0])
    r_row = np.sort(cos, axis=1)[:, -k_row:].mean(axis=1)
    r_col = np.sort(cos, axis=0)[-k_col:, :].mean(axis=0)
    return cos, 2 * cos - r_row[:, None] - r_col[None, :]


@pytest.mark.parametrize("k", [1, 7, 500])
def test_cosine_and_csls_ranks_equal_dense_formulas_across_tiles(k):
    """Rows of unequal length (as centring leaves them): tiled cosine and CSLS ranks equal the
    dense formulas, with tiles that split queries and items unevenly and k above n."""
    a, b = _data(n=230)
    a *= np.linspace(0.2, 3.0, len(a), dtype=np.float32)[:, None]
    cos, csls = _dense_csls(a, b, k)

    def brute(s):
        return np.array([(s[i] > s[i, i]).sum() for i in range(len(s))])

    kw = {"query_chunk": 37, "item_chunk": 50}
    np.testing.assert_array_equal(retrieval_ranks(a, b, score="cosine", **kw), brute(cos))
    np.testing.assert_array_equal(retrieval_ranks(a, b, score="csls", csls_k=k, **kw), brute(csls))
    both = cross_modal_retrieval(a, b, score="csls", csls_k=k)
    assert both["gene_to_image"]["R@5"] == pytest.approx(
        np.mean(brute(_dense_csls(b, a, k)[1]) < 5)
    )
    # lengths change the inner product's ranks but not the cosine's
    assert not np.array_equal(retrieval_ranks(a, b), brute(cos))


def test_csls_discounts_a_hub():
    """Item 3 (query 3's partner) sits near queries 0-2 (cosine 0.56 against their partners'
    0.50), so by cosine it outranks each of their partners. CSLS (k=2) takes off each item's
    mean cosine to its two nearest queries (0.25 for items 0-2, 0.56 for the hub): 2 x 0.50 -
    0.25 = 0.75 beats 2 x 0.56 - 0.56 = 0.56, and every query finds its partner first."""
    q = np.eye(4, 5, dtype=np.float32)
    items = np.array(
        [
            [0.5, 0, 0, 0, 0.866],
            [0, 0.5, 0, 0, 0.866],
            [0, 0, 0.5, 0, 0.866],
            [0.55, 0.55, 0.55, 0.2, 0],
        ],
        np.float32,
    )
    assert retrieval_ranks(q, items, score="cosine").tolist() == [1, 1, 1, 0]
    assert retrieval_ranks(q, items, score="csls", csls_k=2).tolist() == [0, 0, 0, 0]


def test_unknown_score_and_k_are_refused_by_name():
    a, b = _data(n=10)
    with pytest.raises(ValueError, match="retrieval score 'dot'.*ip, cosine, csls"):
        retrieval_ranks(a, b, score="dot")
    with pytest.raises(ValueError, match="csls_k=0"):
        retrieval_ranks(a, b, score="csls", csls_k=0)


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


def test_the_benchs_dense_csls_baseline_agrees_with_the_tiled_ranks():
    from histoxmodal.bench.retrieval import dense_csls_ranks

    a, b = _data(n=400)
    np.testing.assert_array_equal(
        retrieval_ranks(a, b, score="csls", query_chunk=64, item_chunk=100), dense_csls_ranks(a, b)
    )


def test_csls_radii_are_each_rows_mean_of_its_k_best_across_tiles():
    import torch

    from histoxmodal.evaluation.retrieval import csls_radii

    a, b = _data(n=150)
    sim = a.astype(np.float64) @ b.T.astype(np.float64)
    r_q, r_i = csls_radii(torch.as_tensor(a), torch.as_tensor(b), 6, query_chunk=40, item_chunk=33)
    np.testing.assert_allclose(r_q.numpy(), np.sort(sim, axis=1)[:, -6:].mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(r_i.numpy(), np.sort(sim, axis=0)[-6:, :].mean(axis=0), rtol=1e-5)


def test_the_config_offers_exactly_the_scores_retrieval_knows():
    import typing

    from histoxmodal.evaluation.retrieval import RETRIEVAL_SCORES
    from histoxmodal.training.config import HeadConfig

    hint = typing.get_type_hints(HeadConfig)["retrieval_score"]
    assert typing.get_args(hint) == RETRIEVAL_SCORES
