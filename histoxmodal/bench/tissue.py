"""``histoxmodal bench tissue``: tissue detection against the ground truth real data carries.

- her2st (``her2st/spots/<S>_selection.tsv`` with ``images/<S>.jpg``): the spot table lists only
  spots under tissue. Recall is the share of their centres inside the mask, with the slide at its
  true pixel size (the reader's spot-pitch fit, 200 µm between spots). Specificity is measured on
  the array positions the table does *not* list (the 33 × 35 ST grid mapped through a
  least-squares fit of the listed spots, those inside the image): spots the authors left out as
  off tissue; an approximate truth, near the edge a left-out spot may touch tissue.
- Visium (``visium/scanpy-heart/1.0.0``): ``tissue_positions_list.csv`` marks every spot
  ``in_tissue`` 1 or 0; the lowres image is the slide, at ``55 µm / (spot diameter in full-res px ×
  tissue_lowres_scalef)``.

A spot counts as inside when the mask pixel under its centre is tissue.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoxmodal.errors import ConfigError

#: The ST v1 array: 33 columns × 35 rows of spot positions.
ST_ARRAY_SHAPE = (33, 35)
VISIUM_SPOT_DIAMETER_UM = 55.0
#: The measured table's methods: the former default first ("before"), the new default ("after").
BENCH_METHODS = ("saturation-otsu", "background-hysteresis")


@dataclass
class TissueCase:
    """One slide with spot-level tissue truth.

    Attributes
    ----------
    name
        ``"her2st B4"``, ``"Visium heart"``, ...
    slide
        An opened slide with its true pixel size.
    on
        ``(n_on, 2)`` level-0 ``(x, y)`` centres of spots on tissue.
    off
        ``(n_off, 2)`` centres of spots off tissue (possibly empty).
    """

    name: str
    slide: object
    on: np.ndarray
    off: np.ndarray


def her2st_sections_with_images(root: str | Path) -> list[str]:
    """her2st sections that have both a spot table and an image under ``root``."""
    root = Path(root)
    return sorted(
        p.stem
        for p in (root / "images").glob("*.jpg")
        if (root / "spots" / f"{p.stem}_selection.tsv").is_file()
    )


def her2st_case(root: str | Path, section: str) -> TissueCase:
    """The her2st ``section`` as a :class:`TissueCase` (pixel size as the her2st reader fits it)."""
    import pandas as pd

    from histoxmodal.io.slide import open_slide
    from histoxmodal.io.spatial.st import ST_SPOT_PITCH_UM, pitch_px_per_unit

    root = Path(root)
    sel = pd.read_csv(root / "spots" / f"{section}_selection.tsv", sep="\t")
    if "selected" in sel.columns:
        sel = sel[sel["selected"] == 1]
    xy = sel[["pixel_x", "pixel_y"]].to_numpy(np.float64)
    ax = sel["new_x"] if "new_x" in sel.columns else sel["x"]
    ay = sel["new_y"] if "new_y" in sel.columns else sel["y"]
    mpp = ST_SPOT_PITCH_UM / float(np.mean(pitch_px_per_unit(np.c_[ax, ay], xy)))
    slide = open_slide(root / "images" / f"{section}.jpg", mpp=mpp)
    # the positions the table leaves out, through an affine fit of the listed ones
    design = np.c_[sel["x"], sel["y"], np.ones(len(sel))]
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    gx, gy = np.meshgrid(np.arange(1, ST_ARRAY_SHAPE[0] + 1), np.arange(1, ST_ARRAY_SHAPE[1] + 1))
    listed = set(zip(sel["x"].astype(int), sel["y"].astype(int), strict=True))
    grid = [(x, y) for x, y in zip(gx.ravel(), gy.ravel(), strict=True) if (x, y) not in listed]
    off = np.c_[np.asarray(grid, np.float64), np.ones(len(grid))] @ coef
    w, h = slide.dimensions
    off = off[(off[:, 0] >= 0) & (off[:, 1] >= 0) & (off[:, 0] < w) & (off[:, 1] < h)]
    return TissueCase(f"her2st {section}", slide, xy, off)


def visium_case(spatial: str | Path, name: str = "Visium heart") -> TissueCase:
    """A Space Ranger ``spatial/`` folder's lowres image with its ``in_tissue`` spots."""
    import pandas as pd
    from PIL import Image

    from histoxmodal.io.slide_readers import ArraySlide

    spatial = Path(spatial)
    sf = json.loads((spatial / "scalefactors_json.json").read_text(encoding="utf-8"))
    pos = spatial / "tissue_positions_list.csv"
    if not pos.is_file():
        pos = spatial / "tissue_positions.csv"
    t = pd.read_csv(pos, header=None)
    if not str(t.iloc[0, 1]).lstrip("-").isdigit():  # Space Ranger 2+: a header row
        t = t.iloc[1:].reset_index(drop=True)
    scale = float(sf["tissue_lowres_scalef"])
    img = np.asarray(Image.open(spatial / "tissue_lowres_image.png").convert("RGB"))
    mpp = VISIUM_SPOT_DIAMETER_UM / (float(sf["spot_diameter_fullres"]) * scale)
    # columns: barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres
    xy = t[[5, 4]].to_numpy(np.float64) * scale
    in_tissue = t[1].astype(int).to_numpy() == 1
    return TissueCase(name, ArraySlide(img, mpp=mpp, name=name), xy[in_tissue], xy[~in_tissue])


