"""A generated spatial-transcriptomics experiment: a whole-slide image whose tissue has regions of
several types, Visium-like spots on it, and expression that follows the tissue under each spot.

Used by ``histoxmodal demo`` (the whole path with no data at hand) and by tests that need image
and expression to share a real, spatially organised signal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.testing.slides import TISSUE_TYPES, SyntheticSlide, make_synthetic_slide

#: Marker genes of each tissue type in :data:`~histoxmodal.testing.slides.TISSUE_TYPES` order.
MARKERS: tuple[tuple[str, ...], ...] = (
    ("COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "FN1", "SPARC", "POSTN"),
    ("ERBB2", "GRB7", "KRT8", "KRT18", "EPCAM", "MKI67", "CCND1", "KRT19"),
    ("PTPRC", "CD74", "HLA-DRA", "CD3E", "CD19", "IGKC", "LYZ", "CD68"),
    ("ADIPOQ", "PLIN1", "FABP4", "LPL", "CIDEA", "LEP", "CD36", "PLIN4"),
)
HOUSEKEEPING = ("ACTB", "GAPDH", "RPLP0", "B2M", "MALAT1", "TPT1", "EEF1A1", "FTL", "TMSB4X")


@dataclass(frozen=True)
class SyntheticSpatial:
    """What :func:`make_synthetic_visium` wrote.

    Attributes
    ----------
    slides
        One whole-slide image per sample (:class:`~histoxmodal.testing.slides.SyntheticSlide`).
    samples
        One AnnData per section, in the contract of :mod:`histoxmodal.keys` (raw counts,
        ``obsm['spatial']`` in level-0 pixels, ``uns['spatial']`` with a hires image and the
        slide path), plus ``obsm['composition']`` (tissue-type fractions under each spot) and
        ``obs['tissue_type']`` (the majority type): the ground truth.
    files
        The samples written as ``.h5ad`` (``histoxmodal build --recipe h5ad`` reads them).
    """

    slides: list[SyntheticSlide]
    samples: list
    files: list[Path]


def _gene_programmes(n_genes: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Gene names and a ``(n_types, n_genes)`` expression rate per tissue type."""
    named = [g for m in MARKERS for g in m] + list(HOUSEKEEPING)
    if n_genes < len(named):
        raise ValueError(f"n_genes={n_genes}: at least {len(named)} (markers + housekeeping)")
    genes = named + [f"GENE{i:04d}" for i in range(n_genes - len(named))]
    k = len(TISSUE_TYPES)
    base = rng.lognormal(np.log(0.4), 0.8, n_genes)  # background genes, low and varied
    rates = np.tile(base, (k, 1))
    for t, markers in enumerate(MARKERS):
        for g in markers:
            rates[t, genes.index(g)] = rng.uniform(8, 25)
    for g in HOUSEKEEPING:
        rates[:, genes.index(g)] = rng.uniform(20, 60)
    # background genes also differ a little between types (a diffuse programme)
    rates[:, len(named) :] *= rng.lognormal(0, 0.5, (k, n_genes - len(named)))
    return genes, rates


