"""Visium HD bins on the capture array: barcodes ``s_NNNum_RRRRR_CCCCC-1`` to grid rows and
columns, the positions file read as a :class:`BinGrid` (its size and the homography Space Ranger
placed the bins on the full-resolution image by, fitted and checked), streamed by row group.

Used by :mod:`~histoxmodal.io.spatial.visium_hd_pool` (pooling) and
:mod:`~histoxmodal.io.spatial.visium_hd` (the reader).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoxmodal.io.spatial.common import TISSUE_POSITION_COLUMNS, SpatialFormatError

#: the columns of ``spatial/tissue_positions.parquet``
POSITION_COLUMNS = TISSUE_POSITION_COLUMNS
#: points of the positions file the homography is fitted to (evenly spread over the file)
HOMOGRAPHY_POINTS = 200_000
#: a bin barcode: bin size (µm), array row, array column, suffix
BARCODE_PATTERN = re.compile(r"^s_(\d{3})um_(\d{5})_(\d{5})-(\d+)$")


def parse_bin_barcodes(barcodes: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(array_row, array_col)`` of bin barcodes ``s_NNNum_RRRRR_CCCCC-1``, vectorised.

    Parameters
    ----------
    barcodes
        ``(n,)`` fixed-width bytes (as HDF5 stores them) or strings.
    where
        The file, for messages.

    Returns
    -------
    (ndarray, ndarray)
        ``(n,)`` int64 rows and columns.
    """
    b = np.asarray(barcodes)
    if b.dtype.kind == "U":
        b = np.char.encode(b, "ascii")
    if b.dtype.kind != "S":
        b = np.array([str(x).encode() for x in b], dtype="S")
    n = len(b)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = b[0].decode()
    if not BARCODE_PATTERN.match(first):
        raise SpatialFormatError(
            f"{where}: barcode {first!r} is not a Visium HD bin barcode "
            f"(s_NNNum_RRRRR_CCCCC-1, e.g. s_002um_00123_00456-1); is this a Visium HD bin matrix?"
        )
    width = len(first)
    u = np.frombuffer(b.astype(f"S{width}").tobytes(), np.uint8).reshape(n, width)
    lengths = np.char.str_len(b)
    digits = np.r_[8:13, 14:19]
    fixed = np.setdiff1d(np.arange(width), digits)
    ref = np.frombuffer(first.encode(), np.uint8)
    bad = (lengths != width) | (u[:, fixed] != ref[fixed]).any(axis=1)
    bad |= ((u[:, digits] < 48) | (u[:, digits] > 57)).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SpatialFormatError(
            f"{where}: barcode {b[i].decode(errors='replace')!r} (row {i}) does not follow "
            f"{first!r}'s pattern (s_NNNum_RRRRR_CCCCC-1); the bin matrix is damaged or mixed"
        )
    w = 10 ** np.arange(4, -1, -1, dtype=np.int64)
    rows = (u[:, 8:13].astype(np.int64) - 48) @ w
    cols = (u[:, 14:19].astype(np.int64) - 48) @ w
    return rows, cols


def fit_homography(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, float]:
    """The projective map ``src → dst`` (``(n, 2)`` each) by normalised least squares, and its
    RMS residual in ``dst`` units.

    Returns
    -------
    (ndarray, float)
        ``(3, 3)`` matrix ``H`` with ``H[2, 2] == 1``: ``dst ~ H @ [x, y, 1]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if len(src) < 4:
        raise SpatialFormatError(f"a homography needs at least 4 points, got {len(src)}")

    def norm(p):
        c = p.mean(axis=0)
        s = math.sqrt(2) / max(np.sqrt(((p - c) ** 2).sum(axis=1)).mean(), 1e-12)
        return np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1]])

    ts, td = norm(src), norm(dst)
    s = src @ ts[:2, :2].T + ts[:2, 2]
    d = dst @ td[:2, :2].T + td[:2, 2]
    n = len(s)
    a = np.zeros((2 * n, 8))
    a[:n, 0:2], a[:n, 2] = s, 1
    a[n:, 3:5], a[n:, 5] = s, 1
    a[:n, 6:8] = -s * d[:, :1]
    a[n:, 6:8] = -s * d[:, 1:]
    h = np.linalg.lstsq(a, np.r_[d[:, 0], d[:, 1]], rcond=None)[0]
    hn = np.r_[h, 1.0].reshape(3, 3)
    H = np.linalg.inv(td) @ hn @ ts
    H /= H[2, 2]
    rms = float(np.sqrt(((apply_homography(H, src) - dst) ** 2).sum(axis=1).mean()))
    return H, rms


def apply_homography(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``(n, 2)`` points through the ``(3, 3)`` projective map ``H``."""
    xy = np.asarray(xy, np.float64)
    p = xy @ H[:2, :2].T + H[:2, 2]
    w = xy @ H[2, :2] + H[2, 2]
    return p / w[:, None]