def tissue_cases(data: str | Path) -> list[TissueCase]:
    """Every case under a shared-data folder: her2st sections with an image, the Visium heart."""
    data = Path(data)
    cases = [her2st_case(data / "her2st", s) for s in her2st_sections_with_images(data / "her2st")]
    heart = data / "visium" / "scanpy-heart" / "1.0.0" / "spatial"
    if heart.is_dir():
        cases.append(visium_case(heart))
    if not cases:
        raise ConfigError(
            f"--src {data}: no her2st/images/*.jpg with spot tables and no "
            f"visium/scanpy-heart/1.0.0/spatial; give the shared data folder"
        )
    return cases


def spots_inside(mask, xy: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: is the mask pixel under each level-0 ``(x, y)`` tissue?"""
    dx, dy = mask.downsample
    h, w = mask.mask.shape
    col = np.clip(np.floor(xy[:, 0] / dx).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(xy[:, 1] / dy).astype(np.int64), 0, h - 1)
    return mask.mask[row, col]


def measure(case: TissueCase, method: str, **kwargs) -> dict[str, float | int | str]:
    """Recall and specificity of ``detect_tissue(case.slide, method=method, **kwargs)``."""
    from histoxmodal.tiling.tissue import detect_tissue

    tm = detect_tissue(case.slide, method=method, **kwargs)
    recall = float(spots_inside(tm, case.on).mean())
    spec = float(1 - spots_inside(tm, case.off).mean()) if len(case.off) else float("nan")
    return {
        "section": case.name,
        "method": method,
        "recall": recall,
        "specificity": spec,
        "n_on": len(case.on),
        "n_off": len(case.off),
    }


def run_tissue_bench(
    data: str | Path,
    *,
    methods: Sequence[str] = BENCH_METHODS,
    json_path: str | Path | None = None,
) -> int:
    """Print ``section | recall | specificity`` per method (Markdown); returns the exit code."""
    rows = [measure(case, m) for case in tissue_cases(data) for m in methods]
    head = "| section | " + " | ".join(f"{m} recall | {m} specificity" for m in methods) + " |"
    print(head)
    print("|---" * (1 + 2 * len(methods)) + "|")
    for name in dict.fromkeys(r["section"] for r in rows):
        cells = []
        for m in methods:
            r = next(r for r in rows if r["section"] == name and r["method"] == m)
            spec = r["specificity"]
            cells += [f"{r['recall']:.3f}", "–" if spec != spec else f"{spec:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    sys.stdout.flush()
    return 0
