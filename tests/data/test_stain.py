"""Stain normalisation (``data/stain.py``) against torchstain itself, on real her2st H&E tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.color import rgb2lab
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

from histoxmodal.data.stain import StainNormalizer, fit_stain_target, tissue_fraction
from histoxmodal.data.transforms import hed_shift
from histoxmodal.errors import ConfigError, DataError


def _spot_tiles(data_dir, section: str, n: int = 12, px: int = 160) -> list[np.ndarray]:
    """``n`` tiles of ``px`` centred on selected spots of a her2st section's H&E."""
    import pandas as pd
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    root = data_dir / "her2st"
    with Image.open(root / "images" / f"{section}.jpg") as im:
        img = np.asarray(im.convert("RGB"))
    spots = pd.read_csv(root / "spots" / f"{section}_selection.tsv", sep="\t")
    spots = spots[spots["selected"] == 1]
    spots = spots.iloc[:: max(1, len(spots) // n)][:n]
    h = px // 2
    return [
        np.ascontiguousarray(img[int(y) - h : int(y) + h, int(x) - h : int(x) + h])
        for x, y in zip(spots["pixel_x"], spots["pixel_y"], strict=True)
    ]


@pytest.fixture(scope="module")
def tiles(data_dir):
    """Spot tiles of B4 (patient B) and C2 (patient C)."""
    return {"B4": _spot_tiles(data_dir, "B4"), "C2": _spot_tiles(data_dir, "C2")}


def _pooled(tiles: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([t.reshape(1, -1, 3) for t in tiles], axis=1)


def _lab_stats(tiles: list[np.ndarray]) -> np.ndarray:
    """Mean and std of L, a, b over the tiles (scikit-image's CIELAB, not torchstain's)."""
    lab = np.concatenate([rgb2lab(t).reshape(-1, 3) for t in tiles])
    return np.concatenate([lab.mean(0), lab.std(0)])


def test_macenko_equals_torchstain(tiles):
    norm = StainNormalizer("macenko").fit(tiles["C2"])
    ref = NumpyMacenkoNormalizer()
    ref.fit(_pooled(tiles["C2"]))
    np.testing.assert_array_equal(np.asarray(norm.target["stain_matrix"]), ref.HERef)
    for t in tiles["B4"][:4]:
        expected = ref.normalize(t, stains=False)[0]
        out = norm.apply(t)
        np.testing.assert_array_equal(out, expected)
        assert not np.array_equal(out, t)
    assert norm.n_applied == 4 and norm.n_fallback == 0


def test_reinhard_equals_torchstain(tiles):
    norm = StainNormalizer("reinhard").fit(tiles["C2"])
    ref = NumpyReinhardNormalizer()
    ref.fit(_pooled(tiles["C2"]))
    for t in tiles["B4"][:4]:
        np.testing.assert_array_equal(norm.apply(t), ref.normalize(t))
    assert norm.counts()["applied"] == 4


def _he_vectors(tiles: list[np.ndarray]) -> np.ndarray:
    """Macenko's ``(3, 2)`` haematoxylin and eosin OD vectors of the pooled tiles."""
    m = NumpyMacenkoNormalizer()
    m.fit(_pooled(tiles))
    return m.HERef


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = np.sum(a * b, 0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _shifted(tiles: list[np.ndarray]) -> list[np.ndarray]:
    """More haematoxylin, less eosin: a known scale and shift of the HED optical densities."""
    return [hed_shift(t, np.array([1.4, 0.6, 1.0]), np.array([0.05, -0.05, 0.0])) for t in tiles]


def test_macenko_undoes_a_known_stain_shift(tiles):
    """Stain-shifted B4 tiles normalised to the unshifted ones: their stain vectors (in optical
    density, estimated again from the output) come back to the target's."""
    target = tiles["B4"][:6]
    shifted = _shifted(target)
    norm = StainNormalizer("macenko").fit(target)
    before = _angles(_he_vectors(shifted), _he_vectors(target))
    after = _angles(_he_vectors([norm.apply(t) for t in shifted]), _he_vectors(target))
    assert norm.n_fallback == 0
    assert before.max() > 8.0  # the eosin vector turns by ~10 degrees
    assert after.max() < 0.25 * before.max(), (before, after)


def test_reinhard_undoes_a_known_stain_shift(tiles):
    """The same shift in CIELAB (scikit-image's): means and stds back near the target's."""
    target = tiles["B4"][:6]
    shifted = _shifted(target)
    goal = _lab_stats(target)
    before = np.abs(_lab_stats(shifted) - goal).sum()
    norm = StainNormalizer("reinhard").fit(target)
    after = np.abs(_lab_stats([norm.apply(t) for t in shifted]) - goal).sum()
    assert norm.n_fallback == 0
    assert before > 10.0  # LAB units summed over the 3 means and 3 stds
    assert after < 0.35 * before, (before, after)


def test_b4_moves_towards_patient_c(tiles):
    """Patient B's tiles normalised to patient C's stain: their LAB statistics get closer."""
    goal = _lab_stats(tiles["C2"])
    before = np.abs(_lab_stats(tiles["B4"]) - goal).sum()
    norm = StainNormalizer("reinhard").fit(tiles["C2"])
    after = np.abs(_lab_stats([norm.apply(t) for t in tiles["B4"]]) - goal).sum()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_background_and_pen_fall_back_and_are_counted(tiles, method):
    norm = StainNormalizer(method).fit(tiles["C2"])
    white = np.full((128, 128, 3), 245, np.uint8)
    glass = np.clip(np.random.default_rng(0).normal(235, 4, (128, 128, 3)), 0, 255).astype(np.uint8)
    pen = np.zeros((128, 128, 3), np.uint8)
    pen[:] = (30, 80, 150)  # blue marker: stained, but one colour
    assert tissue_fraction(white) == 0.0 and tissue_fraction(pen) == 1.0
    for t in (white, glass, pen):
        out = norm.apply(t)
        assert out is t or np.array_equal(out, t)
    assert norm.n_fallback == 3 and norm.n_applied == 0
    assert norm.fallback_reasons["background"] == 2
    assert norm.counts()["fallback"] == 3
    norm.apply(tiles["B4"][0])
    assert norm.n_applied == 1 and norm.n_fallback == 3


def test_torchstain_failure_falls_back(tiles, monkeypatch):
    norm = StainNormalizer("macenko").fit(tiles["C2"])
    impl = norm._fitted_impl()

    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(impl, "normalize", singular)
    t = tiles["B4"][0]
    assert norm.apply(t) is t
    assert norm.fallback_reasons == {"torchstain_error": 1}


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_json_round_trips_exactly(tiles, method, tmp_path):
    norm = StainNormalizer(method, min_tissue=0.2).fit(tiles["C2"], source="C2 spots")
    path = norm.save(tmp_path / "stain.json")
    back = StainNormalizer.load(path)
    assert back.to_dict() == norm.to_dict()
    assert json.loads(path.read_text())["method"] == method
    assert back.digest == norm.digest
    for t in tiles["B4"][:3]:
        np.testing.assert_array_equal(back.apply(t), norm.apply(t))


def test_fit_stain_target_from_image_folder_and_json(tiles, tmp_path):
    from PIL import Image

    folder = tmp_path / "ref"
    folder.mkdir()
    for i, t in enumerate(tiles["C2"][:4]):
        Image.fromarray(t).save(folder / f"t{i}.png")
    norm = fit_stain_target(folder, "macenko")
    direct = StainNormalizer("macenko").fit(tiles["C2"][:4])
    assert norm.target == direct.target
    norm.save(tmp_path / "s.json")
    assert fit_stain_target(tmp_path / "s.json", "macenko").target == norm.target
    with pytest.raises(ConfigError, match="is a macenko normaliser"):
        fit_stain_target(tmp_path / "s.json", "reinhard")
    with pytest.raises(FileNotFoundError, match="stain target"):
        fit_stain_target(tmp_path / "nope.png", "macenko")


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="expected one of macenko, reinhard"):
        StainNormalizer("vahadane")
    with pytest.raises(DataError, match="stained pixels"):
        StainNormalizer("macenko").fit([np.full((64, 64, 3), 250, np.uint8)])
    with pytest.raises(ConfigError, match="not fitted"):
        StainNormalizer("reinhard").apply(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="not a stain normaliser JSON"):
        StainNormalizer.from_dict({"method": "macenko"})
