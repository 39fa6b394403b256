"""AnnData ``.h5ad`` files that already follow the scanpy/squidpy spatial layout."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.io.spatial.common import (
    SpatialFormatError,
    absolute,
    counts_are_raw,
    is_blank,
    reconcile_mpp,
    require_file,
    to_counts_csr,
    unique_gene_names,
)
from histoxmodal.io.spatial.visium import SPACERANGER_SPOT_DIAMETER_UM


def read_h5ad(
    path: str | Path,
    *,
    library_id: str | None = None,
    image: str | Path | None = None,
    sample: str | None = None,
    patient: str | None = None,
    batch: str | None = None,
    mpp: float | None = None,
    layer: str | None = None,
):
    """Read an ``.h5ad`` with ``obsm['spatial']`` (and ideally ``uns['spatial']``).

    The counts are taken from ``layers[layer]`` when ``layer`` is given (in a build recipe:
    ``reader: {layer: NAME}``), else from ``layers['counts']`` when ``X`` is not raw counts and
    that layer exists, else from ``X``. Values that are not raw counts are kept unchanged and
    flagged (``metadata['counts_are_raw'] = False``). The pixel size comes from ``mpp``, else
    from ``spot_diameter_fullres`` (a Visium-derived file), else it is left unknown.
    """
    import anndata as ad
    import pandas as pd

    path = require_file(Path(path), "AnnData file")
    adata = ad.read_h5ad(path)
    if keys.OBSM_SPATIAL not in adata.obsm:
        raise SpatialFormatError(
            f"{path}: no obsm['spatial'] (spot coordinates in full-resolution pixels); add it "
            f"(adata.obsm['spatial'] = xy) or read the original output with its own reader"
        )
    libs = list(adata.uns.get(keys.UNS_SPATIAL, {}))
    if library_id is None:
        if len(libs) > 1:
            raise SpatialFormatError(f"{path}: several libraries {libs}; pass library_id=")
        library_id = libs[0] if libs else None
    entry = adata.uns.get(keys.UNS_SPATIAL, {}).get(library_id, {}) if library_id else {}
    if not entry:
        warnings.warn(
            f"{path}: no uns['spatial'] entry: no images or scale factors",
            UserWarning,
            stacklevel=2,
        )
    sample = sample or library_id or path.stem
    layers = sorted(map(str, adata.layers))
    if layer is not None:
        if layer not in adata.layers:
            raise SpatialFormatError(
                f"{path}: no layer {layer!r} to take the counts from; its layers: "
                f"{', '.join(layers) or 'none'} (leave layer unset to use X)"
            )
        adata.X, counts_from = adata.layers[layer], f"layers[{layer!r}]"
    elif not counts_are_raw(adata.X) and "counts" in adata.layers:
        adata.X, counts_from = adata.layers["counts"], "layers['counts']"
    else:
        counts_from = "X"
    adata.X = to_counts_csr(adata.X) if counts_are_raw(adata.X) else adata.X
    if keys.VAR_GENE_IDS not in adata.var:
        adata.var[keys.VAR_GENE_IDS] = adata.var_names.astype(str)
    adata.var_names = unique_gene_names(adata.var_names, str(path))
    images = {
        k: np.asarray(v) for k, v in entry.get("images", {}).items() if not is_blank(np.asarray(v))
    }
    scal = {k: float(v) for k, v in entry.get("scalefactors", {}).items()}
    meta = {
        "format": "h5ad",
        "file": absolute(path),
        "counts_from": counts_from,
        "layers": layers,
        "image_path": absolute(image) if image else None,
        "source_library_id": library_id,
    }
    cands = [(mpp, "user")]
    if scal.get(keys.SPOT_DIAMETER):
        cands.append(
            (
                SPACERANGER_SPOT_DIAMETER_UM / scal[keys.SPOT_DIAMETER],
                "scalefactors spot_diameter_fullres (65 µm)",
            )
        )
    if any(v is not None for v, _ in cands):
        value, source = reconcile_mpp(cands, sample)
        meta.update({"mpp": value, "mpp_source": source})
    else:
        meta.update({"mpp": None, "mpp_source": "unknown"})
    keep_obs = {
        k: adata.obs[k]
        for k in adata.obs.columns
        if k not in (keys.OBS_SAMPLE, keys.OBS_PATIENT, keys.OBS_BATCH)
    }
    out = ad.AnnData(
        adata.X,
        obs=pd.DataFrame(keep_obs, index=adata.obs_names),
        var=adata.var,
        obsm={keys.OBSM_SPATIAL: np.asarray(adata.obsm[keys.OBSM_SPATIAL], np.float64)},
    )
    if keys.OBS_IN_TISSUE in out.obs:
        out.obs[keys.OBS_IN_TISSUE] = out.obs[keys.OBS_IN_TISSUE].astype(bool)
    from histoxmodal.io.spatial.common import finalize

    def _first(col: str, default: str | None) -> str | None:
        if col in adata.obs and adata.obs[col].nunique() == 1:
            return str(adata.obs[col].iloc[0])
        return default

    return finalize(
        out,
        sample=sample,
        patient=_first(keys.OBS_PATIENT, patient),
        batch=_first(keys.OBS_BATCH, batch),
        images=images,
        scalefactors=scal,
        metadata=meta,
    )
