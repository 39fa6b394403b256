"""`histoxmodal demo`: the whole path (generate, tile, build, train, evaluate) on generated data."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")


def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    from histoxmodal.cli.main import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-epochs", "1"]) == 0
    printed = capsys.readouterr()
    assert "[5/5] evaluating" in printed.err
    assert "retrieval.full.i2g.recall@5" in printed.out
    for name in ("S1", "S2", "S3"):
        manifest = json.loads((out / "tiles" / name / "manifest.json").read_text())
        assert manifest["status"] == "ok" and manifest["n_tiles"] > 0
    paired = json.loads((out / "paired" / "manifest.json").read_text())
    assert paired["status"] == "complete"
    assert sorted(paired["samples"]) == ["S1", "S2", "S3"]
    result = json.loads((out / "report" / "metrics.json").read_text())
    # evaluated on the held-out sample S3 only
    assert result["protocol"]["n_test"] == paired["samples"]["S3"]["n_spots"]
    for key in ("retrieval.full.i2g.recall@5", "expression.ridge.pearson_pooled_mean"):
        assert 0.0 <= result["metrics"][key] <= 1.0
    html = (out / "report" / "report.html").read_text()
    assert html.lower().startswith("<!doctype html>") and "data:image/png;base64," in html
    # a second run finds every step complete and redoes only the evaluation
    assert main(["demo", "--out", str(out), "--max-epochs", "1"]) == 0


def test_medical_demo_writes_metrics_for_both_losses(tmp_path, capsys):
    pytest.importorskip("monai")
    pytest.importorskip("wfdb")
    from histoxmodal.cli.main import main

    out = tmp_path / "med"
    argv = ["demo", "--medical", "--out", str(out), "--patients", "120", "--max-epochs", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "[4/5] training with clip_pairwise" in printed.err
    assert "symile" in printed.out and "chance" in printed.out
    result = json.loads((out / "metrics.json").read_text())
    for loss in ("symile", "clip_pairwise"):
        for target in ("cxr", "ecg", "report"):
            acc = result["metrics"][f"zero_shot.{loss}.{target}.accuracy@k10"]
            assert 0.0 <= acc <= 1.0
        assert f"retrieval.{loss}.cxr_to_ecg.recall@5" in result["metrics"]
    assert result["protocol"]["k"] == 10 and len(result["protocol"]["runs"]) == 2
    html = (out / "report.html").read_text()
    assert "symile" in html and "clip_pairwise" in html
    # the cohort went through the real files and readers
    store = json.loads((out / "cohort" / "manifest.json").read_text())
    assert store["n_rows"] == 120 and store["present"]["cxr"] == 120 and not store["failures"]
