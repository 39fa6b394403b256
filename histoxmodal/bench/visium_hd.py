"""Peak memory of pooling a full-size Visium HD 2 µm matrix into spots.

A 6.5 mm capture area holds a 3,350 x 3,350 grid of 2 µm bins (about 11 million).
:func:`~histoxmodal.io.spatial.read_visium_hd` pools them block by block, so its peak memory should
follow the pooled result, not the 2 µm matrix. This writes that layout (Space Ranger's
``binned_outputs/square_002um/``: the 10x HDF5 matrix of the bins under tissue, the positions of
every bin of the grid, the scale factors) and measures, each in a fresh process, the peak
resident memory and time of ``read_visium_hd(..., pool_um=...)`` and, for comparison, of the
obvious approach: scanpy's ``read_10x_h5`` of the whole 2 µm matrix, then one sparse product.
The peak is measured as in :mod:`histoxmodal.bench.xenium` (``VmHWM`` reset after the imports).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from histoxmodal.bench.xenium import MEMORY_PRELUDE, run_child

__all__ = [
    "bench_visium_hd_pooling",
    "format_hd_table",
    "hd_pooling_peak_memory",
    "write_hd_layout",
]


def write_hd_layout(
    folder: str | Path,
    *,
    n_rows: int = 3350,
    n_cols: int = 3350,
    n_genes: int = 18_000,
    umis_per_bin: float = 4.0,
    tissue_fraction: float = 0.6,
    mpp: float = 0.2737,
    rows_per_block: int = 64,
    seed: int = 0,
) -> dict[str, object]:
    """Write a Visium HD 2 µm bin layout under ``folder/outs/binned_outputs/square_002um/``,
    block by block of grid rows (bounded memory).

    Tissue is an ellipse covering ``tissue_fraction`` of the grid; a bin under tissue holds
    Poisson(``umis_per_bin``) UMIs of genes drawn with a skewed (log-normal) abundance.

    Returns
    -------
    dict
        ``n_bins`` (grid), ``n_in_tissue``, ``nnz``, ``matrix_mib``, ``positions_mib``,
        ``seconds``.
    """
    import scipy.sparse as sp

    from histoxmodal.testing.visium_hd import bin_barcodes, write_10x_h5, write_bin_positions

    t0 = time.perf_counter()
    folder = Path(folder)
    d = folder / "outs" / "binned_outputs" / "square_002um"
    (d / "spatial").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    p = rng.lognormal(0, 1.5, n_genes)
    p /= p.sum()
    cdf = np.cumsum(p)
    # ellipse with area tissue_fraction of the grid: pi a b = f n_rows n_cols, a/b = n_cols/n_rows
    scale = math.sqrt(tissue_fraction / math.pi)

    def tissue_rows(r0: int, r1: int) -> np.ndarray:
        rr, cc = np.mgrid[r0:r1, 0:n_cols]
        return ((cc - n_cols / 2) / (scale * n_cols)) ** 2 + (
            (rr - n_rows / 2) / (scale * n_rows)
        ) ** 2 <= 1.0

    stats = {"n_in_tissue": 0, "nnz": 0}

    def blocks():
        for r0 in range(0, n_rows, rows_per_block):
            r1 = min(r0 + rows_per_block, n_rows)
            r, c = np.nonzero(tissue_rows(r0, r1))
            n = len(r)
            umis = rng.poisson(umis_per_bin, n)
            owner = np.repeat(np.arange(n), umis)
            gene = np.minimum(np.searchsorted(cdf, rng.random(len(owner))), n_genes - 1)
            x = sp.csr_matrix((np.ones(len(owner), np.int32), (owner, gene)), shape=(n, n_genes))
            x.sum_duplicates()
            stats["n_in_tissue"] += n
            stats["nnz"] += x.nnz
            yield bin_barcodes(r + r0, c, 2), x

    genes = [f"GENE{i:05d}" for i in range(n_genes)]
    write_10x_h5(
        d / "filtered_feature_bc_matrix.h5",
        blocks(),
        genes=genes,
        gene_ids=[f"ENSG{i:011d}" for i in range(n_genes)],
        chunk=1 << 16,
    )
    s = 2.0 / mpp
    H = np.array([[s, 0.002 * s, 400.0], [-0.002 * s, s, 300.0], [0.0, 0.0, 1.0]])
    write_bin_positions(
        d / "spatial" / "tissue_positions.parquet",
        n_rows,
        n_cols,
        bin_um=2,
        homography=H,
        in_tissue=tissue_rows,
    )
    sf = {
        "spot_diameter_fullres": 2.0 / mpp,
        "bin_size_um": 2.0,
        "microns_per_pixel": mpp,
        "tissue_hires_scalef": 0.1,
        "tissue_lowres_scalef": 0.02,
    }
    (d / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf), encoding="utf-8")
    return {
        "n_bins": n_rows * n_cols,
        **stats,
        "matrix_mib": (d / "filtered_feature_bc_matrix.h5").stat().st_size / 2**20,
        "positions_mib": (d / "spatial" / "tissue_positions.parquet").stat().st_size / 2**20,
        "seconds": time.perf_counter() - t0,
    }


_POOL = (
    MEMORY_PRELUDE
    + """
