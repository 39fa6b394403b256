"""A small Visium HD output in Space Ranger's layout, with its full-resolution H&E.

What it writes, in 10x's layout (Space Ranger 3, "Visium HD outputs"), under ``out/``::

    out/
      <name>_tissue_image.tif                 the full-resolution H&E (what --image takes)
      outs/
        feature_slice.h5                      attrs ``metadata_json`` (``hd_layout_json`` with
                                              ``file_format`` and the array → image transform)
        spatial/                              tissue_hires_image.png, tissue_lowres_image.png,
                                              scalefactors_json.json (of the 2 µm bins)
        binned_outputs/square_002um|008um|016um/
          filtered_feature_bc_matrix.h5       10x's HDF5 matrix schema (``matrix/``: barcodes,
                                              data int32, indices int64, indptr int64, shape,
                                              features/{_all_tag_keys, feature_type, genome, id,
                                              name}), the bins under tissue
          spatial/tissue_positions.parquet    every bin of the grid: barcode, in_tissue,
                                              array_row, array_col, pxl_row_in_fullres,
                                              pxl_col_in_fullres
          spatial/scalefactors_json.json      spot_diameter_fullres = bin_size_um /
                                              microns_per_pixel, bin_size_um, microns_per_pixel,
                                              tissue_hires_scalef, tissue_lowres_scalef, ...

Counts are drawn per 2 µm bin (none outside the tissue); each 8 and 16 µm bin holds the sum of
its 4 x 4 and 8 x 8 2 µm bins, as Space Ranger's do. The H&E is a known picture of the tissue
warped into the image by a known homography, which also gives every bin's pixel position.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SyntheticVisiumHD",
    "bin_barcodes",
    "make_synthetic_visium_hd",
    "write_10x_h5",
    "write_bin_positions",
]


@dataclass(frozen=True)
class SyntheticVisiumHD:
    """What :func:`make_synthetic_visium_hd` wrote, and the truth it was made from.

    Attributes
    ----------
    folder, outs
        The run folder and its ``outs/``.
    image
        The full-resolution H&E.
    homography
        ``(3, 3)`` map from 2 µm bin indices ``(array_col, array_row)`` to image pixels.
    mpp
        µm per image pixel.
    genes
        Gene symbols, in the matrices' order.
    counts
        Bin size (µm) → ``(n_rows, n_cols, n_genes)`` dense counts of every bin of the grid.
    in_tissue
        Bin size → ``(n_rows, n_cols)`` bool.
    """

    folder: Path
    outs: Path
    image: Path
    homography: np.ndarray
    mpp: float
    genes: list[str]
    counts: dict[int, np.ndarray]
    in_tissue: dict[int, np.ndarray]

    def bin_dir(self, bin_um: int) -> Path:
        return self.outs / "binned_outputs" / f"square_{bin_um:03d}um"

    def um_to_image(self, xy_um: np.ndarray) -> np.ndarray:
        """``(n, 2)`` µm on the capture array → ``(n, 2)`` image pixels, by the true map."""
        from histoxmodal.io.spatial.visium_hd_grid import apply_homography

        return apply_homography(self.homography, np.asarray(xy_um, np.float64) / 2.0 - 0.5)


def bin_barcodes(rows: np.ndarray, cols: np.ndarray, bin_um: int) -> np.ndarray:
    """10x's bin barcodes ``s_{bin:03d}um_{row:05d}_{col:05d}-1`` as fixed-width bytes."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    n = len(rows)
    prefix = np.frombuffer(f"s_{bin_um:03d}um_".encode(), np.uint8)
    out = np.empty((n, 21), np.uint8)
    out[:, :8] = prefix
    w = 10 ** np.arange(4, -1, -1, dtype=np.int64)
    out[:, 8:13] = 48 + (rows[:, None] // w) % 10
    out[:, 13] = ord("_")
    out[:, 14:19] = 48 + (cols[:, None] // w) % 10
    out[:, 19:21] = np.frombuffer(b"-1", np.uint8)
    return out.view("S21").ravel()


def write_10x_h5(
    path: str | Path,
    blocks: Iterable[tuple[np.ndarray, object]],
    *,
    genes: list[str],
    gene_ids: list[str],
    genome: str = "GRCh38",
    chunk: int = 1 << 16,
    compression: str | None = "gzip",
) -> Path:
    """Write a feature-barcode matrix in 10x's HDF5 schema, block by block (bounded memory).

    Parameters
    ----------
    blocks
        ``(barcodes (n,) bytes, counts (n, n_genes) CSR)`` in file order.
    genes, gene_ids
        Feature names and ids (all ``Gene Expression``).

    Written to ``path``'s ``.partial`` sibling and renamed into place.
    """
    import h5py
    import scipy.sparse as sp

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    kw = {"compression": compression} if compression else {}
    with h5py.File(tmp, "w") as f:
        f.attrs.update(
            {
                "filetype": "matrix",
                "version": 2,
                "library_ids": np.array([b"synthetic"]),
                "original_gem_groups": np.array([1]),
                "chemistry_description": "Visium HD v1",
                "software_version": "spaceranger-3.1.0 (synthetic)",
            }
        )
        m = f.create_group("matrix")
        bc = m.create_dataset("barcodes", (0,), "S21", maxshape=(None,), chunks=(chunk,), **kw)
        data = m.create_dataset("data", (0,), np.int32, maxshape=(None,), chunks=(chunk,), **kw)
        ind = m.create_dataset("indices", (0,), np.int64, maxshape=(None,), chunks=(chunk,), **kw)
        indptr = [np.zeros(1, np.int64)]
        n_bc = nnz = 0
        for barcodes, x in blocks:
            x = sp.csr_matrix(x)
            x.sort_indices()
            n, k = len(barcodes), x.nnz
            bc.resize((n_bc + n,))
            bc[n_bc:] = barcodes
            data.resize((nnz + k,))
            data[nnz:] = x.data.astype(np.int32)
            ind.resize((nnz + k,))
            ind[nnz:] = x.indices.astype(np.int64)
            indptr.append(nnz + x.indptr[1:].astype(np.int64))
            n_bc, nnz = n_bc + n, nnz + k
        m.create_dataset("indptr", data=np.concatenate(indptr), **kw)
        m.create_dataset("shape", data=np.array([len(genes), n_bc], np.int32))
        feats = m.create_group("features")
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feats.create_dataset("feature_type", data=np.array([b"Gene Expression"] * len(genes)))
        feats.create_dataset("genome", data=np.array([genome.encode()] * len(genes)))
        feats.create_dataset("id", data=np.array([g.encode() for g in gene_ids]))
        feats.create_dataset("name", data=np.array([g.encode() for g in genes]))
    tmp.replace(path)
    return path


def write_bin_positions(
    path: str | Path,
    n_rows: int,
    n_cols: int,
    *,
    bin_um: int,
    homography: np.ndarray,
    in_tissue,
    rows_per_group: int = 256,
) -> Path:
    """Write ``tissue_positions.parquet`` for every bin of an ``n_rows x n_cols`` grid, grid row
    by grid row (bounded memory); ``in_tissue(r0, r1)`` gives rows ``r0:r1`` of the mask and
    ``homography`` maps this grid's ``(array_col, array_row)`` to image pixels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from histoxmodal.io.spatial.visium_hd_grid import apply_homography

    path = Path(path)
    schema = pa.schema(
        [
            ("barcode", pa.string()),
            ("in_tissue", pa.int32()),
            ("array_row", pa.int32()),
            ("array_col", pa.int32()),
            ("pxl_row_in_fullres", pa.float64()),
            ("pxl_col_in_fullres", pa.float64()),
        ]
    )
    tmp = path.with_name(path.name + ".partial")
    with pq.ParquetWriter(tmp, schema) as w:
        for r0 in range(0, n_rows, rows_per_group):
            r1 = min(r0 + rows_per_group, n_rows)
            r = np.repeat(np.arange(r0, r1), n_cols)
            c = np.tile(np.arange(n_cols), r1 - r0)
            xy = apply_homography(homography, np.c_[c, r])
            bcs = bin_barcodes(r, c, bin_um)
            w.write_batch(
                pa.record_batch(
                    [
                        pa.array(bcs.astype(object), pa.binary()).cast(pa.string()),
                        pa.array(np.asarray(in_tissue(r0, r1), np.int32).ravel()),
                        pa.array(r.astype(np.int32)),
                        pa.array(c.astype(np.int32)),
                        pa.array(xy[:, 1]),
                        pa.array(xy[:, 0]),
                    ],
                    schema=schema,
                )
            )
    tmp.replace(path)
    return path


def _homography(mpp: float, rotation_deg: float, offset_px, perspective: float) -> np.ndarray:
    """2 µm bin indices → image pixels: scale (2 µm per bin), rotation, offset, and a slight
    perspective term as Space Ranger's registration can hold."""
    th = math.radians(rotation_deg)
    s = 2.0 / mpp
    h = np.array(
        [
            [s * math.cos(th), -s * math.sin(th), offset_px[0]],
            [s * math.sin(th), s * math.cos(th), offset_px[1]],
            [perspective, -perspective / 2, 1.0],
        ]
    )
    return h


def _blocks_of(counts: np.ndarray, mask: np.ndarray, bin_um: int, rows_per_block: int = 64):
    """The bins under ``mask``, grid row by grid row: ``(barcodes, CSR counts)`` blocks."""
    import scipy.sparse as sp

    n_rows = mask.shape[0]
    for r0 in range(0, n_rows, rows_per_block):
        m = mask[r0 : r0 + rows_per_block]
        r, c = np.nonzero(m)
        yield bin_barcodes(r + r0, c, bin_um), sp.csr_matrix(counts[r + r0, c])


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    tmp.replace(path)


def _write_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".partial")
    Image.fromarray(img).save(tmp, format="PNG")
    tmp.replace(path)


def make_synthetic_visium_hd(
    out: str | Path,
    *,
    name: str = "hd_synth",
    n_rows: int = 176,
    n_cols: int = 224,
    n_genes: int = 30,
    umis_per_bin: float = 0.8,
    mpp: float = 0.5,
    rotation_deg: float = 3.0,
    perspective: float = 2e-6,
    margin_px: int = 60,
    seed: int = 0,
) -> SyntheticVisiumHD:
    """Write a Visium HD run into ``out`` (created) and return what it holds.

    Parameters
    ----------
    n_rows, n_cols
        The 2 µm grid (multiples of 8, so the 8 and 16 µm grids tile it).
    n_genes, umis_per_bin
        Genes, and the mean UMIs of a 2 µm bin under tissue (three tissue types, in vertical
        bands, each with its markers).
    mpp, rotation_deg, perspective
        The H&E's pixel size, its rotation against the array, and the homography's
        perspective term.
    """
    import cv2
    import tifffile

    if n_rows % 8 or n_cols % 8:
        raise ValueError(f"n_rows={n_rows}, n_cols={n_cols}: multiples of 8 (16 µm bins)")
    out = Path(out)
    outs = out / "outs"
    (outs / "spatial").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    genes = [f"GENE{i:03d}" for i in range(n_genes)]
    gene_ids = [f"ENSG{i:011d}" for i in range(n_genes)]

    # tissue: an ellipse over the array; three types in vertical bands
    rr, cc = np.mgrid[0:n_rows, 0:n_cols]
    ell = ((cc - n_cols / 2) / (0.42 * n_cols)) ** 2 + ((rr - n_rows / 2) / (0.4 * n_rows)) ** 2
    tissue = ell <= 1.0
    kind = np.minimum((cc / n_cols * 3).astype(int), 2)
    rates = rng.lognormal(0, 1, (3, n_genes))
    for t in range(3):
        rates[t, t * 4 : t * 4 + 4] *= 10
    rates /= rates.sum(axis=1, keepdims=True)
    lam = umis_per_bin * rates[kind] * tissue[..., None]
    c2 = rng.poisson(lam).astype(np.int32)
    counts = {2: c2}
    masks = {2: tissue}
    for b in (8, 16):
        k = b // 2
        counts[b] = c2.reshape(n_rows // k, k, n_cols // k, k, n_genes).sum(axis=(1, 3))
        masks[b] = tissue.reshape(n_rows // k, k, n_cols // k, k).any(axis=(1, 3))

    # the homography of the 2 µm grid, placed with a margin inside the image
    H0 = _homography(mpp, rotation_deg, (0.0, 0.0), perspective)
    from histoxmodal.io.spatial.visium_hd_grid import apply_homography

    corners = apply_homography(H0, [[-0.5, -0.5], [n_cols, -0.5], [-0.5, n_rows], [n_cols, n_rows]])
    shift = margin_px - corners.min(axis=0)
    H = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]]) @ H0
    w_px, h_px = (math.ceil(v + margin_px) for v in (corners + shift).max(axis=0))

    # the known picture, in 2 µm-bin index space at 4 px per bin, warped into the image
    res = 4
    pic = np.full((n_rows * res, n_cols * res, 3), 242, np.uint8)
    colours = np.array([(232, 170, 200), (214, 150, 190), (236, 196, 210)], np.uint8)
    big_t = np.kron(tissue, np.ones((res, res), bool))
    big_k = np.kron(kind, np.ones((res, res), int))
    pic[big_t] = colours[big_k[big_t]]
    noise = rng.normal(0, 6, pic.shape[:2])[..., None]
    pic = np.where(big_t[..., None], np.clip(pic + noise, 0, 255), pic).astype(np.uint8)
    n_nuclei = int(tissue.sum() / 12)
    nr, nc = np.nonzero(tissue)
    pick = rng.choice(len(nr), n_nuclei, replace=False)
    for r, c in zip(nr[pick], nc[pick], strict=True):
        cv2.circle(pic, (int(c * res + res // 2), int(r * res + res // 2)), 6, (95, 60, 150), -1)
    # picture pixel p ↔ bin index (p + 0.5) / res - 0.5
    to_index = np.array([[1 / res, 0, 0.5 / res - 0.5], [0, 1 / res, 0.5 / res - 0.5], [0, 0, 1]])
    warp = H @ to_index  # picture px -> image px
    he = cv2.warpPerspective(
        pic, warp, (w_px, h_px), flags=cv2.INTER_LINEAR, borderValue=(242, 242, 242)
    )
    image = out / f"{name}_tissue_image.tif"
    tmp = image.with_name(image.name + ".partial")
    tifffile.imwrite(tmp, he, photometric="rgb", tile=(256, 256), compression="zlib")
    tmp.replace(image)

    hires_scalef = min(1.0, 600 / max(w_px, h_px))
    lowres_scalef = min(1.0, 200 / max(w_px, h_px))
    hires = cv2.resize(
        he,
        (round(w_px * hires_scalef), round(h_px * hires_scalef)),
        interpolation=cv2.INTER_AREA,
    )
    lowres = cv2.resize(
        he,
        (round(w_px * lowres_scalef), round(h_px * lowres_scalef)),
        interpolation=cv2.INTER_AREA,
    )
    _write_png(outs / "spatial" / "tissue_hires_image.png", hires)
    _write_png(outs / "spatial" / "tissue_lowres_image.png", lowres)

    def scalefactors(b: int) -> dict[str, float]:
        return {
            "spot_diameter_fullres": b / mpp,
            "bin_size_um": float(b),
            "microns_per_pixel": mpp,
            "regist_target_img_scalef": hires_scalef,
            "tissue_lowres_scalef": lowres_scalef,
            "fiducial_diameter_fullres": 30 / mpp,
            "tissue_hires_scalef": hires_scalef,
        }

    _write_json(outs / "spatial" / "scalefactors_json.json", scalefactors(2))
    for b in (2, 8, 16):
        k = b // 2
        d = outs / "binned_outputs" / f"square_{b:03d}um"
        (d / "spatial").mkdir(parents=True, exist_ok=True)
        # bin (R, C) of b µm spans 2 µm bins k R .. k R + k - 1: its centre is 2 µm index k R +
        # (k - 1) / 2
        Hb = H @ np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2], [0, 0, 1]])
        mask = masks[b]
        write_bin_positions(
            d / "spatial" / "tissue_positions.parquet",
            *mask.shape,
            bin_um=b,
            homography=Hb,
            in_tissue=lambda r0, r1, mask=mask: mask[r0:r1],
        )
        _write_json(d / "spatial" / "scalefactors_json.json", scalefactors(b))
        write_10x_h5(
            d / "filtered_feature_bc_matrix.h5",
            _blocks_of(counts[b], mask, b),
            genes=genes,
            gene_ids=gene_ids,
            chunk=4096,
        )
    _write_feature_slice(outs / "feature_slice.h5", H, n_rows, n_cols)
    return SyntheticVisiumHD(
        folder=out,
        outs=outs,
        image=image,
        homography=H,
        mpp=mpp,
        genes=genes,
        counts=counts,
        in_tissue=masks,
    )


def _write_feature_slice(path: Path, H: np.ndarray, n_rows: int, n_cols: int) -> None:
    """``feature_slice.h5`` with the metadata readers take the layout from (``metadata_json``:
    ``hd_layout_json`` with its ``file_format`` and ``transform``, and ``transform_matrices``)."""
    import h5py

    eye = np.eye(3).ravel().tolist()
    inv = np.linalg.inv(H)
    meta = {
        "hd_layout_json": json.dumps(
            {
                "file_format": "1.0",
                "transform": eye,
                "num_rows": n_rows,
                "num_cols": n_cols,
                "spot_pitch": 2.0,
            }
        ),
        "transform_matrices": {
            "cytassist_colrow_to_spot_colrow": eye,
            "spot_colrow_to_cytassist_colrow": eye,
            "microscope_colrow_to_spot_colrow": (inv / inv[2, 2]).ravel().tolist(),
            "spot_colrow_to_microscope_colrow": H.ravel().tolist(),
        },
    }
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.attrs["metadata_json"] = json.dumps(meta)
    tmp.replace(path)
