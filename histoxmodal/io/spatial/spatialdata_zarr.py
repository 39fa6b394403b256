"""SpatialData zarr stores (scverse's ``spatialdata``) into the package's AnnData layout.

A SpatialData store holds images, shapes and tables that share coordinate systems. The spots are
a shapes element (circles with a ``radius`` column, or any geometry: its centroid is used) and
the expression a table that annotates it through its ``region`` and ``instance`` keys, the layout
``spatialdata-io`` writes for Visium and ``histoxmodal export --to spatialdata`` writes. The
coordinate system's units are taken as full-resolution pixels (``obsm['spatial']``); images in
it become ``uns['spatial'][sample]['images']`` with their scale factors.

``spatialdata`` is an optional dependency: ``pip install 'histoxmodal[spatialdata]'``.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.io.spatial.common import (
    HIRES_MAX_SIDE,
    LOWRES_MAX_SIDE,
    SpatialFormatError,
    absolute,
    counts_are_raw,
    finalize,
    reconcile_mpp,
    shrink,
    to_counts_csr,
    unique_gene_names,
)

log = logging.getLogger(__name__)

#: the coordinate system used when a store has several and none is asked for
DEFAULT_COORDINATE_SYSTEM = "global"
#: ``table.uns`` key where ``histoxmodal export`` keeps each library's scale factors and metadata
UNS_LIBRARIES = "histoxmodal_spatial"
_ELEMENT_DIRS = ("images", "shapes", "tables", "points", "labels")


def import_spatialdata():
    """The ``spatialdata`` module, or a one-line error naming the extra to install."""
    from histoxmodal.deps import require_extra

    require_extra("spatialdata", "reading and writing SpatialData zarr stores")
    import spatialdata

    return spatialdata


def is_spatialdata_store(path: str | Path) -> bool:
    """Whether ``path`` is a SpatialData zarr folder (zarr root attributes and element groups)."""
    p = Path(path)
    if not p.is_dir():
        return False
    if not ((p / ".zattrs").is_file() or (p / "zarr.json").is_file()):
        return False
    return any((p / d).is_dir() for d in _ELEMENT_DIRS)


def element_name(name: str) -> str:
    """``name`` made a valid SpatialData element name (letters, digits, ``_``, ``-``, ``.``)."""
    out = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)).lstrip(".")
    return out or "sample"


def _own_system(region: str, systems: list[str]) -> str:
    """The coordinate system to read the spots ``region`` in: the sample's own (named after it,
    as ``export --to spatialdata`` and spatialdata-io's readers write), else ``global``, else
    their only one. In a multi-sample ``global`` the samples may lie side by side (shifted)."""
    own = region[: -len("_spots")] if region.endswith("_spots") else region
    for cs in (own, DEFAULT_COORDINATE_SYSTEM):
        if cs in systems:
            return cs
    return systems[0]


def _affine(element, cs: str) -> np.ndarray:
    """The ``(3, 3)`` affine matrix of ``element`` into ``cs``, on ``(x, y, 1)``."""
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), float)


def _scale_only(m: np.ndarray) -> float | None:
    """The isotropic scale of ``m`` when it is a pure scale (no rotation, shear or offset)."""
    sx, sy = m[0, 0], m[1, 1]
    if abs(m[0, 1]) > 1e-9 or abs(m[1, 0]) > 1e-9 or np.abs(m[:2, 2]).max() > 1e-6:
        return None
    if sx <= 0 or abs(sx - sy) > 1e-6 * sx:
        return None
    return float(sx)


def _levels(img) -> list:
    """The ``(c, y, x)`` arrays of an image element, finest first (one for a single scale)."""
    if hasattr(img, "children") and len(img.children):
        return [next(iter(img[k].data_vars.values())) for k in sorted(img.children)]
    return [img]


def _to_hwc(level) -> np.ndarray:
    a = np.asarray(level.transpose("y", "x", "c").data if hasattr(level, "transpose") else level)
    return a[..., :3] if a.shape[-1] >= 3 else np.repeat(a[..., :1], 3, axis=-1)


def _images(sdata, cs: str, where: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``hires``/``lowres`` images in ``cs`` and their scale factors (image px per ``cs`` unit).

    Elements named ``*hires*`` / ``*lowres*`` are used as they are; otherwise the largest image
    (e.g. a full-resolution multiscale H&E) is read at the pyramid level nearest the hires size.
    """
    named: dict[str, tuple[Any, float]] = {}
    others: list[tuple[Any, float, int]] = []
    for name, img in sdata.images.items():
        from spatialdata.transformations import get_transformation

        if cs not in get_transformation(img, get_all=True):
            continue
        s = _scale_only(_affine(img, cs))
        if s is None:
            warnings.warn(
                f"{where}: image {name!r} is rotated, sheared or offset in {cs!r}; not used",
                UserWarning,
                stacklevel=3,
            )
            continue
        key = "hires" if "hires" in name else "lowres" if "lowres" in name else None
        if key and key not in named:
            named[key] = (img, s)
        else:
            lv0 = _levels(img)[0]
            others.append((img, s, int(lv0.sizes["x"]) * int(lv0.sizes["y"])))
    images: dict[str, np.ndarray] = {}
    scal: dict[str, float] = {}
    for key, sf in (("hires", keys.SCALEF_HIRES), ("lowres", keys.SCALEF_LOWRES)):
        if key in named:
            img, s = named[key]
            images[key] = _to_hwc(_levels(img)[0])
            scal[sf] = 1.0 / s
    if "hires" not in images and others:
        img, s, _ = max(others, key=lambda t: t[2])
        levels = _levels(img)
        full_w = int(levels[0].sizes["x"])
        # the coarsest level still at least the hires size, then shrunk to it
        pick = levels[0]
        for lv in levels:
            if max(int(lv.sizes["x"]), int(lv.sizes["y"])) >= HIRES_MAX_SIDE:
                pick = lv
        hires, _ = shrink(_to_hwc(pick), HIRES_MAX_SIDE)
        images["hires"] = hires
        scal[keys.SCALEF_HIRES] = hires.shape[1] / (full_w * s)
    if "lowres" not in images and "hires" in images:
        lowres, f = shrink(images["hires"], LOWRES_MAX_SIDE)
        images["lowres"] = lowres
        scal[keys.SCALEF_LOWRES] = scal[keys.SCALEF_HIRES] * f
    return images, scal