import anndata, numpy as np, pyarrow.parquet, scipy.sparse, h5py, scanpy
from histoxmodal.io.spatial import read_visium_hd
base, reset = status("VmRSS"), reset_peak()
t = time.perf_counter()
a = read_visium_hd(sys.argv[1], pool_um=float(sys.argv[2]), pool_shape=sys.argv[3])
dt = time.perf_counter() - t
x = a.X
print(json.dumps({"seconds": dt, "rss_after_imports_mib": base, "peak_mib": status("VmHWM"),
    "peak_reset": reset, "n_spots": a.n_obs, "nnz": int(x.nnz),
    "result_mib": (x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) / 2**20}))
"""
)

_NAIVE = (
    MEMORY_PRELUDE
    + """
import anndata, numpy as np, scipy.sparse as sp, h5py, scanpy as sc
base, reset = status("VmRSS"), reset_peak()
t = time.perf_counter()
a = sc.read_10x_h5(sys.argv[1] + "/outs/binned_outputs/square_002um/filtered_feature_bc_matrix.h5")
k = float(sys.argv[2]) / 2.0
r = np.floor((a.obs_names.str.slice(8, 13).astype(int).to_numpy() + 0.5) / k).astype(np.int64)
c = np.floor((a.obs_names.str.slice(14, 19).astype(int).to_numpy() + 0.5) / k).astype(np.int64)
key = r * (c.max() + 1) + c
u, inv = np.unique(key, return_inverse=True)
assign = sp.csr_matrix((np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(len(u), len(inv)))
pooled = assign @ a.X
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rss_after_imports_mib": base, "peak_mib": status("VmHWM"),
    "peak_reset": reset, "n_spots": int(pooled.shape[0]), "nnz": int(pooled.nnz)}))
"""
)


def hd_pooling_peak_memory(
    folder: str | Path, *, pool_um: float = 55.0, shape: str = "square", naive: bool = False
) -> dict[str, float]:
    """Peak resident memory (MiB) and time of pooling the 2 µm bins of ``folder`` in a fresh
    process: :func:`read_visium_hd`, or (``naive``, squares only) scanpy reading the matrix
    whole and one sparse product."""
    if naive:
        return run_child(_NAIVE, str(folder), str(pool_um))
    return run_child(_POOL, str(folder), str(pool_um), shape)


def bench_visium_hd_pooling(
    workdir: str | Path,
    *,
    n_rows: int = 3350,
    n_cols: int = 3350,
    umis_per_bin: float = 4.0,
    pools: tuple[tuple[float, str], ...] = ((55.0, "square"), (100.0, "disc"), (8.0, "square")),
    naive: bool = True,
    keep_files: bool = False,
) -> dict[str, object]:
    """Write a full-size 2 µm layout under ``workdir`` (reused when there) and measure the
    pooling's peak memory for each ``(pool_um, shape)`` of ``pools``, and scanpy's whole-matrix
    approach for the first square one when ``naive``.

    Returns
    -------
    dict
        ``layout`` (what :func:`write_hd_layout` wrote) and ``runs``: per pooling, the
        measurements of :func:`hd_pooling_peak_memory` (``naive`` under ``scanpy``).
    """
    import shutil

    workdir = Path(workdir)
    folder = workdir / f"hd_{n_rows}x{n_cols}"
    marker = folder / "layout.json"
    if marker.exists():
        layout = json.loads(marker.read_text(encoding="utf-8"))
    else:
        layout = write_hd_layout(folder, n_rows=n_rows, n_cols=n_cols, umis_per_bin=umis_per_bin)
        marker.write_text(json.dumps(layout), encoding="utf-8")
    results: dict[str, object] = {"layout": layout, "runs": []}
    for pool_um, shape in pools:
        run: dict[str, object] = {
            "pool_um": pool_um,
            "shape": shape,
            "streaming": hd_pooling_peak_memory(folder, pool_um=pool_um, shape=shape),
        }
        results["runs"].append(run)
    if naive:
        square = next((p for p, s in pools if s == "square"), 55.0)
        results["scanpy"] = {
            "pool_um": square,
            **hd_pooling_peak_memory(folder, pool_um=square, naive=True),
        }
    if not keep_files:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def format_hd_table(results: dict[str, object]) -> str:
    """The runs of :func:`bench_visium_hd_pooling` as a plain-text table."""
    lay = results["layout"]
    rows = [("pooling", "peak MiB", "seconds", "spots", "nonzeros", "result MiB")]
    for r in results["runs"]:  # type: ignore[union-attr]
        s = r["streaming"]
        rows.append(
            (
                f"{r['pool_um']:g} µm {r['shape']}",
                f"{s['peak_mib']:.0f}",
                f"{s['seconds']:.1f}",
                f"{s['n_spots']:,}",
                f"{s['nnz']:,}",
                f"{s['result_mib']:.0f}",
            )
        )
    if "scanpy" in results:
        s = results["scanpy"]
        rows.append(
            (
                f"{s['pool_um']:g} µm, scanpy whole",
                f"{s['peak_mib']:.0f}",
                f"{s['seconds']:.1f}",
                f"{s['n_spots']:,}",
                f"{s['nnz']:,}",
                "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"{lay['n_bins']:,} bins of 2 µm, {lay['n_in_tissue']:,} under tissue, "
        f"{lay['nnz']:,} nonzeros ({lay['matrix_mib']:.0f} MiB .h5)"
    ]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
