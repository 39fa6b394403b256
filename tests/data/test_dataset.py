"""The torch Dataset and augmentations over the her2st paired dataset."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from histoxmodal.data.dataset import PairedDataset, normalize_images  # noqa: E402
from histoxmodal.data.store import load_paired  # noqa: E402
from histoxmodal.data.transforms import Augment, hed_to_rgb, random_dihedral, rgb_to_hed  # noqa: E402


def _dihedral(img):
    out = []
    for k in range(4):
        r = np.rot90(img, k)
        out += [r, r[:, ::-1]]
    return out


def test_items_match_the_store(her2st_paired):
    out, _ = her2st_paired
    adata, patches = load_paired(out)
    ds = PairedDataset(out)
    assert len(ds) == adata.n_obs == 1015 and ds.n_genes == adata.n_vars
    item = ds[17]
    assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.uint8
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), patches[17])
    counts = np.asarray(adata.X[17].todense()).ravel().astype(np.float64)
    want = np.log1p(counts / counts.sum() * 1e4)
    np.testing.assert_allclose(item["expression"].numpy(), want, rtol=1e-5, atol=1e-6)
    assert item["gene_mask"].all()
    assert ds.categories["sample"][int(item["sample"])] == adata.obs["sample"].iloc[17]
    assert ds.categories["patient"][int(item["patient"])] == adata.obs["patient"].iloc[17]
    raw = PairedDataset(out, normalization="counts", genes=["ERBB2", "GAPDH"])
    r = raw[3]["expression"].numpy()
    np.testing.assert_array_equal(r, adata[3, ["ERBB2", "GAPDH"]].X.toarray().ravel())
    with pytest.raises(ValueError, match="not in the dataset"):
        PairedDataset(out, genes=["NOT_A_GENE"])


def test_depth_augmentation_thins_the_raw_counts_before_normalizing(her2st_paired):
    out, _ = her2st_paired
    adata, _ = load_paired(out)
    genes = list(adata.var_names[:300])
    ds = PairedDataset(out, genes=genes, augment=Augment(flips=False, rot90=False, depth_min=0.05))
    ds._worker_state()
    ds._rng = np.random.default_rng(7)
    got = ds.expression(17)
    # the same draws by hand: a kept fraction f with log f ~ U(log 0.05, 0), binomial
    # thinning of the panel's counts, log1p-CP10k over the library size scaled by f
    rng = np.random.default_rng(7)
    counts = np.asarray(adata[17, genes].X.todense()).ravel()
    nz = np.flatnonzero(counts)
    f = np.exp(rng.uniform(np.log(0.05), 0.0))
    thinned = np.zeros_like(counts, dtype=np.float64)
    thinned[nz] = rng.binomial(counts[nz].astype(np.int64), f)
    lib = float(np.asarray(adata.X[17].sum())) * f
    np.testing.assert_allclose(got, np.log1p(thinned * 1e4 / lib), rtol=1e-5, atol=1e-6)
    assert 0.05 <= f <= 1 and thinned.sum() < counts.sum()
    # without it, items are the stored normalization
    plain = PairedDataset(out, genes=genes).expression(17)
    np.testing.assert_allclose(plain, np.log1p(counts * 1e4 / (lib / f)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"depth_min=0 must be in \(0, 1\]"):
        Augment(depth_min=0)


def test_float_normalization_matches_device_helper(her2st_paired):
    out, _ = her2st_paired
    a = PairedDataset(out, normalize_image=True)[5]["image"]
    b = normalize_images(PairedDataset(out)[5]["image"][None])[0]
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_augmentations():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    seen = set()
    for _ in range(64):
        out = random_dihedral(img, rng)
        matches = [i for i, d in enumerate(_dihedral(img)) if np.array_equal(out, d)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))
    he = np.array([[[200, 120, 170], [90, 60, 140]]], np.uint8)
    back = hed_to_rgb(rgb_to_hed(he), he.shape)
    assert np.abs(back.astype(int) - he).max() <= 1  # the HED round trip is exact to rounding
    jit = Augment(flips=False, rot90=False, hed_sigma=0.1)(np.repeat(he, 50, 0), rng)
    assert np.abs(jit.astype(int) - np.repeat(he, 50, 0)).mean() > 1
    with pytest.raises(ValueError, match="hed_sigma"):
        Augment(hed_sigma=1.5)


def test_dataloader_two_workers_covers_every_row_once(her2st_paired):
    out, _ = her2st_paired
    from torch.utils.data import DataLoader

    idx = np.arange(0, 1015, 5)
    ds = PairedDataset(out, indices=idx, augment=Augment(hed_sigma=0.05), seed=1)
    rows, images = [], []
    for b in DataLoader(ds, batch_size=16, shuffle=True, num_workers=2):
        rows += b["index"].tolist()
        images.append(b["image"])
    assert sorted(rows) == idx.tolist()
    assert torch.cat(images).shape == (len(idx), 3, 224, 224)
