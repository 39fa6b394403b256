"""A small Xenium output bundle from transcripts up, with a registered H&E and its alignments.

What it writes, in 10x's layouts (Xenium Onboard Analysis outputs; Xenium Explorer's alignment
export), into one folder:

- ``transcripts.parquet``: one row per transcript in XOA 3's schema (``transcript_id``,
  ``cell_id``, ``overlaps_nucleus``, ``feature_name``, ``x_location``, ``y_location``,
  ``z_location``, ``qv``, ``fov_name``, ``nucleus_distance``, ``codeword_index``,
  ``codeword_category``, ``is_gene``; the last three left out with ``categories=False``, as in
  XOA 1), rows shuffled and written in several row groups; with negative-control probes and
  codewords, unassigned and deprecated codewords (``BLANK_`` ones in the XOA 1 layout) and a
  share of low-quality (``qv < 20``) rows, some exactly at 20;
- ``cells.parquet`` and ``cells.csv.gz``: centroids (µm) and counts per cell;
- ``experiment.xenium``: the manifest, with ``pixel_size`` 0.2125;
- ``<name>_he_image.ome.tif``: an "H&E" made by warping a known picture of the tissue (drawn in
  the µm frame: stroma, nuclei at the cell centroids) with a known affine (rotation, scale,
  translation) into the image's pixels;
- ``<name>_he_imagealignment.csv``: that affine as 10x writes it (H&E pixels → morphology
  pixels, three rows of three numbers, no header);
- ``<name>_he_image_keypoints.csv``: landmark pairs as Xenium Explorer exports them
  (``fixedX,fixedY`` in µm, ``alignmentX,alignmentY`` in H&E pixels) with small noise on the
  image side.

For tests of ``read_xenium(..., source="transcripts")`` and of the alignment readers; the truth
(the affine, the features and their categories) comes back in :class:`SyntheticXenium`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["SyntheticXenium", "make_synthetic_xenium", "write_transcripts_parquet"]

#: µm per pixel of Xenium's morphology image
MORPHOLOGY_MPP = 0.2125


@dataclass(frozen=True)
class SyntheticXenium:
    """What :func:`make_synthetic_xenium` wrote, and the truth it was made from.

    Attributes
    ----------
    folder
        The Xenium output folder.
    transcripts, cells, cells_csv, image, matrix_csv, keypoints_csv
        The files (see the module docstring).
    image_to_um
        ``(3, 3)`` affine from H&E pixels to Xenium µm: the truth both alignment files encode.
    he_mpp
        µm per H&E pixel.
    genes
        Gene names.
    controls
        Control feature name → its ``codeword_category`` (without categories, the category
        :func:`~histoxmodal.io.spatial.xenium_transcripts.control_class` gives its name).
    n_transcripts
        Rows of ``transcripts.parquet``.
    """

    folder: Path
    transcripts: Path
    cells: Path
    cells_csv: Path
    image: Path
    matrix_csv: Path
    keypoints_csv: Path
    image_to_um: np.ndarray
    he_mpp: float
    genes: list[str]
    controls: dict[str, str] = field(default_factory=dict)
    n_transcripts: int = 0

    def um_to_image(self, xy_um: np.ndarray) -> np.ndarray:
        """``(n, 2)`` µm → ``(n, 2)`` H&E pixels, by the true affine."""
        inv = np.linalg.inv(self.image_to_um)
        return np.asarray(xy_um, np.float64) @ inv[:2, :2].T + inv[:2, 2]


def _cell_id(i: np.ndarray) -> list[str]:
    """10x's cell ids (XOA >= 1.3): the integer in 8 base-16 digits written with the letters
    a-p, then the dataset suffix ``-1``."""
    digits = (np.asarray(i, np.int64)[:, None] >> (4 * np.arange(7, -1, -1))) & 0xF
    letters = np.array(list("abcdefghijklmnop"))[digits]
    return ["".join(r) + "-1" for r in letters]


def _controls(categories: bool) -> dict[str, str]:
    """Control features and their categories, named as the XOA version writes them."""
    names = {f"NegControlProbe_{i:05d}": "negative_control_probe" for i in (1, 2, 4, 9)}
    names |= {f"NegControlCodeword_{500 + i}": "negative_control_codeword" for i in range(3)}
    if categories:
        names |= {f"UnassignedCodeword_{i:04d}": "unassigned_codeword" for i in range(3)}
        names |= {f"DeprecatedCodeword_{i:04d}": "deprecated_codeword" for i in range(2)}
        names |= {f"Intergenic_Region_{i}": "genomic_control_probe" for i in range(2)}
    else:  # XOA 1.x named the unused codewords BLANK_ (control_class: blank_codeword)
        names |= {f"BLANK_{i:04d}": "blank_codeword" for i in range(4)}
    return names


def write_transcripts_parquet(
    path: str | Path, table, *, row_group_rows: int = 65536, feature_name_bytes: bool = False
) -> Path:
    """Write a transcripts table (a pandas DataFrame or pyarrow Table in Xenium's schema) as
    Parquet in row groups of ``row_group_rows``, ``feature_name`` as bytes if asked (XOA 1).

    Written to ``path``'s ``.partial`` sibling and renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    t = table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)
    if feature_name_bytes:
        i = t.schema.get_field_index("feature_name")
        t = t.set_column(i, "feature_name", t.column("feature_name").cast(pa.binary()))
    tmp = path.with_name(path.name + ".partial")
    pq.write_table(t, tmp, row_group_size=row_group_rows)
    tmp.replace(path)
    return path


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _affine(he_mpp: float, rotation_deg: float, centre_um, centre_px) -> np.ndarray:
    """H&E pixels → µm: a rotation about the image centre, the pixel size, a translation."""
    th = math.radians(rotation_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    lin = he_mpp * rot
    a = np.eye(3)
    a[:2, :2] = lin
    a[:2, 2] = np.asarray(centre_um, float) - lin @ np.asarray(centre_px, float)
    return a


def _render_tissue(width_um, height_um, margin_um, res_um, cells_xy, rng) -> np.ndarray:
    """The known picture, in the µm frame at ``res_um`` µm/px: glass, stroma and nuclei."""
    import cv2

    w = round((width_um + 2 * margin_um) / res_um)
    h = round((height_um + 2 * margin_um) / res_um)
    img = np.full((h, w, 3), 242, np.uint8)
    o = round(margin_um / res_um)
    tissue = img[o : h - o, o : w - o]
    tissue[:] = (232, 170, 200)  # eosin pink
    noise = rng.normal(0, 6, tissue.shape[:2])[..., None]
    tissue[:] = np.clip(tissue + noise, 0, 255).astype(np.uint8)
    for x, y in cells_xy:
        c = (round((x + margin_um) / res_um), round((y + margin_um) / res_um))
        cv2.circle(img, c, max(2, round(3.5 / res_um)), (95, 60, 150), -1, cv2.LINE_AA)
    return img


def make_synthetic_xenium(
    out: str | Path,
    *,
    name: str = "xenium_synth",
    width_um: float = 600.0,
    height_um: float = 450.0,
    n_cells: int = 400,
    n_genes: int = 40,
    transcripts_per_cell: float = 60.0,
    background_fraction: float = 0.1,
    control_fraction: float = 0.04,
    low_qv_fraction: float = 0.12,
    he_mpp: float = 0.5,
    rotation_deg: float = 4.0,
    n_keypoints: int = 12,
    keypoint_noise_px: float = 0.4,
    categories: bool = True,
    feature_name_bytes: bool = False,
    row_group_rows: int = 8192,
    seed: int = 0,
) -> SyntheticXenium:
    """Write a Xenium bundle into ``out`` (created) and return what it holds.

    Parameters
    ----------
    width_um, height_um
        The imaged region; transcripts lie in ``[0, width_um) x [0, height_um)`` µm.
    n_cells, n_genes, transcripts_per_cell
        Cells (three types, by position), genes, and the mean transcripts each cell holds.
    background_fraction, control_fraction
        Extra transcripts outside cells (``cell_id`` ``UNASSIGNED``), and control features,
        as a share of the cells' transcripts.
    low_qv_fraction
        Share of rows given ``qv < 20``.
    he_mpp, rotation_deg
        The H&E's pixel size and its rotation against the Xenium frame.
    n_keypoints, keypoint_noise_px
        Landmark pairs in the keypoints file and the noise (px, each axis) on their H&E side.
    categories
        XOA 3 schema (``codeword_index``, ``codeword_category``, ``is_gene``); ``False`` writes
        XOA 1's (controls known only by name, ``BLANK_`` codewords).
    feature_name_bytes
        Store ``feature_name`` as bytes, as some XOA versions do.
    row_group_rows
        Parquet row-group size (several groups exercise the chunked reader).
    """
    import cv2
    import pandas as pd
    import tifffile

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    genes = [f"GENE{i:03d}" for i in range(n_genes)]
    controls = _controls(categories)
    features = genes + list(controls)
    category = ["predesigned_gene"] * n_genes + list(controls.values())

    # cells: three types in vertical bands, each with its own expression programme
    edge = 8.0
    cxy = np.c_[
        rng.uniform(edge, width_um - edge, n_cells), rng.uniform(edge, height_um - edge, n_cells)
    ]
    ctype = np.minimum((cxy[:, 0] / width_um * 3).astype(int), 2)
    rates = rng.lognormal(0, 1, (3, n_genes))
    for t in range(3):
        rates[t, t * 5 : t * 5 + 5] *= 12  # markers
    probs = rates / rates.sum(axis=1, keepdims=True)
    per_cell = rng.poisson(transcripts_per_cell, n_cells)
    owner = np.repeat(np.arange(n_cells), per_cell)
    gene_of = np.zeros(len(owner), np.int64)
    for t in range(3):
        of_t = ctype[owner] == t
        gene_of[of_t] = rng.choice(n_genes, int(of_t.sum()), p=probs[t])
    offset = rng.normal(0, 3.0, (len(owner), 2))
    xy = cxy[owner] + offset
    n_cell_tx = len(owner)
    n_bg = round(background_fraction * n_cell_tx)
    n_ctrl = round(control_fraction * n_cell_tx)
    xy = np.r_[
        xy,
        np.c_[rng.uniform(0, width_um, n_bg + n_ctrl), rng.uniform(0, height_um, n_bg + n_ctrl)],
    ]
    feat = np.r_[
        gene_of, rng.integers(0, n_genes, n_bg), n_genes + rng.integers(0, len(controls), n_ctrl)
    ]
    owner = np.r_[owner, np.full(n_bg + n_ctrl, -1)]
    xy = np.clip(xy, 0, [np.nextafter(width_um, 0), np.nextafter(height_um, 0)])
    n = len(feat)
    qv = rng.uniform(20, 40, n)
    low = rng.random(n) < low_qv_fraction
    qv[low] = rng.uniform(0, 20, int(low.sum()))
    qv[rng.choice(np.flatnonzero(~low), max(1, n // 100), replace=False)] = 20.0  # kept: >= 20
    dist = np.linalg.norm(offset, axis=1)
    nucleus_distance = np.r_[np.maximum(dist - 3.0, 0.0), np.full(n_bg + n_ctrl, np.nan)]
    ids = np.array([*_cell_id(np.arange(n_cells)), "UNASSIGNED"], dtype=object)
    fov = (xy[:, 0] // 200).astype(int), (xy[:, 1] // 200).astype(int)
    table = pd.DataFrame(
        {
            "transcript_id": (281474976710656 + np.arange(n)).astype(np.uint64),
            "cell_id": ids[owner],
            "overlaps_nucleus": (np.r_[dist, np.full(n_bg + n_ctrl, 99.0)] < 3.0).astype(np.uint8),
            "feature_name": np.array(features, dtype=object)[feat],
            "x_location": xy[:, 0].astype(np.float32),
            "y_location": xy[:, 1].astype(np.float32),
            "z_location": rng.uniform(10, 20, n).astype(np.float32),
            "qv": qv.astype(np.float32),
            "fov_name": [f"{chr(65 + r)}{c + 1}" for c, r in zip(*fov, strict=True)],
            "nucleus_distance": np.nan_to_num(nucleus_distance, nan=25.0).astype(np.float32),
        }
    )
    if categories:
        table["codeword_index"] = feat.astype(np.int32)
        table["codeword_category"] = np.array(category, dtype=object)[feat]
        table["is_gene"] = feat < n_genes
    table = table.iloc[rng.permutation(n)].reset_index(drop=True)  # no spatial order to rely on
    transcripts = write_transcripts_parquet(
        out / "transcripts.parquet",
        table,
        row_group_rows=row_group_rows,
        feature_name_bytes=feature_name_bytes,
    )

    # cells table, as XOA writes it (counts of transcripts with qv >= 20 assigned to the cell)
    good = (table["qv"].to_numpy() >= 20) & (table["cell_id"].to_numpy() != "UNASSIGNED")
    counts = table.loc[good, "cell_id"].value_counts()
    cell_ids = list(ids[:n_cells])
    tc = counts.reindex(cell_ids, fill_value=0).to_numpy()
    cells = pd.DataFrame(
        {
            "cell_id": cell_ids,
            "x_centroid": cxy[:, 0],
            "y_centroid": cxy[:, 1],
            "transcript_counts": tc,
            "control_probe_counts": 0,
            "control_codeword_counts": 0,
            "unassigned_codeword_counts": 0,
            "deprecated_codeword_counts": 0,
            "total_counts": tc,
            "cell_area": rng.uniform(60, 140, n_cells),
            "nucleus_area": rng.uniform(20, 50, n_cells),
        }
    )
    cells.to_parquet(out / "cells.parquet.partial", index=False)
    (out / "cells.parquet.partial").replace(out / "cells.parquet")
    cells.to_csv(out / "cells.csv.gz.partial", index=False, compression="gzip")
    (out / "cells.csv.gz.partial").replace(out / "cells.csv.gz")
    _write_text(
        out / "experiment.xenium",
        json.dumps(
            {
                "major_version": 5,
                "minor_version": 0,
                "run_name": name,
                "region_name": name,
                "pixel_size": MORPHOLOGY_MPP,
                "num_cells": n_cells,
                "analysis_sw_version": "synthetic",
            },
            indent=2,
        ),
    )

    # the H&E: the known picture warped by a known affine, and both alignment files
    margin = 40.0
    th = math.radians(rotation_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    corners = np.array([[0, 0], [width_um, 0], [0, height_um], [width_um, height_um]], float)
    span = np.ptp(corners @ rot, axis=0) + 2 * margin  # the rotated region plus a margin, in µm
    w_px, h_px = (math.ceil(s / he_mpp) for s in span)
    a = _affine(he_mpp, rotation_deg, [width_um / 2, height_um / 2], [w_px / 2, h_px / 2])
    res = he_mpp
    picture = _render_tissue(width_um, height_um, margin, res, cxy, rng)
    to_picture = np.diag([1 / res, 1 / res, 1.0]) @ np.array(
        [[1, 0, margin], [0, 1, margin], [0, 0, 1]], float
    )
    warp = (to_picture @ a)[:2]  # H&E pixel -> picture pixel
    he = cv2.warpAffine(
        picture,
        warp,
        (w_px, h_px),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(242, 242, 242),
    )
    image = out / f"{name}_he_image.ome.tif"
    tmp = image.with_name(image.name + ".partial")
    tifffile.imwrite(
        tmp,
        he,
        photometric="rgb",
        tile=(256, 256),
        compression="zlib",
        ome=True,
        metadata={
            "axes": "YXS",
            "PhysicalSizeX": he_mpp,
            "PhysicalSizeY": he_mpp,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
        },
    )
    tmp.replace(image)
    to_morph = np.diag([1 / MORPHOLOGY_MPP, 1 / MORPHOLOGY_MPP, 1.0]) @ a
    matrix_csv = out / f"{name}_he_imagealignment.csv"
    _write_text(matrix_csv, "\n".join(",".join(repr(float(v)) for v in row) for row in to_morph))
    # landmarks: nuclei spread over the tissue
    pick = rng.choice(n_cells, min(n_keypoints, n_cells), replace=False)
    fixed = cxy[pick]
    inv = np.linalg.inv(a)
    moving = fixed @ inv[:2, :2].T + inv[:2, 2] + rng.normal(0, keypoint_noise_px, fixed.shape)
    keypoints_csv = out / f"{name}_he_image_keypoints.csv"
    keypoints = pd.DataFrame(
        {
            "fixedX": fixed[:, 0],
            "fixedY": fixed[:, 1],
            "alignmentX": moving[:, 0],
            "alignmentY": moving[:, 1],
        }
    )
    _write_text(keypoints_csv, keypoints.to_csv(index=False))
    return SyntheticXenium(
        folder=out,
        transcripts=transcripts,
        cells=out / "cells.parquet",
        cells_csv=out / "cells.csv.gz",
        image=image,
        matrix_csv=matrix_csv,
        keypoints_csv=keypoints_csv,
        image_to_um=a,
        he_mpp=he_mpp,
        genes=genes,
        controls=controls,
        n_transcripts=n,
    )
