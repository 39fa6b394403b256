"""A run trained with ``stain:`` saves its normaliser, records it, trains on normalised patches,
and ``predict`` and ``features --run`` apply it to new slides."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("lightning")

from tests.workflows.tiny_runs import TINY, paired_data, train_tiny


@pytest.fixture(scope="module")
def stained_run(tmp_path_factory):
    from PIL import Image

    from histoxmodal.data.store import load_paired
    from histoxmodal.data.transforms import hed_shift

    tmp = tmp_path_factory.mktemp("stain")
    data = paired_data(tmp)
    _, patches = load_paired(data)
    # the reference: the dataset's own patches in another stain, as one mosaic image
    shifted = [hed_shift(p, np.array([1.3, 0.7, 1.0]), np.zeros(3)) for p in patches[:16]]
    mosaic = np.concatenate([np.concatenate(shifted[i : i + 4], 1) for i in (0, 4, 8, 12)], 0)
    Image.fromarray(mosaic).save(tmp / "reference.png")
    stain = {"method": "reinhard", "target": str(tmp / "reference.png"), "min_tissue": 0.0}
    run, slide = train_tiny(tmp, data, stain=stain)
    return tmp, data, run, slide, mosaic


def test_the_run_saves_and_records_its_normaliser(stained_run):
    from histoxmodal.data.stain import StainNormalizer, fit_stain_target
    from histoxmodal.workflows.run import Run

    tmp, _, run, _, mosaic = stained_run
    saved = StainNormalizer.load(run.path / "stain.json")
    direct = fit_stain_target(tmp / "reference.png", "reinhard", min_tissue=0.0)
    assert saved.to_dict() == direct.to_dict()
    # fitted on the reference's pixels, as torchstain fits them (the mosaic is one tile)
    from torchstain.numpy.normalizers import NumpyReinhardNormalizer

    ref = NumpyReinhardNormalizer()
    ref.fit(mosaic)
    np.testing.assert_array_equal(np.float32(saved.target["means"]), ref.target_means)
    ident = json.loads((run.path / "run.json").read_text())
    assert ident["stain"]["method"] == "reinhard" and ident["stain"]["file"] == "stain.json"
    assert ident["stain"]["sha256"] == saved.digest
    config = json.loads((run.path / "config.json").read_text())
    assert config["stain"]["target"] == str(tmp / "reference.png")
    loaded = Run.load(run.path)
    assert loaded.stain_normalizer().to_dict() == saved.to_dict()


def test_the_run_reads_normalised_patches(stained_run):
    from histoxmodal.data.stain import StainNormalizer
    from histoxmodal.data.store import load_paired
    from histoxmodal.workflows.run import Run

    _, data, run, _, _ = stained_run
    _, patches = load_paired(data)
    norm = StainNormalizer.load(run.path / "stain.json")
    ds = Run.load(run.path).dataset()
    for i in (0, 7):
        img = ds[i]["image"].numpy().transpose(1, 2, 0)
        np.testing.assert_array_equal(img, norm.apply(patches[i]))
        assert not np.array_equal(img, patches[i])


def test_a_tampered_stain_json_is_refused(stained_run, tmp_path):
    import shutil

    from histoxmodal.errors import DataError
    from histoxmodal.workflows.run import Run

    _, _, run, _, _ = stained_run
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    d = json.loads((copy / "stain.json").read_text())
    d["target"]["means"][0] += 1.0
    (copy / "stain.json").write_text(json.dumps(d))
    with pytest.raises(DataError, match="checksum differs"):
        Run.load(copy)
    (copy / "stain.json").unlink()
    with pytest.raises(DataError, match="stain.json not found"):
        Run.load(copy)


def test_predict_applies_the_runs_normaliser(stained_run):
    import anndata as ad
    import torch

    from histoxmodal.data.stain import StainNormalizer
    from histoxmodal.io.slide import open_slide
    from histoxmodal.workflows.expression_map import predict_slide

    tmp, _, run, slide, _ = stained_run
    out = tmp / "maps"
    r = predict_slide(run, slide, out, grid_um=80, genes=run.genes[:1], min_tissue=0.5)
    assert r.status == "ok", r.reason
    a = ad.read_h5ad(out / "new" / "prediction.h5ad")
    counts = a.uns["prediction"]["stain"]
    assert counts["method"] == "reinhard"
    assert counts["applied"] + counts["fallback"] == a.n_obs and counts["applied"] > 0
    manifest = json.loads((out / "new" / "manifest.json").read_text())
    record = manifest["stain"]  # the slide's record counts them too
    assert (record["applied"], record["fallback"]) == (counts["applied"], counts["fallback"])
    norm = StainNormalizer.load(run.path / "stain.json")
    head = run.load_head("expression_ridge")
    i = a.n_obs // 2
    x, y = (int(v) - 32 for v in a.obsm["spatial"][i])
    with open_slide(slide) as s:
        raw = s.read_region_at_mpp((x, y), 32, 0.5)

    def predict(patch):
        with torch.no_grad():
            t = torch.from_numpy(patch.transpose(2, 0, 1)[None].copy())
            return head.predict(run.module.embed_images(t).numpy())[0]

    np.testing.assert_allclose(a.X[i], predict(norm.apply(raw)), rtol=1e-4, atol=1e-5)
    assert not np.allclose(a.X[i], predict(raw), rtol=1e-4, atol=1e-5)


def test_the_predict_command_counts_the_normalised_pseudo_spots(stained_run, capsys):
    import anndata as ad

    from histoxmodal.cli.main import main

    tmp, _, run, slide, _ = stained_run
    out = tmp / "maps_cli"
    argv = ["predict", str(run.path), str(slide), "--out", str(out), "--grid-um", "80"]
    assert main([*argv, "--min-tissue", "0.5"]) == 0
    counts = ad.read_h5ad(out / "new" / "prediction.h5ad").uns["prediction"]["stain"]
    line = (
        f"stain (reinhard): {counts['applied']} pseudo-spots normalised, "
        f"{counts['fallback']} kept raw"
    )
    assert line in capsys.readouterr().out
    # a resumed slide is not computed again, and not counted again
    assert main([*argv, "--min-tissue", "0.5"]) == 0
    assert "stain (" not in capsys.readouterr().out


def test_features_with_the_run_apply_its_normaliser(stained_run):
    from histoxmodal.data.stain import StainNormalizer
    from histoxmodal.errors import ConfigError
    from histoxmodal.workflows.features import extract_features

    tmp, _, run, slide, _ = stained_run
    out = tmp / "features"
    (r,) = extract_features([slide], out, run=run.path, batch_size=16, workers=1)
    assert r.status == "ok", r.reason
    record = json.loads((out / "new.json").read_text())
    digest = StainNormalizer.load(run.path / "stain.json").digest
    assert record["extractor"]["stain"] == {"method": "reinhard", "sha256": digest}
    assert record["stain"]["applied"] + record["stain"]["fallback"] == r.n_tiles
    with pytest.raises(ConfigError, match="a --run applies the stain normaliser"):
        extract_features([slide], out, run=run.path, stain_normalize="macenko", stain_target="x")
    with pytest.raises(ConfigError, match="go together"):
        extract_features([slide], out, encoder="test_uni", stain_normalize="macenko")


@pytest.mark.parametrize(
    ("stain", "match"),
    [
        ({"method": "macenko"}, "needs stain.target"),
        ({"target": "ref.png"}, "without stain.method"),
        ({"method": "vahadane", "target": "ref.png"}, "stain.method='vahadane'"),
        ({"method": "reinhard", "target": "x", "min_tissue": 2}, "stain.min_tissue"),
        ({"methd": "reinhard"}, "did you mean method"),
    ],
)
def test_the_stain_section_is_validated(stain, match):
    from histoxmodal.errors import ConfigError
    from histoxmodal.training.config import TrainConfig, config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict({"stain": stain})
    if "methd" not in stain:  # built in Python: the same message
        with pytest.raises(ConfigError, match=match):
            TrainConfig(stain=stain)


def test_a_missing_stain_target_is_one_config_error(tmp_path):
    from histoxmodal.errors import ConfigError
    from histoxmodal.testing.paired import make_paired_dataset
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.train import train

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=8, n_states=2)
    cfg = config_from_dict(
        {**TINY, "stain": {"method": "macenko", "target": str(tmp_path / "no.png")}}
    )
    with pytest.raises(ConfigError, match="stain.target: stain target .*no.png not found"):
        train(cfg, tmp_path / "run", data=data, accelerator="cpu", devices=1)
    assert not (tmp_path / "run" / "run.json").exists()