def make_synthetic_visium(
    out: str | Path,
    *,
    n_samples: int = 3,
    width: int = 10240,
    height: int = 10240,
    mpp: float = 0.5,
    pitch_um: float = 100.0,
    spot_um: float = 55.0,
    n_genes: int = 120,
    umis_per_spot: float = 3000.0,
    batch_effect: float = 0.3,
    seed: int = 0,
) -> SyntheticSpatial:
    """Write one slide and one Visium-like sample per capture area, expression following tissue.

    Every sample has its own whole-slide image (``slides/S<i>.tif``, tissue in regions of the
    :data:`~histoxmodal.testing.slides.TISSUE_TYPES`), spots on a hexagonal grid over its
    tissue, and counts drawn from the tissue-type composition under each spot: one gene
    programme per type (its markers in :data:`MARKERS`), housekeeping genes, background genes.

    Parameters
    ----------
    out
        Folder for ``slides/`` and ``samples/<sample>.h5ad``.
    n_samples
        Number of samples (capture areas), ``S1`` ... ``S<n>``.
    width, height, mpp
        Level-0 size of each slide and its pixel size (µm); 10240 px at 0.5 µm/px is 5.1 mm.
    pitch_um, spot_um
        Centre-to-centre distance of the hexagonal spot grid and the spot diameter (Visium: 100
        and 55 µm).
    n_genes
        Panel size (markers of each type, housekeeping genes, then background genes).
    umis_per_spot
        Mean total counts per spot (spot library sizes vary log-normally around it).
    batch_effect
        Per-sample technical shift: a sample-specific third of the genes is scaled by
        ``1 ± batch_effect``, unrelated to the tissue.
    seed
        Same seed, same files.

    Returns
    -------
    SyntheticSpatial
        The slides, the samples (ground truth in ``obsm['composition']`` and
        ``obs['tissue_type']``) and the ``.h5ad`` files.
    """
    out = Path(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    genes, rates = _gene_programmes(n_genes, rng)
    slides, samples, files = [], [], []
    for i in range(1, n_samples + 1):
        sample = f"S{i}"
        path = out / "slides" / f"{sample}.tif"
        slide = make_synthetic_slide(
            path.with_suffix(".tif.partial"),
            width=width,
            height=height,
            mpp=mpp,
            n_sections=2,
            regions=len(TISSUE_TYPES),
            seed=seed * 1000 + i,
        )
        slide.path.replace(path)
        slide = dataclasses.replace(slide, path=path)
        shift = np.ones(n_genes)
        shift[rng.permutation(n_genes)[: n_genes // 3]] = 1 + batch_effect * (1 if i % 2 else -0.5)
        adata = _spots(slide, sample, genes, rates * shift, pitch_um, spot_um, umis_per_spot, rng)
        adata.uns[keys.UNS_SPATIAL][sample]["metadata"]["seed"] = seed
        file = out / "samples" / f"{sample}.h5ad"
        tmp = file.with_suffix(".h5ad.partial")
        adata.write_h5ad(tmp)
        tmp.replace(file)
        slides.append(slide)
        samples.append(adata)
        files.append(file)
    return SyntheticSpatial(slides, samples, files)


def _spots(
    slide: SyntheticSlide,
    sample: str,
    genes: list[str],
    rates: np.ndarray,
    pitch_um: float,
    spot_um: float,
    umis_per_spot: float,
    rng: np.random.Generator,
):
    """One sample's AnnData: spots on the slide's large tissue pieces, counts from composition."""
    import cv2
    import pandas as pd
    from anndata import AnnData
    from scipy import sparse

    from histoxmodal.io.slide import open_slide
    from histoxmodal.io.spatial.common import finalize

    mpp, regions = slide.mpp, slide.regions
    cell_um = slide.mask_cell * mpp
    _, comp, stats, _ = cv2.connectedComponentsWithStats(slide.tissue_mask.astype(np.uint8))
    min_area = (2 * pitch_um / cell_um) ** 2  # fragments smaller than a few spots are debris
    big = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area)
    big = big[big > 0]
    dy = pitch_um * np.sqrt(3) / 2
    xy_um = np.asarray(
        [
            (x, y)
            for r, y in enumerate(np.arange(pitch_um / 2, slide.height * mpp - pitch_um / 2, dy))
            for x in np.arange(
                pitch_um / 2 * (1 + r % 2), slide.width * mpp - pitch_um / 2, pitch_um
            )
        ]
    )
    cells = np.floor(xy_um / cell_um).astype(int)
    keep = np.flatnonzero(np.isin(comp[cells[:, 1], cells[:, 0]], big))
    if len(keep) == 0:
        raise ValueError(f"{sample}: no tissue large enough for spots; use a larger slide")
    # tissue-type fractions of the mask cells under each spot's disc
    r = max(1.0, spot_um / 2 / cell_um)
    n = int(np.ceil(r))
    offs = [
        (ox, oy) for oy in range(-n, n + 1) for ox in range(-n, n + 1) if ox * ox + oy * oy <= r * r
    ]
    gh, gw = regions.shape
    frac = np.zeros((len(keep), len(TISSUE_TYPES)))
    for ox, oy in offs:
        x = np.clip(cells[keep, 0] + ox, 0, gw - 1)
        y = np.clip(cells[keep, 1] + oy, 0, gh - 1)
        t = regions[y, x]
        on = t >= 0
        np.add.at(frac, (np.flatnonzero(on), t[on]), 1)
    frac /= np.maximum(frac.sum(axis=1, keepdims=True), 1)
    profile = frac @ rates
    profile /= profile.sum(axis=1, keepdims=True)
    lib = umis_per_spot * rng.lognormal(0, 0.35, len(keep))
    counts = rng.poisson(profile * lib[:, None]).astype(np.int32)
    adata = AnnData(
        sparse.csr_matrix(counts),
        obs=pd.DataFrame(
            {
                keys.OBS_IN_TISSUE: True,
                "tissue_type": pd.Categorical(
                    [TISSUE_TYPES[t]["name"] for t in frac.argmax(axis=1)],
                    categories=[t["name"] for t in TISSUE_TYPES],
                ),
            },
            index=[f"spot{j:05d}" for j in keep],
        ),
        var=pd.DataFrame({keys.VAR_GENE_IDS: genes}, index=genes),
    )
    adata.obsm[keys.OBSM_SPATIAL] = xy_um[keep] / mpp
    adata.obsm["composition"] = frac
    # a hires image for scanpy.pl.spatial: the pyramid level closest to 2000 px
    dims = slide.level_dimensions
    level = min(range(len(dims)), key=lambda i: abs(max(dims[i]) - 2000))
    hires = np.asarray(open_slide(slide.path).read_region((0, 0), level, dims[level]))[..., :3]
    return finalize(
        adata,
        sample=sample,
        patient=None,
        batch=None,
        images={"hires": hires},
        scalefactors={
            keys.SCALEF_HIRES: dims[level][0] / slide.width,
            keys.SPOT_DIAMETER: 65.0 / mpp,  # Space Ranger's definition: a 65 µm disc
        },
        metadata={
            "format": "synthetic",
            "image_path": str(slide.path),
            "mpp": mpp,
            "mpp_source": "metadata",
        },
    )