def _centres_and_diameter(shapes, ids: np.ndarray, cs: str, where: str):
    """``(n, 2)`` centres of the shapes ``ids`` in ``cs`` and their median diameter there."""
    missing = ~np.isin(ids, shapes.index.to_numpy())
    if missing.any():
        raise SpatialFormatError(
            f"{where}: {int(missing.sum())} table rows name instances absent from the shapes "
            f"(e.g. {ids[missing][0]!r}); the table's instance key must match the shapes' index"
        )
    geo = shapes.loc[ids]
    pts = geo.geometry.centroid
    xy1 = np.column_stack([pts.x.to_numpy(), pts.y.to_numpy(), np.ones(len(geo))])
    m = _affine(shapes, cs)
    xy = (xy1 @ m.T)[:, :2]
    linear = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
    if "radius" in geo:
        d = 2.0 * float(np.median(geo["radius"].to_numpy())) * linear
    else:  # polygons: the diameter of the circle of the same area
        d = float(np.median(2.0 * np.sqrt(geo.geometry.area.to_numpy() / np.pi))) * linear
    return xy.astype(np.float64), d


def read_spatialdata(
    path: str | Path,
    *,
    sample: str | None = None,
    table: str | None = None,
    coordinate_system: str | None = None,
    patient: str | None = None,
    batch: str | None = None,
    mpp: float | None = None,
):
    """Read one sample of a SpatialData zarr store into the package's AnnData layout.

    Parameters
    ----------
    path
        The ``.zarr`` folder (``spatialdata.read_zarr`` opens it).
    sample
        Which annotated shapes element (or ``obs['sample']`` value) to read when the table
        annotates several.
    table
        The table to read when the store has several.
    coordinate_system
        The coordinate system (its units are taken as full-resolution pixels); default the
        sample's own (named after it), else ``"global"`` when the spots are in it, else their
        only one.
    patient, batch
        Stored in ``obs`` when the table does not say.
    mpp
        µm per full-resolution pixel, overriding what the store records.

    Returns
    -------
    anndata.AnnData
        ``X`` the table's counts ``(n_spots, n_genes)`` (CSR when raw), ``obsm['spatial']``
        ``(n_spots, 2)`` the spot centres, ``uns['spatial'][sample]`` with ``hires``/``lowres``
        images and scale factors (``spot_diameter_fullres`` from the circles' radius).
    """
    import anndata as ad
    import pandas as pd

    sd = import_spatialdata()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"SpatialData store not found: {p}")
    if not is_spatialdata_store(p):
        raise SpatialFormatError(
            f"{p}: not a SpatialData zarr store (expected a folder with zarr.json or .zattrs "
            f"and images/, shapes/ or tables/)"
        )
    sdata = sd.read_zarr(p)
    tables = list(sdata.tables)
    if not tables:
        raise SpatialFormatError(f"{p}: no table (the expression); nothing to read")
    if table is None:
        if len(tables) > 1:
            raise SpatialFormatError(f"{p}: several tables {tables}; pass table=")
        table = tables[0]
    if table not in sdata.tables:
        raise SpatialFormatError(f"{p}: table={table!r} not found; tables: {', '.join(tables)}")
    t = sdata.tables[table]
    attrs = t.uns.get("spatialdata_attrs", {})
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    regions = attrs.get("region")
    regions = [regions] if isinstance(regions, str) else list(regions or [])
    shaped = [r for r in regions if r in sdata.shapes]
    if not region_key or not instance_key or not shaped:
        raise SpatialFormatError(
            f"{p}: table {table!r} annotates no shapes element (regions: {regions or 'none'}); "
            f"the spots must be shapes with the table's region/instance keys"
        )
    region_of = t.obs[region_key].astype(str).to_numpy()
    if sample is None:
        if len(shaped) > 1:
            raise SpatialFormatError(
                f"{p}: table {table!r} annotates several samples; pass sample= one of "
                f"{', '.join(shaped)}"
            )
        region = shaped[0]
    elif sample in shaped:
        region = sample
    else:
        hits = [
            r
            for r in shaped
            if keys.OBS_SAMPLE in t.obs
            and sample in set(t.obs[keys.OBS_SAMPLE].astype(str).to_numpy()[region_of == r])
        ]
        if not hits:
            raise SpatialFormatError(
                f"{p}: sample={sample!r} not found; samples: {', '.join(shaped)}"
            )
        region = hits[0]
    rows = np.flatnonzero(region_of == region)
    sub = t[rows]
    shapes = sdata.shapes[region]
    from spatialdata.transformations import get_transformation

    systems = list(get_transformation(shapes, get_all=True))
    cs = coordinate_system or _own_system(region, systems)
    if cs not in systems:
        raise SpatialFormatError(
            f"{p}: coordinate_system={cs!r}: the spots {region!r} are in {', '.join(systems)}"
        )
    xy, diameter = _centres_and_diameter(
        shapes, sub.obs[instance_key].to_numpy(), cs, f"{p} ({region})"
    )
    stored = dict(t.uns.get(UNS_LIBRARIES, {}))
    lib_samples = (
        sub.obs[keys.OBS_SAMPLE].astype(str).unique() if keys.OBS_SAMPLE in sub.obs else []
    )
    name = str(lib_samples[0]) if len(lib_samples) == 1 else region
    own = dict(stored.get(name, {}))
    images, scal = _images(sdata, cs, f"{p} ({region})")
    scal[keys.SPOT_DIAMETER] = diameter
    meta: dict[str, Any] = {
        k: v
        for k, v in dict(own.get("metadata", {})).items()
        if k not in ("counts_are_raw", "mpp", "mpp_source")
    }
    meta.update({"format": "spatialdata", "file": absolute(p), "table": table, "region": region})
    meta["coordinate_system"] = cs
    stored_mpp = own.get("metadata", {}).get("mpp")
    stored_src = own.get("metadata", {}).get("mpp_source", "the store")
    if mpp is not None or stored_mpp is not None:
        value, source = reconcile_mpp([(mpp, "user"), (stored_mpp, stored_src)], name)
        meta.update({"mpp": value, "mpp_source": source})
    else:
        meta.update({"mpp": None, "mpp_source": "unknown"})
    drop = {region_key, instance_key, keys.OBS_SAMPLE, keys.OBS_PATIENT, keys.OBS_BATCH}
    obs = sub.obs[[c for c in sub.obs.columns if c not in drop]].copy()
    prefix = f"{name}:"
    names = sub.obs_names.astype(str)
    if len(names) and all(n.startswith(prefix) for n in names):
        names = [n[len(prefix) :] for n in names]  # finalize puts the sample prefix back
    obs.index = pd.Index(list(names))
    X = sub.X
    X = to_counts_csr(X) if counts_are_raw(X) else X
    var = sub.var.copy()
    if keys.VAR_GENE_IDS not in var:
        var[keys.VAR_GENE_IDS] = var.index.astype(str)
    var.index = unique_gene_names(var.index, str(p))
    out = ad.AnnData(X, obs=obs, var=var, obsm={keys.OBSM_SPATIAL: xy})
    if keys.OBS_IN_TISSUE in out.obs:
        out.obs[keys.OBS_IN_TISSUE] = out.obs[keys.OBS_IN_TISSUE].astype(bool)

    def _first(col: str, default: str | None) -> str | None:
        if col in sub.obs and sub.obs[col].nunique() == 1:
            return str(sub.obs[col].iloc[0])
        return default

    log.info("%s: %s spots of %r in %r from table %r", p, len(rows), region, cs, table)
    return finalize(
        out,
        sample=name,
        patient=_first(keys.OBS_PATIENT, patient),
        batch=_first(keys.OBS_BATCH, batch),
        images=images,
        scalefactors=scal,
        metadata=meta,
    )