@dataclass
class BinGrid:
    """What a positions file says about the bin grid.

    Attributes
    ----------
    n_rows, n_cols
        The grid's extent (largest ``array_row`` / ``array_col`` + 1).
    homography
        ``(3, 3)`` projective map from ``(array_col, array_row)`` (bin indices; a bin's centre
        at integer values) to full-resolution pixels ``(x, y)``.
    rms_px
        Its RMS residual over the fitted rows (px).
    n_positions
        Rows of the file.
    """

    n_rows: int
    n_cols: int
    homography: np.ndarray
    rms_px: float
    n_positions: int


def read_bin_grid(positions: str | Path) -> BinGrid:
    """Stream ``tissue_positions.parquet``: the grid's extent, and the homography from
    ``(array_col, array_row)`` to ``(pxl_col, pxl_row)`` fitted to evenly spread rows, whose
    barcodes are checked against their array columns."""
    import pyarrow.parquet as pq

    positions = Path(positions)
    try:
        pf = pq.ParquetFile(positions, pre_buffer=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise SpatialFormatError(
            f"{positions}: not a readable Parquet file ({exc}); re-copy it from the Space "
            f"Ranger output"
        ) from exc
    names = pf.schema_arrow.names
    missing = [c for c in POSITION_COLUMNS if c not in names]
    if missing:
        raise SpatialFormatError(
            f"{positions}: missing column(s) {', '.join(missing)}; expected "
            f"{', '.join(POSITION_COLUMNS)}"
        )
    n = pf.metadata.num_rows
    step = max(1, n // HOMOGRAPHY_POINTS)
    max_row = max_col = -1
    src, dst, seen = [], [], 0
    numeric = ["array_row", "array_col", "pxl_col_in_fullres", "pxl_row_in_fullres"]
    # the barcodes (the widest column) are checked against array_row/array_col on the first
    # batch only; the rest streams four numbers a bin
    for b, batch in enumerate(pf.iter_batches(batch_size=1 << 18, columns=numeric)):
        r = batch.column("array_row").to_numpy(zero_copy_only=False).astype(np.int64)
        c = batch.column("array_col").to_numpy(zero_copy_only=False).astype(np.int64)
        if len(r):
            max_row, max_col = max(max_row, int(r.max())), max(max_col, int(c.max()))
        if b == 0:
            first = next(pf.iter_batches(batch_size=len(r) or 1, columns=["barcode"]))
            bc = first.column("barcode").to_numpy(zero_copy_only=False)
            pr, pc = parse_bin_barcodes(bc, str(positions))
            bad = np.flatnonzero((pr != r) | (pc != c))
            if len(bad):
                i = int(bad[0])
                raise SpatialFormatError(
                    f"{positions}: barcode {bc[i]!r} disagrees with its array_row {r[i]} / "
                    f"array_col {c[i]}; the file is damaged"
                )
            del first, bc, pr, pc
        pick = np.arange((-seen) % step, len(r), step)
        seen += len(r)
        if len(pick) == 0:
            continue
        xy = np.c_[
            batch.column("pxl_col_in_fullres").to_numpy(zero_copy_only=False)[pick],
            batch.column("pxl_row_in_fullres").to_numpy(zero_copy_only=False)[pick],
        ].astype(np.float64)
        src.append(np.c_[c[pick], r[pick]].astype(np.float64))
        dst.append(xy)
        del batch, r, c
    import pyarrow as pa

    # Arrow's allocator keeps freed batches for reuse; give them back before the pooling
    pa.default_memory_pool().release_unused()
    if max_row < 0:
        raise SpatialFormatError(f"{positions}: no bins; expected one row per bin of the grid")
    H, rms = fit_homography(np.concatenate(src), np.concatenate(dst))
    pitch_px = float(np.linalg.norm(apply_homography(H, [[1, 0]]) - apply_homography(H, [[0, 0]])))
    if rms > 0.25 * pitch_px:
        raise SpatialFormatError(
            f"{positions}: the bins' pixel positions do not lie on a grid (RMS {rms:.2f} px off "
            f"the fitted homography, bins {pitch_px:.2f} px apart); the file is damaged or its "
            f"pxl_row/pxl_col columns are swapped or edited"
        )
    return BinGrid(max_row + 1, max_col + 1, H, rms, n)
