"""histoxmodal evaluate: metrics.json and the HTML report of a trained spatial run."""

from __future__ import annotations

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
    page = (tmp_path / "eval" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "image → gene Recall@5" in page
    assert r["protocol"]["overlap"] == {"n_test_spots_trained_on": 0, "allowed": False}
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
