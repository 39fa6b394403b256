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
