"""predict_expression / fit_expression_head: heads on a run's embeddings, predictions in an
AnnData layer, a saved head that predicts without the training dataset."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from histoxmodal.errors import ConfigError

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


def test_a_head_reads_section_centred_embeddings_beside_their_neighbourhood(trained):
    import json

    from histoxmodal.data.store import load_paired
    from histoxmodal.heads import RetrievalHead, RidgeHead
    from histoxmodal.workflows.predict import HeadInputs, fit_expression_head, predict_expression

    _, data, run = trained
    inputs = HeadInputs(context_um=150.0, centre=True, smooth_um=120.0)
    fitted = fit_expression_head(run, head="ridge", n_genes=4, name="ctx", inputs=inputs)
    meta = json.loads((run.path / "heads" / "ctx" / "head.json").read_text())
    targets = {**meta["inputs"], "genes": meta["outputs"]["names"]}
    assert targets["context_um"] == 150.0 and targets["centre"] is True
    assert targets["smooth_um"] == 0.0  # smoothing is for retrieval only
    assert meta["outputs"]["normalization"] == "log1p_cp10k" and len(targets["genes"]) == 4
    assert meta["provenance"]["fold"] == run.fold
    assert fitted.inputs == HeadInputs(150.0, True, 0.0)
    # the same features by hand: each section's embeddings minus their mean, beside the mean
    # of the other spots of the section within 150 µm (coordinates are µm in this dataset)
    adata, _ = load_paired(data)
    z = run.embed(data)["image"].astype(np.float64)
    xy = np.asarray(adata.obsm["spatial"])
    sample = adata.obs["sample"].astype(str).to_numpy()
    x = np.zeros((len(z), 2 * z.shape[1]))
    n_with = 0
    for i in range(len(z)):
        same = sample == sample[i]
        c = z[same] - z[same].mean(0)
        own = c[np.flatnonzero(np.flatnonzero(same) == i)[0]]
        d = np.linalg.norm(xy[same] - xy[i], axis=1)
        near = (d <= 150.0) & (np.flatnonzero(same) != i)
        n_with += near.any()
        x[i] = np.r_[own, c[near].mean(0) if near.any() else own]
    assert 0 < n_with < len(z)  # some spots have neighbours within 150 µm, some none
    tr = run.training_fold().train(adata.n_obs)
    y = _log_cp10k(np.asarray(adata.X.todense(), np.float64))
    y = y[:, adata.var_names.get_indexer(targets["genes"])]
    groups = sample[tr]
    want = RidgeHead().fit(x[tr].astype(np.float32), y[tr], groups=groups)
    out = predict_expression(run.path, data, head="ctx")
    np.testing.assert_allclose(
        out.layers["predicted"], want.predict(x.astype(np.float32)), rtol=1e-4, atol=1e-5
    )
    # the loaded head applies its own inputs: raw embeddings, spot centres and sections in
    loaded = run.load_head("ctx")
    assert loaded.inputs == inputs.for_head("ridge") and list(loaded.outputs) == targets["genes"]
    np.testing.assert_allclose(
        loaded.predict(z.astype(np.float32), coords_um=xy, groups=sample),
        want.predict(x.astype(np.float32)),
        rtol=1e-4,
        atol=1e-5,
    )
    with pytest.raises(ConfigError, match="within 150 µm.*pass coords_um="):
        loaded.predict(z.astype(np.float32), groups=sample)
    with pytest.raises(ConfigError, match="groups has 3 rows"):
        loaded.predict(z.astype(np.float32), coords_um=xy, groups=sample[:3])
    assert out.uns["prediction"]["context_um"] == 150.0 and out.uns["prediction"]["centre"]
    # the retrieval head matches image queries against the gene embeddings of the training
    # spots, both centred on their section's mean and then averaged half-and-half with the
    # mean over the section's other spots within 120 µm; no neighbour context
    assert HeadInputs.of(run, "retrieval", {**targets, "smooth_um": 7}) == HeadInputs(0, True, 7)
    fit_expression_head(run, head="retrieval", n_genes=4, name="ret", inputs=inputs)
    zb = run.embed(data)["gene"].astype(np.float64)

    def centred_smoothed(e):
        c = np.zeros_like(e)
        for s_ in np.unique(sample):
            r = sample == s_
            c[r] = e[r] - e[r].mean(0)
        out = c.copy()
        for i in range(len(e)):
            d = np.linalg.norm(xy - xy[i], axis=1)
            near = (d <= 120.0) & (sample == sample[i]) & (np.arange(len(e)) != i)
            out[i] = 0.5 * c[i] + 0.5 * (c[near].mean(0) if near.any() else c[i])
        return out.astype(np.float32)

    za_c, zb_c = centred_smoothed(z), centred_smoothed(zb)
    want = RetrievalHead().fit(zb_c[tr], y[tr])
    out = predict_expression(run.path, data, head="ret")
    p = out.uns["prediction"]
    assert p["context_um"] == 0.0 and p["centre"] and p["smooth_um"] == 120.0
    np.testing.assert_allclose(out.layers["predicted"], want.predict(za_c), rtol=1e-4, atol=1e-5)
