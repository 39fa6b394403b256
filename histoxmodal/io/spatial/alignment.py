"""An H&E image registered to a Xenium run, from either file 10x's tools export.

Xenium Explorer exports an image alignment in two forms, and 10x ships the first beside its
public datasets:

- the **transformation matrix** (``*_he_imagealignment.csv``, or ``*_matrix.csv`` in Explorer's
  zip): three rows of three numbers, no header, the affine that maps H&E image pixels
  ``(x, y, 1)`` to Xenium morphology-image pixels (0.2125 µm). That direction is the one 10x's
  knowledge base states ("convert coordinates in H&E image to Xenium data") and the one
  ``spatialdata_io.xenium_aligned_image`` applies (``Affine(matrix)`` from the image to the
  morphology frame); its inverse maps transcripts and cells into the H&E;
- the **keypoints** (``*_keypoints.csv``): one row per landmark pair, header
  ``fixedX,fixedY,alignmentX,alignmentY``: ``fixed`` on the Xenium side (Explorer's frame, in
  µm; pass ``keypoint_units="px"`` for morphology pixels), ``alignment`` on the H&E (pixels).

Both become one :class:`HEAlignment`: the affine from H&E pixels to Xenium µm. Keypoints are fitted
by least squares (:func:`fit_affine`), and a fit whose RMS residual exceeds ``max_residual_um`` is
refused, since misplaced keypoints would silently pair spots with the wrong tissue.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoxmodal.io.spatial.common import SpatialFormatError, absolute, require_file

__all__ = [
    "ALIGNMENT_KINDS",
    "KEYPOINT_COLUMNS",
    "XENIUM_MORPHOLOGY_MPP",
    "HEAlignment",
    "fit_affine",
    "read_he_alignment",
]

#: µm per pixel of Xenium's morphology image (the frame of the 10x alignment matrix)
XENIUM_MORPHOLOGY_MPP = 0.2125
#: Xenium Explorer's keypoint columns: Xenium side (fixed), then H&E side (alignment)
KEYPOINT_COLUMNS = ("fixedX", "fixedY", "alignmentX", "alignmentY")
ALIGNMENT_KINDS = ("matrix", "keypoints", "array")
KEYPOINT_UNITS = ("um", "px")
#: default refusal threshold of a keypoint fit's RMS residual (µm): about a nucleus
DEFAULT_MAX_RESIDUAL_UM = 5.0


def fit_affine(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares affine mapping ``src`` onto ``dst``, and each pair's residual.

    Six unknowns, linear in the points: ``numpy.linalg.lstsq`` on the ``(n, 3)`` design matrix
    ``[x, y, 1]``, solved for both output coordinates at once. Hand-written rather than
    scikit-image's ``AffineTransform`` because its estimation API changed between the versions
    this package supports (``estimate`` before 0.26, ``from_estimate`` after); the tests check
    this fit against scikit-image's.

    Parameters
    ----------
    src, dst
        ``(n, 2)`` matching points, ``n >= 3`` and not all on one line.

    Returns
    -------
    matrix
        ``(3, 3)`` affine, ``dst ≈ (matrix @ [x, y, 1])[:2]``.
    residuals
        ``(n,)`` distance between each mapped ``src`` and its ``dst``, in ``dst``'s units.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(
            f"src and dst must be matching (n, 2) arrays, got {src.shape}, {dst.shape}"
        )
    design = np.c_[src, np.ones(len(src))]
    if len(src) < 3 or np.linalg.matrix_rank(design) < 3:
        raise ValueError(
            f"an affine needs at least 3 points not all on one line; got {len(src)} "
            f"(rank {np.linalg.matrix_rank(design) if len(src) else 0})"
        )
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    matrix = np.vstack([coef.T, [0.0, 0.0, 1.0]])
    residuals = np.linalg.norm(design @ coef - dst, axis=1)
    return matrix, residuals


@dataclass(frozen=True)
class HEAlignment:
    """An H&E image's registration to a Xenium run.

    Attributes
    ----------
    image_to_um
        ``(3, 3)`` affine from H&E full-resolution pixels ``(x, y, 1)`` to Xenium µm.
    kind
        ``matrix`` (10x's CSV), ``keypoints`` (fitted) or ``array`` (given in Python).
    path
        The file it was read from, or ``None``.
    rms_um, max_um
        RMS and largest keypoint residual of the fit (µm); ``None`` for a matrix.
    n_keypoints
        Landmark pairs fitted (0 for a matrix).
    keypoint_units
        Units of the keypoints' Xenium side (``um`` or ``px``); ``None`` for a matrix.
    """

    image_to_um: np.ndarray
    kind: str
    path: str | None = None
    rms_um: float | None = None
    max_um: float | None = None
    n_keypoints: int = 0
    keypoint_units: str | None = None

    @property
    def image_to_morphology(self) -> np.ndarray:
        """The ``(3, 3)`` affine in 10x's convention: H&E pixels to morphology pixels."""
        s = 1 / XENIUM_MORPHOLOGY_MPP
        return np.diag([s, s, 1.0]) @ self.image_to_um

    @property
    def mpp(self) -> float:
        """µm per H&E pixel: the square root of the linear part's |determinant| (the mean scale,
        exact for a similarity transform)."""
        return float(math.sqrt(abs(np.linalg.det(self.image_to_um[:2, :2]))))

    def um_to_image(self, xy_um: np.ndarray) -> np.ndarray:
        """``(n, 2)`` Xenium µm to ``(n, 2)`` H&E full-resolution pixels."""
        inv = np.linalg.inv(self.image_to_um)
        xy = np.asarray(xy_um, np.float64)
        return xy @ inv[:2, :2].T + inv[:2, 2]

    def metadata(self) -> dict[str, object]:
        """What ``uns['spatial'][sample]['metadata']`` records of it."""
        meta: dict[str, object] = {
            "alignment_path": self.path,
            "alignment_kind": self.kind,
            "alignment_image_to_um": self.image_to_um.tolist(),
        }
        if self.kind == "keypoints":
            meta.update(
                alignment_rms_um=self.rms_um,
                alignment_max_um=self.max_um,
                alignment_n_keypoints=self.n_keypoints,
                alignment_keypoint_units=self.keypoint_units,
            )
        return meta


def _check_affine(a: np.ndarray, where: str) -> np.ndarray:
    if a.shape == (2, 3):
        a = np.vstack([a, [0, 0, 1]])
    if a.shape != (3, 3):
        raise SpatialFormatError(
            f"{where}: an image alignment matrix must be 3 x 3 (10x's *_imagealignment.csv: "
            f"three rows of three numbers), got shape {a.shape}"
        )
    if not np.isfinite(a).all() or not np.allclose(a[2], [0, 0, 1]):
        raise SpatialFormatError(
            f"{where}: not an affine matrix (the last row must be 0, 0, 1 and every value "
            f"finite), got {a.tolist()}"
        )
    if abs(np.linalg.det(a[:2, :2])) < 1e-12:
        raise SpatialFormatError(f"{where}: the alignment matrix is singular: {a.tolist()}")
    return a


def _read_keypoints(path: Path, *, max_residual_um: float, keypoint_units: str) -> HEAlignment:
    import pandas as pd

    table = pd.read_csv(path)
    missing = [c for c in KEYPOINT_COLUMNS if c not in table.columns]
    if missing:
        raise SpatialFormatError(
            f"{path}: a keypoints file needs the columns {', '.join(KEYPOINT_COLUMNS)} (Xenium "
            f"Explorer's export); missing {', '.join(missing)}, found {', '.join(table.columns)}"
        )
    values = table[list(KEYPOINT_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy()
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).any(axis=1).sum())
        raise SpatialFormatError(f"{path}: {bad} keypoint row(s) hold empty or non-numeric values")
    fixed, moving = values[:, :2], values[:, 2:]
    if keypoint_units == "px":
        fixed = fixed * XENIUM_MORPHOLOGY_MPP
    try:
        matrix, residuals = fit_affine(moving, fixed)
    except ValueError as exc:
        raise SpatialFormatError(f"{path}: cannot fit an alignment: {exc}") from exc
    rms = float(np.sqrt(np.mean(residuals**2)))
    if len(values) == 3:
        warnings.warn(
            f"{path}: 3 keypoints fit any affine exactly, so no residual can reveal a misplaced "
            f"one; place at least 4 for a checked fit",
            UserWarning,
            stacklevel=4,
        )
    if rms > max_residual_um:
        worst = int(np.argmax(residuals))
        raise SpatialFormatError(
            f"{path}: the affine fitted to {len(values)} keypoints leaves an RMS residual of "
            f"{rms:.2f} µm (worst: row {worst + 1}, {residuals[worst]:.2f} µm), above "
            f"max_residual_um={max_residual_um:g}; fix or remove the misplaced keypoints in "
            f"Xenium Explorer and export them again, give the transformation matrix instead, or "
            f"raise max_residual_um if this image really is deformed that much"
        )
    return HEAlignment(
        image_to_um=matrix,
        kind="keypoints",
        path=absolute(path),
        rms_um=rms,
        max_um=float(residuals.max()),
        n_keypoints=len(values),
        keypoint_units=keypoint_units,
    )


def read_he_alignment(
    alignment: str | Path | np.ndarray | HEAlignment,
    *,
    max_residual_um: float = DEFAULT_MAX_RESIDUAL_UM,
    keypoint_units: str = "um",
) -> HEAlignment:
    """Read an H&E alignment: 10x's matrix CSV or Xenium Explorer's keypoints CSV (detected from
    the file's first line), or a ``(3, 3)`` array in 10x's convention (image → morphology px).

    Parameters
    ----------
    alignment
        The file, an array, or an :class:`HEAlignment` (returned as is).
    max_residual_um
        Keypoints whose fitted affine leaves a larger RMS residual (µm) are refused.
    keypoint_units
        ``um`` (Xenium Explorer's frame) or ``px`` (morphology pixels, 0.2125 µm): the units of
        the keypoints' ``fixedX``/``fixedY``.

    Raises
    ------
    SpatialFormatError
        Naming the file: neither layout, a singular matrix, or a keypoint fit above tolerance.
    """
    if isinstance(alignment, HEAlignment):
        return alignment
    if keypoint_units not in KEYPOINT_UNITS:
        raise SpatialFormatError(
            f"keypoint_units={keypoint_units!r}: expected one of {', '.join(KEYPOINT_UNITS)}"
        )
    if not (isinstance(max_residual_um, int | float) and max_residual_um > 0):
        raise SpatialFormatError(f"max_residual_um={max_residual_um!r} must be a positive number")
    if not isinstance(alignment, str | Path):
        a = _check_affine(np.asarray(alignment, dtype=np.float64), "alignment array")
        um = np.diag([XENIUM_MORPHOLOGY_MPP, XENIUM_MORPHOLOGY_MPP, 1.0]) @ a
        return HEAlignment(image_to_um=um, kind="array")
    path = require_file(
        Path(alignment),
        "image alignment",
        "give 10x's *_he_imagealignment.csv or Xenium Explorer's *_keypoints.csv",
    )
    with open(path, encoding="utf-8-sig") as f:
        first = f.readline()
    if any(c in first for c in KEYPOINT_COLUMNS):
        return _read_keypoints(path, max_residual_um=max_residual_um, keypoint_units=keypoint_units)
    try:
        a = np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as exc:
        raise SpatialFormatError(
            f"{path}: neither an alignment matrix (three rows of three numbers) nor a keypoints "
            f"file (header {','.join(KEYPOINT_COLUMNS)}): {exc}"
        ) from exc
    a = _check_affine(a, str(path))
    um = np.diag([XENIUM_MORPHOLOGY_MPP, XENIUM_MORPHOLOGY_MPP, 1.0]) @ a
    return HEAlignment(image_to_um=um, kind="matrix", path=absolute(path))
