"""Every metric of ``histoxmodal evaluate`` carries its chance level and a baseline measured on
the same split."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

from histoxmodal.testing.paired import make_paired_dataset
from histoxmodal.training.config import config_from_dict
from histoxmodal.workflows.train import train
from tests.workflows.test_report import decode_images, parse_report


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from histoxmodal.workflows.evaluate import evaluate

    tmp = tmp_path_factory.mktemp("eval")
    data = make_paired_dataset(tmp / "data", spots_per_sample=48, n_states=3)
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {"image_encoder": "test_uni", "gene_encoder": "test_gene_mlp", "embed_dim": 8},
            "optim": {"lr": 3e-3, "batch_size": 32, "max_epochs": 3, "num_workers": 0},
        }
    )
    train(cfg, tmp / "run", data=data, accelerator="cpu", devices=1)
    split = data / "splits" / "random.json"
    r = evaluate(tmp / "run", data, tmp / "out", split=split, in_batch_size=8)
    return data, split, tmp / "out", r


def test_chance_and_baseline_keys(evaluated):
    from histoxmodal.data.normalize import expression_matrix
    from histoxmodal.data.splits import Split
    from histoxmodal.data.store import load_paired

    data, split, out, r = evaluated
    m, n = r["metrics"], r["protocol"]["n_test"]
    assert n == round(0.2 * 96)
    assert json.loads((out / "metrics.json").read_text())["metrics"] == m
    for d in ("i2g", "g2i"):
        for k in (1, 5, 10):
            assert m[f"retrieval.full.{d}.recall@{k}_chance"] == k / n  # exactly
            assert 0 <= m[f"retrieval.full.{d}.recall@{k}_baseline"] <= 1
        assert m[f"retrieval.full.{d}.median_rank_chance"] == (n + 1) / 2
    # 19 test spots in batches of 8, 8, 3: the last 3 always hit at k = 5
    assert m["retrieval.in_batch_B8.i2g.recall@5_chance"] == (5 + 5 + 3) / n
    # the mean predictor's MSE, by hand: training spots' mean log1p-CP10k of the same genes
    adata, _ = load_paired(data)
    f = Split.load(split).fold(0)
    genes = r["protocol"]["genes"]
    y_tr = expression_matrix(adata, genes, rows=f.train(adata.n_obs))
    y_te = expression_matrix(adata, genes, rows=f.test)
    mse = ((y_te - y_tr.mean(axis=0)) ** 2).mean()
    for head in ("ridge", "mlp", "retrieval"):
        assert m[f"expression.{head}.mse_pooled_chance"] == pytest.approx(mse, rel=1e-9)
        assert m[f"expression.{head}.pearson_pooled_mean_chance"] == 0.0
        # every head is set beside the same hand-crafted baseline
        for key in ("pearson_pooled_mean", "mse_pooled"):
            assert (
                m[f"expression.{head}.{key}_baseline"] == m[f"expression.handcrafted_ridge.{key}"]
            )
    # the states tint the patches, so colour features predict expression well above chance
    assert m["expression.handcrafted_ridge.pearson_pooled_mean"] > 0.3
    assert m["expression.handcrafted_ridge.mse_pooled"] < mse
    # two samples in the test set: random neighbours give purity 1, iLISI ~ the Simpson index
    counts = np.unique(np.asarray(adata.obs["batch"])[f.test], return_counts=True)[1]
    assert m["batch_mixing.image.knn_batch_purity_chance"] == 1.0
    assert m["batch_mixing.image.ilisi_chance"] == pytest.approx(1 / ((counts / n) ** 2).sum())
    assert "batch_mixing.image.ilisi_baseline" in m


def test_report_parses_names_chance_and_every_image_decodes(evaluated):
    _, _, out, r = evaluated
    m, n = r["metrics"], r["protocol"]["n_test"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.lower().startswith("<!doctype html>")
    tags, text, images = parse_report(page)
    # grouped tables, each metric beside its chance level and the hand-crafted baseline
    for heading in ("Retrieval", "Expression", "Batch mixing", "Provenance"):
        assert f"<h2>{heading}</h2>" in page
    assert tags.count("table") == 4 and "chance" in text
    assert "baseline: hand-crafted + ridge" in text
    assert "image → gene Recall@5 (all test spots)" in text
    row = re.search(r"image → gene Recall@5 \(all test spots\)</td>(.*?)</tr>", page, re.S)[1]
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    assert cells == [
        f"{m['retrieval.full.i2g.recall@5']:.4f}",
        f"{5 / n:.4f}",
        f"{m['retrieval.full.i2g.recall@5_baseline']:.4f}",
    ]
    # no raw key is a row label
    assert "retrieval.full.i2g.recall@5" not in text
    # figures: retrieval examples, expression maps, Pearson histogram, embeddings
    sizes = decode_images(images)
    assert len(sizes) == 4 and all(w > 100 and h > 100 for w, h in sizes)
    assert "true match" in text
    # provenance
    from histoxmodal.version import __version__

    for what in ("histoxmodal version", "split sha256", "dataset", "machine", "date"):
        assert what in text
    assert __version__ in text and r["protocol"]["split_sha256"] in text and "GPU" in text
