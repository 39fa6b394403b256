"""Saving and loading heads: the folder format, clear errors, atomic replacement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoxmodal.errors import ConfigError, HeadFolderError
from histoxmodal.heads import Head, MLPHead, RidgeHead, load_head
from histoxmodal.heads.base import FORMAT_VERSION


@pytest.fixture
def ridge():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5))
    return RidgeHead(alphas=(1.0, 10.0), cv=3).fit(x, x @ rng.standard_normal((5, 2))), x


def test_head_json_holds_name_params_fitted_and_version(ridge, tmp_path):
    head, _ = ridge
    meta = json.loads((head.save(tmp_path / "h") / "head.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert meta["head"] == "ridge" and meta["class"] == "histoxmodal.heads.expression.RidgeHead"
    assert meta["params"] == {"alphas": [1.0, 10.0], "pca": None, "cv": 3}
    assert meta["fitted"]["alpha_"] == head.alpha_
    assert meta["arrays"] == ["coef_", "x_mean_", "y_mean_"]
    assert meta["weights"] == []
    assert type(Head.load(tmp_path / "h")) is RidgeHead  # the base class dispatches by name


def test_load_errors_name_the_path_and_the_fix(ridge, tmp_path):
    head, _ = ridge
    with pytest.raises(FileNotFoundError, match=r"nowhere not found: expected a folder written by"):
        load_head(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/head.json not found.*not a saved head"):
        load_head(tmp_path / "empty")
    folder = head.save(tmp_path / "h")
    (folder / "arrays.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"arrays.safetensors not found.*save the head"):
        load_head(folder)

    folder = head.save(tmp_path / "h2")
    meta = json.loads((folder / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps({**meta, "head": "ridgee"}))
    with pytest.raises(ConfigError, match=r"names head 'ridgee'.*Did you mean 'ridge'"):
        load_head(folder)
    (folder / "head.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ConfigError, match=r"head format 99.*upgrade histoxmodal"):
        load_head(folder)
    (folder / "head.json").write_text(json.dumps({**meta, "params": {"alpha": 1}}))
    with pytest.raises(
        HeadFolderError, match=r"params \['alpha'\] are not parameters of RidgeHead"
    ):
        load_head(folder)
    (folder / "head.json").write_text("{")
    with pytest.raises(HeadFolderError, match="not valid JSON"):
        load_head(folder)
    with pytest.raises(ConfigError, match=r"holds a 'ridge' head, not 'mlp'.*load_head"):
        MLPHead.load(tmp_path / "h")


def test_save_refuses_unfitted_heads_files_and_foreign_folders(ridge, tmp_path):
    head, _ = ridge
    with pytest.raises(ConfigError, match="RidgeHead.save called before fit"):
        RidgeHead().save(tmp_path / "x")
    (tmp_path / "f.txt").write_text("keep")
    with pytest.raises(ConfigError, match="is a file"):
        head.save(tmp_path / "f.txt")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_text("keep")
    with pytest.raises(ConfigError, match=r"not a saved head.*saving would replace it"):
        head.save(run)
    assert (run / "model.safetensors").read_text() == "keep"
    (tmp_path / "new_empty").mkdir()
    assert (head.save(tmp_path / "new_empty") / "head.json").is_file()


def test_save_replaces_a_head_atomically(ridge, tmp_path, monkeypatch):
    head, x = ridge
    folder = head.save(tmp_path / "h")
    other = RidgeHead(alphas=(100.0,), cv=2).fit(x, x[:, :2] * 2)
    other.save(folder)  # replaces the previous head
    np.testing.assert_array_equal(load_head(folder).predict(x), other.predict(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]  # no staging folders left

    import safetensors.numpy

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        head.save(folder)
    # the interrupted save left the previous head whole and no partial folder behind
    np.testing.assert_array_equal(load_head(folder).predict(x), other.predict(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]
