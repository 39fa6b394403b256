"""The encoders ``histoxmodal features`` can run and ``histoxmodal models`` lists."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_models_lists_every_image_encoder_with_its_metadata(capsys):
    from histoxmodal.cli.main import main
    from histoxmodal.encoders import create_encoder
    from histoxmodal.workflows.extractor import list_models

    rows = {m["name"]: m for m in list_models()}
    assert {"uni", "conch", "virchow2", "h_optimus_0", "gigapath", "phikon", "ctranspath"} <= set(
        rows
    )
    assert not any(n.startswith("test_") for n in rows)
    assert rows["conch"]["input_size"] == 448 and rows["uni"]["mpp"] == 0.5
    for name, m in rows.items():
        assert m["licence"] and m["weights"], name
        with torch.device("meta"):  # the stated output size is the architecture's
            assert create_encoder(name).embed_dim == m["dim"], name
    for m in list_models("test_*", include_tests=True):
        assert create_encoder(m["name"]).embed_dim == m["dim"], m["name"]
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "virchow2" in text and "2560" in text and "CC-BY-NC-ND-4.0" in text


def test_models_lists_the_gene_towers_with_input_dim_weights_and_licence(capsys):
    from histoxmodal.cli.main import main
    from histoxmodal.encoders import create_encoder
    from histoxmodal.workflows.extractor import list_gene_models

    rows = {m["name"]: m for m in list_gene_models()}
    assert set(rows) == {
        "gene_mlp",
        "gene_transformer",
        "gene_scvi",
        "gene_drvi",
        "gene_nicheformer",
    }
    for name, m in rows.items():
        assert m["licence"] and m["weights"] and m["input"], name
    assert rows["gene_drvi"]["weights"].startswith("required") and rows["gene_drvi"]["input"]
    assert (
        rows["gene_mlp"]["input"].startswith("log1p") and "raw counts" in rows["gene_scvi"]["input"]
    )
    for name in ("gene_mlp", "gene_transformer"):  # the stated size is the tower's
        assert create_encoder(name, n_genes=20).embed_dim == rows[name]["dim"]
    for m in list_gene_models("test_*", include_tests=True):
        if isinstance(m["dim"], int):
            assert create_encoder(m["name"], n_genes=20).embed_dim == m["dim"], m["name"]
    assert main(["models", "gene_*"]) == 0
    text = capsys.readouterr().out
    assert "gene_drvi" in text and "BSD-3-Clause (drvi-py)" in text and "virchow2" not in text
