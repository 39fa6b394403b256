"""The one Run: identity fixed at creation, written only after every check, loaded for every
kind of run; towers declare the batch inputs they read."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from histoxmodal.testing.paired import make_paired_dataset  # noqa: E402
from histoxmodal.training.config import config_from_dict  # noqa: E402
from histoxmodal.workflows.run import Run  # noqa: E402

TINY = {
    "genes": 12,
    "model": {"image_encoder": "test_uni", "gene_encoder": "test_gene_mlp", "embed_dim": 8},
    "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
}


def test_create_chooses_the_panel_on_training_rows_and_writes_nothing(tmp_path):
    from histoxmodal.data.normalize import highly_variable_genes
    from histoxmodal.data.splits import Split
    from histoxmodal.data.store import load_paired

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=24, n_genes=30)
    run = Run.create(tmp_path / "run", config_from_dict(TINY), data=data)
    assert not (tmp_path / "run").exists()
    adata, _ = load_paired(data)
    fold = Split.of_dataset(data).fold(0)
    assert run.genes == highly_variable_genes(adata, 12, rows=fold.train(adata.n_obs))
    assert run.kind == "spatial" and run.fold == "random" and run.n_batches == 2
    assert run.normalization == "log1p_cp10k"
    run.write_identity()
    ident = json.loads((tmp_path / "run" / "run.json").read_text())
    assert ident["split_sha256"] == Split.of_dataset(data).sha256 and ident["n_genes"] == 12
    again = Run.load(tmp_path / "run", require_weights=False)
    assert again.genes == run.genes and again.config == run.config
    run.check_same(again)
    torch.manual_seed(0)
    module = run.new_module()
    run.save(module)  # identity and weights: a run built by hand loads like a trained one
    loaded = Run.load(tmp_path / "run").module
    for a, b in zip(module.state_dict().values(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    other = Run.create(tmp_path / "run", config_from_dict({**TINY, "genes": 10}), data=data)
    with pytest.raises(ValueError, match="another genes, config.genes"):
        again.check_same(other)


def test_a_run_folder_from_before_run_json_still_loads(tmp_path):
    """Old runs kept data/split/fold/n_batches inside config.json; Run.load reads them."""
    from histoxmodal.workflows.train import train

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=16, n_genes=20)
    run = train(config_from_dict(TINY), tmp_path / "run", data=data, accelerator="cpu", devices=1)
    cfg = json.loads((run.path / "config.json").read_text())
    legacy = {**cfg, "data": str(data), "n_batches": 2, "split": None, "fold": 0}
    legacy.pop("kind")
    (run.path / "config.json").write_text(json.dumps(legacy))
    (run.path / "run.json").unlink()
    old = Run.load(run.path)
    assert old.kind == "spatial" and old.genes == run.genes and old.n_batches == 2
    za = old.embed(data)["image"]
    np.testing.assert_allclose(za, run.embed(data)["image"], rtol=1e-5, atol=1e-6)


def test_towers_declare_their_inputs_and_a_mismatch_is_refused():
    from histoxmodal.encoders import create_encoder
    from histoxmodal.errors import ConfigError
    from histoxmodal.training.multimodal import MultimodalModule, multimodal_config_from_dict

    assert create_encoder("test_ecg").inputs == ("ecg", "ecg_lead_mask")
    assert create_encoder("test_cxr").inputs == ("cxr",)
    assert create_encoder("test_report").inputs == ("report",)
    batch = {"ecg": torch.randn(2, 12, 250), "ecg_lead_mask": torch.ones(2, 12, dtype=bool)}
    ecg = create_encoder("test_ecg").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            ecg.forward_batch(batch, "cpu"), ecg(batch["ecg"], batch["ecg_lead_mask"])
        )
    cfg = multimodal_config_from_dict(
        {"modalities": {"cxr": {"encoder": "test_ecg"}, "report": {"encoder": "test_report"}}}
    )
    with pytest.raises(ConfigError, match="modalities.cxr: encoder 'test_ecg' consumes"):
        MultimodalModule(cfg)


@pytest.mark.parametrize(
    ("file", "text", "needle"),
    [
        ("run.json", '{"kind": ', "not valid JSON"),
        ("run.json", "[1, 2]", "expected a JSON object"),
        ("run.json", None, "kind='mil' is not one of cohort, spatial"),
        ("config.json", None, "the run's config is not valid"),
    ],
)
def test_a_corrupt_run_folder_is_bad_data_exit_1(tmp_path, capsys, file, text, needle):
    """A damaged run folder is bad data (``DataError``, exit 1), not a usage error."""
    from histoxmodal.cli.main import main
    from histoxmodal.errors import DataError

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=24, n_genes=30)
    run = Run.create(tmp_path / "run", config_from_dict(TINY), data=data)
    run.save(run.new_module())
    path = tmp_path / "run" / file
    if text is None and file == "run.json":
        text = json.dumps({**json.loads(path.read_text()), "kind": "mil"})
    elif text is None:
        cfg = json.loads(path.read_text())
        text = json.dumps({**cfg, "optim": {**cfg["optim"], "lr": -1}})
    path.write_text(text)
    with pytest.raises(DataError, match=needle):
        Run.load(tmp_path / "run")
    assert main(["fit-head", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert needle.split("(")[0] in err and "Traceback" not in err
