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
