"""histoxmodal evaluate: metrics.json and the HTML report of a trained spatial run."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

from histoxmodal.testing.paired import make_paired_dataset
from histoxmodal.training.config import config_from_dict
from histoxmodal.workflows.train import train


def test_evaluate_writes_metrics_and_report(tmp_path, capsys):
    import json

    from histoxmodal.cli.main import main

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=64, n_states=4)
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {
                "image_encoder": "test_uni",
                "gene_encoder": "test_gene_mlp",
                "embed_dim": 16,
            },
            "optim": {"lr": 3e-3, "batch_size": 32, "max_epochs": 20, "num_workers": 0},
        }
    )
    train(cfg, tmp_path / "run", data=data, accelerator="cpu", devices=1)
    split = data / "splits" / "random.json"
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run"),
                str(data),
                "--split",
                str(split),
                "--out",
                str(tmp_path / "eval"),
                "--in-batch-size",
                "16",
            ]
        )
        == 0
    )
    r = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    m = r["metrics"]
    for key in (
        "retrieval.full.i2g.recall@5",
        "retrieval.full.g2i.median_rank",
        "retrieval.in_batch_B16.i2g.recall@1",
        "expression.ridge.pearson_pooled_mean",
        "batch_mixing.gene.ilisi",
    ):
        assert key in m
    assert r["protocol"]["split_sha256"] == json.loads(split.read_text())["sha256"]
    assert r["protocol"]["n_test"] == round(0.2 * 128) and len(r["protocol"]["genes"]) == 50
    assert m["retrieval.in_batch_B16.i2g.recall@5"] >= m["retrieval.full.i2g.recall@5"]
    assert m["expression.ridge.pearson_pooled_mean"] > 0.3  # the states drive both modalities
    # Moran's I of the predicted and measured maps, per gene and averaged
    from histoxmodal.data.neighbours import spot_coords_um
    from histoxmodal.data.normalize import expression_matrix
    from histoxmodal.data.splits import Split as _Split
    from histoxmodal.data.store import load_paired as _load
    from histoxmodal.evaluation.spatial import morans_i

    per = r["per_gene_morans_i"]
    genes = r["protocol"]["genes"]
    assert list(per) == genes
    adata = _load(data)[0]
    test = np.sort(_Split.load(split).fold(0).test)
    measured = morans_i(
        expression_matrix(adata, genes, rows=test),
        spot_coords_um(adata, test),
        adata.obs["sample"].astype(str).to_numpy()[test],
        genes=genes,
    )
    assert [per[g]["measured"] for g in genes] == pytest.approx([measured[g] for g in genes])
    predicted = np.mean([per[g]["predicted"] for g in genes])
    assert m["spatial.morans_i.predicted_mean"] == pytest.approx(predicted)
    assert m["spatial.morans_i.predicted_mean_chance"] == pytest.approx(-1 / (len(test) - 1))
    assert "spatial.morans_i.predicted_mean_baseline" in m
    page = (tmp_path / "eval" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "image → gene Recall@5" in page
    assert r["protocol"]["overlap"] == {"n_test_spots_trained_on": 0, "allowed": False}
    title = f"Evaluation of {tmp_path.name}/run on {tmp_path.name}/data"
    assert f"<title>{title}</title>" in page or title in page
    capsys.readouterr()

    # scoring spots the run trained on is refused: another split, or the whole dataset
    from histoxmodal.data.splits import Split, make_split, write_split
    from histoxmodal.data.store import load_paired

    trained = set(Split.load(split).fold(0).train(128).tolist())
    other = tmp_path / "sample.json"
    write_split(make_split(load_paired(data)[0].obs, "sample"), other)
    leaked = len(trained & set(Split.load(other).fold(0).test.tolist()))
    assert leaked > 0
    base = ["evaluate", str(tmp_path / "run"), "--data", str(data), "--in-batch-size", "16"]
    assert main([*base, "--split", str(other), "--out", str(tmp_path / "ev2")]) == 2
    err = capsys.readouterr().err
    assert f"{leaked} of the " in err and "training spots" in err and "--allow-overlap" in err
    assert not (tmp_path / "ev2").exists()
    assert main([*base, "--out", str(tmp_path / "ev3")]) == 2  # whole dataset as test
    assert f"{len(trained)} of the 128 test spots" in capsys.readouterr().err
    # --allow-overlap scores them, stamped in metrics.json and the report
    argv = [*base, "--split", str(other), "--out", str(tmp_path / "ev4"), "--allow-overlap"]
    assert main(argv) == 0
    r = json.loads((tmp_path / "ev4" / "metrics.json").read_text())
    assert r["protocol"]["overlap"] == {"n_test_spots_trained_on": leaked, "allowed": True}
    assert "not a held-out result" in (tmp_path / "ev4" / "report.html").read_text()


def test_a_split_of_another_dataset_is_refused(tmp_path, capsys):
    """A smaller dataset's split used to score arbitrary rows with exit 0; a bigger one's gave an
    IndexError. Both are refused, naming the split and the dataset."""
    from histoxmodal.cli.main import main

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=32, n_states=3)
    small = make_paired_dataset(tmp_path / "small", spots_per_sample=16, n_states=3)
    big = make_paired_dataset(tmp_path / "big", spots_per_sample=48, n_states=3)
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {"image_encoder": "test_uni", "gene_encoder": "test_gene_mlp", "embed_dim": 8},
            "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
        }
    )
    train(cfg, tmp_path / "run", data=data, accelerator="cpu", devices=1)
    for other, n in ((small, 32), (big, 96)):
        split = other / "splits" / "random.json"
        argv = ["evaluate", str(tmp_path / "run"), str(data), "--split", str(split)]
        assert main([*argv, "--out", str(tmp_path / "eval")]) == 2
        err = capsys.readouterr().err
        assert f"made for {n} rows, but {data} has 64" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.fixture(scope="module")
def her2st_parts(data_dir, tmp_path_factory):
    """her2st B4 + C2 (training), C3 alone and B4 + C2 + C3, small patches."""
    from histoxmodal.data.recipes import find_samples, load_recipe
    from histoxmodal.workflows.build import PairedConfig, build_paired

    root = tmp_path_factory.mktemp("her2st_parts")
    refs = find_samples(load_recipe("her2st"), [data_dir / "her2st"])
    cfg = PairedConfig(patch_um=112, patch_px=32, min_counts=0)
    out = {}
    for name, samples in (("tr", ("B4", "C2")), ("c3", ("C3",)), ("all", ("B4", "C2", "C3"))):
        chosen = [r for r in refs if r.sample in samples]
        out[name] = root / name
        build_paired(chosen, out[name], cfg, recipe="her2st", workers=2)
    return out


def test_another_datasets_sections_get_their_own_batch_statistics(her2st_parts, tmp_path):
    """A dataset built apart numbers its sections from 0, so C3 alone got the batch id of B4,
    a section the batch-conditioned gene tower trained on, and was normalised with B4's
    statistics (and no AdaBN). The run now maps batch names to its own ids; a section it never
    knew gets a new id and its own statistics, so C3 embeds the same alone or beside others,
    and evaluate's headline retrieval equals what the public API gives for the stated inputs."""
    from histoxmodal.data.store import load_paired
    from histoxmodal.evaluation.retrieval import cross_modal_retrieval
    from histoxmodal.workflows.evaluate import evaluate
    from histoxmodal.workflows.predict import HeadInputs
    from histoxmodal.workflows.run import Run

    cfg = config_from_dict(
        {
            "genes": 50,
            "model": {
                "image_encoder": "test_image_resnet",
                "gene_encoder": "test_gene_mlp",
                "embed_dim": 8,
            },
            "correction": {"batch_conditioned_genes": True, "batch_key": "sample"},
            "optim": {"batch_size": 64, "max_epochs": 1, "num_workers": 0},
            "head": {"expression": None, "centre": True, "smooth_um": 450},
        }
    )
    train(cfg, tmp_path / "run", data=her2st_parts["tr"], accelerator="cpu", devices=1)
    run = Run.load(tmp_path / "run")
    assert run.batch_names == ["B4", "C2"]
    alone = run.embed(her2st_parts["c3"])["gene"]
    adata, _ = load_paired(her2st_parts["all"])
    rows = np.flatnonzero(adata.obs["sample"] == "C3")
    beside = Run.load(tmp_path / "run").embed(her2st_parts["all"])["gene"][rows]
    # the two datasets differ only in their gene intersections (library sizes of log1p-CP10k)
    np.testing.assert_allclose(alone, beside, atol=0.01)
    # what it was: C3 read with B4's id and statistics
    borrowed = Run.load(tmp_path / "run")
    borrowed.batch_names = ["C3", "C2"]
    old = borrowed.embed(her2st_parts["c3"])["gene"]
    assert np.abs(old - beside).max() > 10 * np.abs(alone - beside).max()
    # evaluate on the dataset of C3 alone: its headline retrieval, recomputed by hand
    r = evaluate(Run.load(tmp_path / "run"), her2st_parts["c3"], tmp_path / "ev", n_genes=20)
    assert r["protocol"]["retrieval_inputs"] == {
        "context_um": 0.0,
        "centre": True,
        "smooth_um": 450.0,
    }
    from histoxmodal.data.neighbours import spot_coords_um

    c3, _ = load_paired(her2st_parts["c3"])
    z = Run.load(tmp_path / "run").embed(her2st_parts["c3"])
    xy = spot_coords_um(c3)
    ri = HeadInputs(0.0, True, 450.0)
    by_hand = cross_modal_retrieval(ri.apply(z["image"], xy), ri.apply(z["gene"], xy))
    assert r["metrics"]["retrieval.full.i2g.recall@5"] == pytest.approx(
        by_hand["image_to_gene"]["R@5"]
    )
    assert r["metrics"]["retrieval.full.g2i.recall@5"] == pytest.approx(
        by_hand["gene_to_image"]["R@5"]
    )
    # the same run read with head.retrieval_score csls: the whole-test-set recall is CSLS over
    # cosines (dense, by hand), the in-batch recall stays HESCAPE's inner product
    from dataclasses import replace

    csls_run = Run.load(tmp_path / "run")
    csls_run.config = replace(
        csls_run.config, head=replace(csls_run.config.head, retrieval_score="csls", csls_k=7)
    )
    r2 = evaluate(csls_run, her2st_parts["c3"], tmp_path / "ev_csls", n_genes=20)
    assert r2["protocol"]["retrieval_score"] == {"score": "csls", "csls_k": 7}
    a, b = ri.apply(z["image"], xy), ri.apply(z["gene"], xy)
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (
        b / np.linalg.norm(b, axis=1, keepdims=True)
    ).T
    r_row = np.sort(cos, axis=1)[:, -7:].mean(axis=1)
    r_col = np.sort(cos, axis=0)[-7:, :].mean(axis=0)
    s = 2 * cos - r_row[:, None] - r_col[None, :]
    i2g = np.array([(s[i] > s[i, i]).sum() for i in range(len(s))])
    g2i = np.array([(s[:, i] > s[i, i]).sum() for i in range(len(s))])
    assert r2["metrics"]["retrieval.full.i2g.recall@5"] == pytest.approx(np.mean(i2g < 5))
    assert r2["metrics"]["retrieval.full.g2i.recall@5"] == pytest.approx(np.mean(g2i < 5))
    assert r2["metrics"]["retrieval.in_batch_B128.i2g.recall@5"] == pytest.approx(
        r["metrics"]["retrieval.in_batch_B128.i2g.recall@5"]
    )
