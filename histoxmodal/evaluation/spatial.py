"""Spatial autocorrelation of expression maps: is a predicted map as smooth as the truth?

A head can score a fair Pearson correlation with a map that is far smoother than the tissue (it
predicts each section's trend) or rougher (noise around the mean). Moran's I of each gene over
the spots' neighbour graph says which, for the predicted and the measured values alike. The
statistic and the graph come from squidpy (``squidpy.gr.spatial_neighbors`` and
``squidpy.gr.spatial_autocorr``), the field's implementation; this module only puts arrays in.
"""

from __future__ import annotations

import warnings

import numpy as np

#: neighbours per spot in the graph Moran's I is computed on: a Visium spot's ring of six, and
#: the four edge and two of the corner neighbours of a legacy-ST grid spot
N_NEIGHBOURS = 6


def morans_i(
    values: np.ndarray,
    coords: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    genes: list[str] | None = None,
    n_neighbours: int = N_NEIGHBOURS,
) -> dict[str, float]:
    """Moran's I of each column of ``values`` (``(n_spots, n_genes)``) over the ``n_neighbours``
    nearest spots of each spot in its own section (``groups``; graphs never cross sections).

    Returns ``{gene: I}`` (``genes`` default ``"0", "1", ...``); a constant column gives NaN.
    """
    import anndata as ad
    import pandas as pd
    import squidpy as sq

    values = np.asarray(values, np.float64)
    coords = np.asarray(coords, np.float64)
    if values.ndim != 2 or len(values) != len(coords):
        raise ValueError(f"values {values.shape} and coords {coords.shape} do not match")
    genes = list(genes) if genes is not None else [str(i) for i in range(values.shape[1])]
    groups = np.zeros(len(coords), np.int64) if groups is None else np.asarray(groups)
    adata = ad.AnnData(values, var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    adata.obsm["spatial"] = coords
    adata.obs["section"] = pd.Categorical(groups.astype(str))
    smallest = int(adata.obs["section"].value_counts().min())
    k = max(1, min(n_neighbours, smallest - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sq.gr.spatial_neighbors(
            adata, coord_type="generic", n_neighs=k, library_key="section", key_added="moran"
        )
        table = sq.gr.spatial_autocorr(
            adata,
            connectivity_key="moran_connectivities",
            genes=genes,
            mode="moran",
            n_perms=None,
            copy=True,
            show_progress_bar=False,
        )
    return {g: float(table.loc[g, "I"]) for g in genes}


def morans_i_summary(predicted: dict[str, float], measured: dict[str, float]) -> dict[str, float]:
    """Means over genes of the predicted and measured Moran's I, and of their difference
    (positive: the predicted maps are smoother than the tissue)."""
    genes = [
        g for g in predicted if np.isfinite(predicted[g]) and np.isfinite(measured.get(g, np.nan))
    ]
    p = np.array([predicted[g] for g in genes])
    m = np.array([measured[g] for g in genes])
    if not genes:
        return {
            "predicted_mean": float("nan"),
            "measured_mean": float("nan"),
            "difference_mean": float("nan"),
        }
    return {
        "predicted_mean": float(p.mean()),
        "measured_mean": float(m.mean()),
        "difference_mean": float((p - m).mean()),
    }
