"""predict_expression / fit_expression_head: heads on a run's embeddings, predictions in an
AnnData layer, a saved head that predicts without the training dataset."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("lightning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from histoxmodal.testing.paired import make_paired_dataset
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.train import train

    tmp = tmp_path_factory.mktemp("predict")
    data = make_paired_dataset(tmp / "data", spots_per_sample=32, n_states=3)
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {"image_encoder": "test_uni", "gene_encoder": "test_gene_mlp", "embed_dim": 8},
            "optim": {"batch_size": 16, "max_epochs": 2, "num_workers": 0},
        }
    )
    run = train(cfg, tmp / "run", data=data, accelerator="cpu", devices=1)
    return tmp, data, run


def _log_cp10k(counts: np.ndarray) -> np.ndarray:
    return np.log1p(1e4 * counts / counts.sum(1, keepdims=True))


def test_predict_expression_into_a_layer(trained):
    from histoxmodal.data.splits import Split
    from histoxmodal.data.store import load_paired
    from histoxmodal.heads import MLPHead, RetrievalHead, RidgeHead
    from histoxmodal.workflows.predict import predict_expression

    _, data, run = trained
    adata, _ = load_paired(data)
    fold = Split.of_dataset(data).fold(0)
    tr, te = fold.train(adata.n_obs), fold.test
    genes = list(adata.var_names[:5])
    counts = np.asarray(adata.X.todense(), np.float64)
    y = _log_cp10k(counts)[:, :5]
    z = run.embed(data)
    groups = np.asarray(adata.obs["sample"].astype(str))[tr]
    expected = {
        "ridge": RidgeHead().fit(z["image"][tr], y[tr], groups=groups).predict(z["image"][te]),
        "mlp": MLPHead().fit(z["image"][tr], y[tr], groups=groups).predict(z["image"][te]),
        "retrieval": RetrievalHead().fit(z["gene"][tr], y[tr]).predict(z["image"][te]),
    }
    for head, want in expected.items():
        out = predict_expression(run.path, data, head=head, genes=genes)
        assert list(out.obs_names) == list(adata.obs_names[te]) and list(out.var_names) == genes
        # X holds the measured log1p-CP10k expression of exactly the test spots
        np.testing.assert_allclose(out.X, y[te], rtol=1e-6)
        # the prediction equals the same head fitted by hand on the run's embeddings
        np.testing.assert_allclose(out.layers["predicted"], want, rtol=1e-4, atol=1e-5)
        assert out.uns["prediction"]["head"] == head and out.uns["prediction"]["fold"] == "random"
    with pytest.raises(ValueError, match="head='lasso'"):
        predict_expression(run.path, data, head="lasso")


def test_a_saved_head_predicts_without_the_training_data(trained):
    from histoxmodal.data.store import load_paired
    from histoxmodal.workflows.predict import fit_expression_head, predict_expression
    from histoxmodal.workflows.run import Run

    tmp, data, run = trained
    head = fit_expression_head(run, head="ridge", n_genes=4)
    assert Run.load(run.path).heads == ["expression_ridge"]
    # a copy of the dataset, and the training dataset gone: the run still predicts
    copy = tmp / "new_section"
    shutil.copytree(data, copy)
    moved = tmp / "moved_away"
    data.rename(moved)
    try:
        out = predict_expression(run.path, copy, head="expression_ridge")
    finally:
        moved.rename(data)
    adata, _ = load_paired(copy)
    assert out.n_obs == adata.n_obs and out.n_vars == 4
    z = Run.load(run.path).embed(copy)["image"]
    np.testing.assert_allclose(out.layers["predicted"], head.predict(z), rtol=1e-5, atol=1e-6)
    want = _log_cp10k(np.asarray(adata.X.todense(), np.float64))
    np.testing.assert_allclose(out.X, want[:, adata.var_names.get_indexer(out.var_names)])
