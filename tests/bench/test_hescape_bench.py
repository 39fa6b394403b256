"""``histoxmodal bench hescape``: the grid of image x gene towers on one split, each cell's
numbers recomputed here by other means (HEST's probe by hand with scikit-learn, in-batch recall
by hand, scib-metrics called directly), the table's shape, and a rerun that keeps cells."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("lightning")
pytest.importorskip("scib_metrics")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    import anndata as ad
    import scvi
    import yaml

    from histoxmodal.data.splits import make_split, write_split
    from histoxmodal.testing.paired import make_paired_dataset

    tmp = tmp_path_factory.mktemp("hescape")
    data = make_paired_dataset(tmp / "data", n_samples=3, spots_per_sample=48, n_genes=60)
    adata = ad.read_h5ad(data / "adata.h5ad")
    split = tmp / "sample.json"
    write_split(make_split(adata.obs, "sample"), split)
    sub = ad.AnnData(np.asarray(adata.X.todense(), np.float32))
    sub.var_names = list(adata.var_names)
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(sub)
    model = scvi.model.SCVI(sub, n_latent=4, n_hidden=16)
    model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    model.save(str(tmp / "scvi"))
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "genes": 40,
        "model": {"image_encoder": "test_image_resnet", "gene_encoder": "gene_mlp",
                  "gene_kwargs": {"hidden": [16], "out_dim": 8}, "embed_dim": 8},
        "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
    }))  # fmt: skip
    from histoxmodal.cli.main import main

    argv = ["bench", "hescape", "--data", str(data), "--image-encoders", "test_image_resnet",
            "--gene-encoders", "gene_mlp,gene_scvi", "--weights", f"gene_scvi={tmp / 'scvi'}",
            "--config", str(cfg), "--split", str(split), "--fold", "sample=S1",
            "--out", str(tmp / "out")]  # fmt: skip
    assert main(argv) == 0
    return tmp, data, split, argv


def test_every_cell_and_the_table(grid, capsys):
    tmp = grid[0]
    result = json.loads((tmp / "out" / "hescape_bench.json").read_text())
    assert set(result["cells"]) == {"test_image_resnet__gene_mlp", "test_image_resnet__gene_scvi"}
    assert (
        result["protocol"]["fold"] == "sample=S1" and len(result["protocol"]["split_sha256"]) == 64
    )
    for c in result["cells"].values():
        assert c["n_test"] == 48 and c["n_train"] == 96
        for d in ("image_to_gene", "gene_to_image"):
            assert c[f"in_batch.{d}.R@1"] <= c[f"in_batch.{d}.R@5"] <= c[f"in_batch.{d}.R@10"]
        assert c["in_batch.chance.R@5"] == pytest.approx(5 / 48)  # one partial batch of 48
        assert c["full.chance.R@5"] == pytest.approx(5 / 48)
        assert 0 <= c["scib.ilisi"] <= 1 and 0 <= c["scib.graph_connectivity"] <= 1
        assert len(c["top_genes"]) == 50 or len(c["top_genes"]) <= 40
    scvi_run = tmp / "out" / "runs" / "test_image_resnet__gene_scvi"
    assert (scvi_run / "gene_model" / "model.pt").is_file()  # the saved tower was used
    table = (tmp / "out" / "hescape_table.md").read_text()
    assert "| gene tower | test_image_resnet |" in table and "| gene_scvi |" in table
    assert "chance" in table and (tmp / "out" / "report.html").is_file()


def test_cell_numbers_recomputed_another_way(grid):
    """HEST's probe by hand (scikit-learn pipeline written out), in-batch recall by hand, and
    scib-metrics' iLISI called directly, from the run's own embeddings."""
    import scib_metrics
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    from histoxmodal.data.normalize import expression_matrix
    from histoxmodal.data.splits import Split
    from histoxmodal.data.store import load_paired
    from histoxmodal.workflows.run import Run

    tmp, data, split, _ = grid
    c = json.loads((tmp / "out" / "cells" / "test_image_resnet__gene_mlp.json").read_text())
    run = Run.load(c["run"])
    z = run.embed(data)
    adata, _ = load_paired(data)
    fold = Split.load(split).fold("sample=S1")
    tr, te = fold.train(adata.n_obs), np.asarray(fold.test)
    y = expression_matrix(adata, c["top_genes"])
    sc = StandardScaler().fit(z["image"][tr])
    k = min(256, len(tr), z["image"].shape[1])
    pca = PCA(k, random_state=0).fit(sc.transform(z["image"][tr]))
    x_tr, x_te = (
        pca.transform(sc.transform(z["image"][tr])),
        pca.transform(sc.transform(z["image"][te])),
    )
    alpha = 100 / (k * len(c["top_genes"]))
    pred = Ridge(alpha=alpha, solver="lsqr", fit_intercept=False, max_iter=1000,
                 random_state=0).fit(x_tr, y[tr]).predict(x_te)  # fmt: skip
    r = [np.corrcoef(pred[:, j], y[te][:, j])[0, 1] for j in range(y.shape[1])]
    assert c["hest.alpha"] == pytest.approx(alpha)
    assert c["hest.pearson_pooled"] == pytest.approx(np.nanmean(r), abs=1e-6)
    # in-batch: one batch of the 48 test spots in dataset order
    a, b = z["image"][te], z["gene"][te]
    sim = a @ b.T
    hits = ((sim > np.diag(sim)[:, None]).sum(1) < 5).mean()
    assert c["in_batch.image_to_gene.R@5"] == pytest.approx(hits)
    # one test sample: mixing is measured on every row (the 144 spots of 3 samples)
    assert c["mixing_rows"].startswith("all")
    samples = adata.obs["sample"].astype(str).to_numpy()
    x = z["image"]
    dist, idx = NearestNeighbors(n_neighbors=90).fit(x).kneighbors(x)
    ilisi = scib_metrics.ilisi_knn(NeighborsResults(indices=idx, distances=dist), samples)
    assert c["scib.ilisi"] == pytest.approx(float(ilisi), abs=1e-5)


def test_a_rerun_keeps_finished_cells(grid, capsys):
    from histoxmodal.cli.main import main

    tmp, _, _, argv = grid
    cell = tmp / "out" / "cells" / "test_image_resnet__gene_mlp.json"
    before = cell.stat().st_mtime_ns
    assert main(argv) == 0
    assert cell.stat().st_mtime_ns == before
    assert "| gene_mlp |" in capsys.readouterr().out


def test_bad_weights_option_is_one_line(tmp_path, capsys):
    from histoxmodal.cli.main import main

    argv = ["bench", "hescape", "--data", str(tmp_path), "--image-encoders", "a"]
    code = main([*argv, "--gene-encoders", "b", "--weights", "uni", "--out", str(tmp_path / "o")])
    assert code == 2 and "expected NAME=PATH" in capsys.readouterr().err
