"""``--stain-normalize`` / ``--stain-target`` on ``build`` and ``features``: the patches are the
normaliser's output, the summary counts the tiles kept raw, the options go together."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from histoxmodal.cli.main import main


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """A 512 px crop of her2st C2's tissue (around its middle spot), saved as a PNG: the stain
    target."""
    import pandas as pd
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    spots = pd.read_csv(data_dir / "her2st" / "spots" / "C2_selection.tsv", sep="\t")
    x, y = (int(v) for v in spots[["pixel_x", "pixel_y"]].iloc[len(spots) // 2])
    with Image.open(data_dir / "her2st" / "images" / "C2.jpg") as im:
        crop = np.asarray(im.convert("RGB").crop((x - 256, y - 256, x + 256, y + 256)))
    from histoxmodal.data.stain import tissue_fraction

    assert tissue_fraction(crop) > 0.3
    path = tmp_path_factory.mktemp("ref") / "c2.png"
    Image.fromarray(crop).save(path)
    return path


def test_build_normalises_every_patch(data_dir, reference, tmp_path, capsys):
    from histoxmodal.data.stain import fit_stain_target
    from histoxmodal.data.store import load_paired
    from tests.workflows.test_build import _counts_h5ad

    f, _ = _counts_h5ad(data_dir, tmp_path / "src")
    base = ["build", "--recipe", "h5ad", "--src", str(f), "--image", str(f.parent / "test_img.jpg")]
    base += ["--patch-px", "64"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*base, "--out", str(tmp_path / "raw")]) == 0
        capsys.readouterr()
        args = ["--stain-normalize", "reinhard", "--stain-target", str(reference)]
        assert main([*base, "--out", str(tmp_path / "norm"), *args]) == 0
    text = capsys.readouterr().out
    norm = fit_stain_target(reference, "reinhard")
    _, raw = load_paired(tmp_path / "raw")
    _, out = load_paired(tmp_path / "norm")
    want = norm.apply_many(np.asarray(raw))
    np.testing.assert_array_equal(np.asarray(out), want)
    assert not np.array_equal(np.asarray(out), np.asarray(raw))
    assert f"stain (reinhard): {norm.n_applied} tiles normalised, {norm.n_fallback} kept raw" in (
        text
    )
    manifest = json.loads((tmp_path / "norm" / "manifest.json").read_text())
    assert manifest["params"]["stain"] == norm.to_dict()
    assert "stain" not in json.loads((tmp_path / "raw" / "manifest.json").read_text())["params"]


def test_features_stain_options(small_slide, reference, tmp_path, capsys):
    out = tmp_path / "f"
    args = ["features", str(small_slide.path), "--out", str(out), "--encoder", "test_uni"]
    args += ["--random-weights", "--batch-size", "16", "--workers", "1"]
    assert main([*args, "--stain-normalize", "reinhard", "--stain-target", str(reference)]) == 0
    text = capsys.readouterr().out
    record = json.loads((out / "small.json").read_text())
    c = record["stain"]
    assert c["applied"] + c["fallback"] == record["n_tiles"] > 0
    assert f"stain (reinhard): {c['applied']} tiles normalised, {c['fallback']} kept raw" in text
    assert main([*args, "--stain-normalize", "macenko"]) == 2
    assert "--stain-normalize and --stain-target go together" in capsys.readouterr().err
