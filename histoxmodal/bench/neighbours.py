"""``histoxmodal bench neighbours``: the hand-built radius graph of
:mod:`histoxmodal.data.neighbours` against squidpy's ``spatial_neighbors`` on the same spots, in
the same process.

The graph behind the heads' neighbour context and retrieval smoothing is built with a k-d tree
per section (:func:`~histoxmodal.data.neighbours.radius_neighbours`). squidpy builds the same
graph; this measures whether it is as fast, and checks that the two give the same neighbours.
"""

from __future__ import annotations

import time
import warnings

import numpy as np


def hex_spots(n_spots: int, n_sections: int = 1, pitch_um: float = 100.0):
    """``(coords µm, section)`` of ``n_spots`` on a Visium-like hexagonal grid, split evenly over
    ``n_sections`` sections laid at the same place (neighbourhoods must not cross them)."""
    per = int(np.ceil(n_spots / n_sections))
    side = int(np.ceil(np.sqrt(per)))
    xs, ys = np.meshgrid(np.arange(side), np.arange(side))
    one = np.c_[(xs + 0.5 * (ys % 2)).ravel() * pitch_um, ys.ravel() * pitch_um * np.sqrt(3) / 2]
    one = one[:per]
    coords = np.concatenate([one] * n_sections)[:n_spots]
    groups = np.repeat(np.arange(n_sections), per)[:n_spots]
    return coords, groups


def bench_neighbours(
    n_spots: int = 100_000, *, n_sections: int = 1, radius_um: float = 250.0, repeats: int = 3
) -> dict[str, float]:
    """Best-of-``repeats`` seconds of both builds, their ratio (squidpy / histoxmodal), and the
    number of edges of each and of their symmetric difference (0: the same neighbours)."""
    import anndata as ad
    import pandas as pd
    import squidpy as sq

    from histoxmodal.data.neighbours import radius_neighbours

    coords, groups = hex_spots(n_spots, n_sections)
    ours, theirs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = radius_neighbours(coords, groups, radius=radius_um)
        ours.append(time.perf_counter() - t0)
        adata = ad.AnnData(np.zeros((len(coords), 1), np.float32))
        adata.obsm["spatial"] = coords
        adata.obs["section"] = pd.Categorical(groups.astype(str))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sq.gr.spatial_neighbors(
                adata, coord_type="generic", radius=radius_um, library_key="section"
            )
        theirs.append(time.perf_counter() - t0)
    a = (m > 0).astype(np.int8).tolil()
    a.setdiag(0)
    a = a.tocsr()
    a.eliminate_zeros()
    b = (adata.obsp["spatial_connectivities"] != 0).astype(np.int8).tolil()
    b.setdiag(0)
    b = b.tocsr()
    b.eliminate_zeros()
    return {
        "n_spots": len(coords),
        "n_sections": n_sections,
        "radius_um": radius_um,
        "histoxmodal_s": min(ours),
        "squidpy_s": min(theirs),
        "ratio_squidpy": min(theirs) / min(ours),
        "edges_histoxmodal": int(a.nnz),
        "edges_squidpy": int(b.nnz),
        "edges_differing": int(abs(a - b).nnz),
    }
