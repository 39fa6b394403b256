"""Moran's I of expression maps through squidpy, checked against the formula written out, and
squidpy run on what histoxmodal writes (a paired dataset)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("squidpy")


def _hex_grid(n_side: int, pitch: float = 100.0) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(n_side), np.arange(n_side))
    return np.c_[(xs + 0.5 * (ys % 2)).ravel() * pitch, ys.ravel() * pitch * np.sqrt(3) / 2]


def _moran_direct(x: np.ndarray, coords: np.ndarray, groups: np.ndarray, k: int) -> float:
    """I = n / W * (z' W z) / (z' z) with W the k nearest spots of each spot in its section."""
    n = len(x)
    w = np.zeros((n, n))
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        d = np.linalg.norm(coords[rows, None] - coords[None, rows], axis=-1)
        np.fill_diagonal(d, np.inf)
        for a, i in enumerate(rows):
            w[i, rows[np.argsort(d[a], kind="stable")[:k]]] = 1.0
    z = x - x.mean()
    return n / w.sum() * (z @ w @ z) / (z @ z)


def test_morans_i_is_the_formula_over_each_sections_six_neighbours():
    from histoxmodal.evaluation.spatial import morans_i, morans_i_summary

    rng = np.random.default_rng(0)
    one = _hex_grid(12)
    # two sections at the same place (never linked), jittered so no two distances tie
    coords = np.concatenate([one, one]) + rng.uniform(-5, 5, size=(2 * len(one), 2))
    groups = np.repeat(["A", "B"], len(one))
    smooth = np.sin(coords[:, 0] / 400) + np.cos(coords[:, 1] / 300)
    noise = rng.normal(size=len(coords))
    mixed = np.where(groups == "A", smooth, noise)
    values = np.c_[smooth, noise, mixed]
    got = morans_i(values, coords, groups, genes=["smooth", "noise", "mixed"])
    for j, g in enumerate(("smooth", "noise", "mixed")):
        assert got[g] == pytest.approx(_moran_direct(values[:, j], coords, groups, 6), abs=1e-9)
    assert got["smooth"] > 0.8 and abs(got["noise"]) < 0.1
    s = morans_i_summary({"a": 0.5, "b": 0.1}, {"a": 0.3, "b": 0.2})
    assert s == pytest.approx(
        {"predicted_mean": 0.3, "measured_mean": 0.25, "difference_mean": 0.05}
    )


def test_squidpy_reads_a_paired_dataset(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import squidpy as sq

    from histoxmodal.data.store import load_paired
    from histoxmodal.testing.paired import make_paired_dataset

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=32, n_states=3)
    adata, _ = load_paired(data)
    sq.gr.spatial_neighbors(adata, coord_type="generic", n_neighs=6, library_key="sample")
    graph = adata.obsp["spatial_connectivities"]
    assert graph.shape == (adata.n_obs, adata.n_obs) and (graph.sum(1) == 6).all()
    # never across sections
    sample = adata.obs["sample"].to_numpy()
    i, j = graph.nonzero()
    assert (sample[i] == sample[j]).all()
    sq.gr.spatial_autocorr(adata, mode="moran", genes=list(adata.var_names[:5]), n_perms=None)
    assert adata.uns["moranI"].shape[0] == 5
    out = tmp_path / "scatter.png"
    sq.pl.spatial_scatter(adata, color=adata.var_names[0], shape=None, library_key="sample")
    matplotlib.pyplot.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
