"""Gene towers from saved scvi-tools folders (scVI, DRVI): a tiny model saved with the library's
own ``save``, loaded by folder through the real path, checked against the library's
``get_latent_representation`` on the same counts; gene mapping by name; the restricted reader."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from histoxmodal.errors import ConfigError, WeightsError

pytest.importorskip("scvi")

GENES = [f"G{i}" for i in range(30)]


def _adata(n=160, genes=GENES, seed=0):
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(1.0, 2.0, (1, len(genes))), (n, len(genes))).astype(np.float32)
    obs = pd.DataFrame(
        {"patient": np.repeat(["A", "B"], n // 2)}, index=[f"s{i}" for i in range(n)]
    )
    a = ad.AnnData(counts, obs=obs)
    a.var_names = list(genes)
    return a


@pytest.fixture(scope="module")
def saved_scvi(tmp_path_factory):
    import scvi

    a = _adata()
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(a, batch_key="patient")
    model = scvi.model.SCVI(a, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False)
    folder = tmp_path_factory.mktemp("scvi") / "model"
    model.save(str(folder))
    return folder, a, model.get_latent_representation(a, give_mean=True)


@pytest.fixture(scope="module")
def saved_drvi(tmp_path_factory):
    drvi = pytest.importorskip("drvi")
    import scvi

    a = _adata(seed=1)
    scvi.settings.seed = 0
    drvi.model.DRVI.setup_anndata(a, categorical_covariate_keys=["patient"], is_count_data=True)
    model = drvi.model.DRVI(a, n_latent=6, encoder_dims=[16], decoder_dims=[16])
    model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False)
    folder = tmp_path_factory.mktemp("drvi") / "model"
    model.save(str(folder))
    return folder, a, model.get_latent_representation(a)


def _embed(tower, counts):
    tower.eval()
    with torch.no_grad():
        return tower(torch.from_numpy(np.asarray(counts, np.float32))).numpy()


@pytest.mark.parametrize("name", ["gene_scvi", "gene_drvi"])
def test_a_saved_folder_embeds_as_the_library_does(name, saved_scvi, saved_drvi):
    from histoxmodal.encoders import create_encoder

    folder, a, want = saved_scvi if name == "gene_scvi" else saved_drvi
    tower = create_encoder(name, weights=str(folder), genes=list(a.var_names))
    assert tower.embed_dim == want.shape[1] and tower.missing_genes == 0
    np.testing.assert_allclose(_embed(tower, a.X), want, rtol=1e-5, atol=1e-6)
    assert tower.saved["model"] == ("SCVI" if name == "gene_scvi" else "DRVI")
    assert len(tower.weights_sha256) == 64


def test_genes_are_mapped_by_name_and_missing_ones_zero_filled(saved_scvi, caplog):
    from histoxmodal.encoders import create_encoder

    folder, a, _ = saved_scvi
    # the dataset: the model's genes shuffled, 5 of them absent, 3 it does not know
    rng = np.random.default_rng(3)
    kept = [g for g in GENES if g not in {"G0", "G7", "G8", "G20", "G29"}]
    data_genes = [*rng.permutation(kept), "X1", "X2", "X3"]
    counts = np.asarray(a.X)
    data = np.zeros((len(counts), len(data_genes)), np.float32)
    for j, g in enumerate(data_genes):
        if g in GENES:
            data[:, j] = counts[:, GENES.index(g)]
        else:
            data[:, j] = 99.0  # a gene the model does not have must not leak in
    with caplog.at_level("INFO", logger="histoxmodal.encoders.scvi_models"):
        tower = create_encoder("gene_scvi", weights=str(folder), genes=data_genes)
    assert tower.missing_genes == 5 and "5 zero-filled" in caplog.text
    # by hand: the model's own genes, the missing ones zero
    by_hand = counts.copy()
    by_hand[:, [GENES.index(g) for g in ("G0", "G7", "G8", "G20", "G29")]] = 0.0
    plain = create_encoder("gene_scvi", weights=str(folder), genes=GENES)
    np.testing.assert_allclose(_embed(tower, data), _embed(plain, by_hand), rtol=1e-6)
    with pytest.raises(ConfigError, match="none of its 30 genes"):
        create_encoder("gene_scvi", weights=str(folder), genes=["ENSG1", "ENSG2"])


def test_frozen_or_fine_tuned(saved_scvi):
    from histoxmodal.encoders import create_encoder

    folder, a, _ = saved_scvi
    frozen = create_encoder("gene_scvi", weights=str(folder), genes=GENES, freeze=True)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.module.training  # dropout stays off in a frozen encoder
    tuned = create_encoder("gene_scvi", weights=str(folder), genes=GENES)
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("module.z_encoder.") for n in trainable)
    out = tuned(torch.from_numpy(np.asarray(a.X[:8], np.float32)))
    out.sum().backward()
    grads = {n: p.grad for n, p in tuned.named_parameters() if "z_encoder.mean_encoder" in n}
    assert grads and all(g is not None for g in grads.values())


def test_wrong_folders_are_one_clear_error(saved_scvi, saved_drvi, tmp_path):
    from histoxmodal.encoders import create_encoder

    with pytest.raises(ConfigError, match="not a folder"):
        create_encoder("gene_scvi", weights=str(tmp_path / "nope"), genes=GENES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model.pt"):
        create_encoder("gene_scvi", weights=str(tmp_path / "empty"), genes=GENES)
    with pytest.raises(ConfigError, match="use the gene tower made for it \\(gene_scvi\\)"):
        create_encoder("gene_drvi", weights=str(saved_scvi[0]), genes=GENES)
    with pytest.raises(ConfigError, match="needs a saved DRVI model"):
        create_encoder("gene_drvi", genes=GENES)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read as a saved scvi-tools model"):
        create_encoder("gene_scvi", weights=str(tmp_path / "junk"), genes=GENES)


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_a_model_file_with_code_is_refused_not_run(tmp_path):
    """The reader resolves data globals only: a pickled call to os.system is refused."""
    from histoxmodal.encoders.scvi_models import read_saved_model

    (tmp_path / "evil").mkdir()
    torch.save({"model_state_dict": {}, "attr_dict": {"x": _Boom()}}, tmp_path / "evil/model.pt")
    with pytest.raises(WeightsError, match="refused global (posix|os).system"):
        read_saved_model(tmp_path / "evil")
    # the refusal is the reader's own doing, whatever the file
    import io

    from histoxmodal.encoders.scvi_models import RestrictedUnpickler

    with pytest.raises(pickle.UnpicklingError):
        RestrictedUnpickler(io.BytesIO(b"")).find_class("os", "system")
    assert RestrictedUnpickler(io.BytesIO(b"")).find_class("collections", "OrderedDict")


def test_a_run_trains_with_a_saved_gene_model_and_reloads_without_it(tmp_path):
    """model.gene_weights through `train`: the tower is the saved scVI (frozen here, so its
    output after training equals the saved model's latent means), the run keeps its own copy
    of the folder and reloads after the original is gone."""
    pytest.importorskip("lightning")
    import shutil

    import anndata as ad
    import scvi

    from histoxmodal.testing.paired import make_paired_dataset
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.run import Run
    from histoxmodal.workflows.train import train

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=32, n_genes=40)
    adata = ad.read_h5ad(data / "adata.h5ad")
    # the gene model knows 30 of the dataset's genes and 4 others
    genes = list(adata.var_names[:30])
    sub = ad.AnnData(
        np.hstack([np.asarray(adata[:, genes].X.todense()), np.ones((adata.n_obs, 4))]),
        obs=adata.obs[["sample"]].copy(),
    )
    sub.var_names = [*genes, "Z1", "Z2", "Z3", "Z4"]
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(sub, batch_key="sample")
    model = scvi.model.SCVI(sub, n_latent=5, n_hidden=16)
    model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False)
    model.save(str(tmp_path / "gene_model"))
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {
                "image_encoder": "test_image_resnet",
                "gene_encoder": "gene_scvi",
                "gene_weights": str(tmp_path / "gene_model"),
                "gene_kwargs": {"freeze": True},
            },
            "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
        }
    )
    run = train(cfg, tmp_path / "run", data=data, accelerator="cpu", devices=1)
    assert (tmp_path / "run" / "gene_model" / "model.pt").is_file()
    shutil.rmtree(tmp_path / "gene_model")
    again = Run.load(tmp_path / "run")
    tower = again.module.gene
    assert tower.missing_genes == 4 and tower.saved["model"] == "SCVI"
    # frozen: the trained run's gene tower is the saved model, on the run's own panel
    counts = np.asarray(adata[:, run.genes].X.todense(), np.float32)
    panel = ad.AnnData(np.zeros((len(counts), sub.n_vars), np.float32))
    panel.var_names = sub.var_names
    for j, g in enumerate(sub.var_names):
        if g in run.genes:
            panel.X[:, j] = counts[:, run.genes.index(g)]
    panel.obs["sample"] = adata.obs["sample"].values
    want = model.get_latent_representation(panel, give_mean=True)
    with torch.no_grad():
        got = tower(torch.from_numpy(counts)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_with_no_panel_size_a_run_reads_the_saved_models_genes(tmp_path):
    """genes: null and model.gene_weights: the panel is the saved model's genes that the
    dataset measures, in the model's order (not every gene of the dataset)."""
    pytest.importorskip("lightning")
    import anndata as ad
    import scvi

    from histoxmodal.testing.paired import make_paired_dataset
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.run import Run

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=16, n_genes=40)
    adata = ad.read_h5ad(data / "adata.h5ad")
    model_genes = [*reversed(list(adata.var_names[5:25])), "NOT_MEASURED"]
    sub = ad.AnnData(np.random.default_rng(0).poisson(2, (40, len(model_genes))).astype(float))
    sub.var_names = model_genes
    scvi.model.SCVI.setup_anndata(sub)
    scvi.model.SCVI(sub, n_latent=3, n_hidden=8).save(str(tmp_path / "gm"))
    cfg = config_from_dict({"genes": None, "model": {
        "image_encoder": "test_image_resnet", "gene_encoder": "gene_scvi",
        "gene_weights": str(tmp_path / "gm")}})  # fmt: skip
    run = Run.create(tmp_path / "run", cfg, data=data)
    assert run.genes == model_genes[:-1]
    assert Run.create(
        tmp_path / "run2", config_from_dict({"genes": None}), data=data
    ).genes == list(adata.var_names)
