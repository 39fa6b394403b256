"""10x Visium HD (Space Ranger 3+): square bins as they are, or 2 µm bins pooled into squares or
discs of any size, streamed in bounded memory.

The layout read (10x's "Space Ranger outputs" for Visium HD; the folder given, or its ``outs/``)::

    binned_outputs/
      square_002um/ square_008um/ square_016um/      (and any custom square_NNNum/)
        filtered_feature_bc_matrix.h5                 10x's HDF5 matrix (``matrix/``: barcodes,
                                                      data, indices, indptr, shape, features/)
        spatial/tissue_positions.parquet              barcode, in_tissue, array_row, array_col,
                                                      pxl_row_in_fullres, pxl_col_in_fullres
        spatial/scalefactors_json.json                microns_per_pixel, bin_size_um,
                                                      spot_diameter_fullres (the bin's side in
                                                      px), tissue_hires_scalef, tissue_lowres_scalef
        spatial/tissue_hires_image.png, tissue_lowres_image.png   (or in outs/spatial/)

Bin barcodes are named ``s_{bin:03d}um_{array_row:05d}_{array_col:05d}-1``; bin ``(row, col)``
spans ``[col, col + 1) x [row, row + 1)`` times the bin size in µm on the capture array.

A whole 6.5 mm capture area holds about 11 million 2 µm bins (a 3,350 x 3,350 grid), so
:func:`pool_bins` never holds the 2 µm matrix: it reads the HDF5 matrix one block of barcodes
(rows of the grid, as the barcodes sort) at a time, sums each block into its pooled spots with a
sparse product, and folds the partial sums into one sparse result when they pile up. Memory is
bounded by the block plus the pooled result. The pooled spots' centres are placed on the image
by the homography fitted to the positions file (Space Ranger places bins by one), streamed too.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError
from histoxmodal.io.spatial.common import (
    MissingSpatialFileError,
    SpatialFormatError,
    absolute,
    check_coords_in_image,
    finalize,
    images_from_full,
    is_blank,
    reconcile_mpp,
    require_file,
    unique_gene_names,
)

log = logging.getLogger(__name__)

__all__ = [
    "BIN_DIR_PATTERN",
    "DEFAULT_BLOCK_BINS",
    "POOL_SHAPES",
    "BinGrid",
    "BinPool",
    "apply_homography",
    "find_visium_hd_outs",
    "fit_homography",
    "parse_bin_barcodes",
    "pool_bins",
    "read_bin_grid",
    "read_visium_hd",
    "resolve_bin_um",
    "visium_hd_bins",
    "visium_hd_image",
    "visium_hd_input_files",
]

BINNED_DIR = "binned_outputs"
#: a bin folder's name, e.g. ``square_008um``
BIN_DIR_PATTERN = re.compile(r"^square_(\d{3})um$")
MATRIX_FILE = "filtered_feature_bc_matrix.h5"
POSITIONS_FILE = "tissue_positions.parquet"
SCALEFACTORS_FILE = "scalefactors_json.json"
POSITION_COLUMNS = (
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
)
POOL_SHAPES = ("square", "disc")
#: barcodes per block read from the matrix (a few MB of counts for 2 µm bins)
DEFAULT_BLOCK_BINS = 1 << 18
#: points of the positions file the homography is fitted to (evenly spread over the file)
HOMOGRAPHY_POINTS = 200_000
#: (pool, gene, count) triples held before they are folded into the total (or half its nnz)
FOLD_MIN_TRIPLES = 1 << 22
_BARCODE = re.compile(r"^s_(\d{3})um_(\d{5})_(\d{5})-(\d+)$")


def find_visium_hd_outs(path: str | Path) -> Path:
    """The folder holding ``binned_outputs/``: ``path`` itself or its ``outs/``.

    Raises
    ------
    MissingSpatialFileError
        Neither holds ``binned_outputs/``; the message says what was expected.
    """
    path = Path(path)
    for folder in (path, path / "outs"):
        if (folder / BINNED_DIR).is_dir():
            return folder
    hint = ""
    if BIN_DIR_PATTERN.match(path.name) or path.name == BINNED_DIR:
        hint = "; this looks like a folder inside the output: give Space Ranger's outs/ above it"
    elif (path / "spatial").is_dir() or (path / "outs" / "spatial").is_dir():
        hint = "; it has spatial/ but no binned_outputs/: classic Visium? use read_visium"
    raise MissingSpatialFileError(
        f"{path}: not a Visium HD output folder: no {BINNED_DIR}/ here or in outs/; expected "
        f"Space Ranger's outs/ with {BINNED_DIR}/square_002um/ (and square_008um/, "
        f"square_016um/), each holding {MATRIX_FILE} and spatial/{POSITIONS_FILE}{hint}"
    )


def visium_hd_bins(path: str | Path) -> dict[float, Path]:
    """The bin sizes (µm) of a Visium HD output and their folders, smallest first."""
    binned = find_visium_hd_outs(path) / BINNED_DIR
    found = {}
    for d in sorted(binned.iterdir()):
        m = BIN_DIR_PATTERN.match(d.name)
        if m and d.is_dir():
            found[float(int(m.group(1)))] = d
    if not found:
        raise MissingSpatialFileError(
            f"{binned}: no square_NNNum/ bin folder (square_002um, square_008um, square_016um)"
        )
    return dict(sorted(found.items()))


def _bin_folder(path: Path, bin_um: float) -> Path:
    bins = visium_hd_bins(path)
    if bin_um not in bins:  # the option asks for what the output does not have: usage
        have = ", ".join(f"{b:g}" for b in bins)
        raise ConfigError(
            f"{path}: bin_um={bin_um:g} not in this output (bins of {have} µm: "
            f"{', '.join(p.name for p in bins.values())}); choose one of them, or pool the "
            f"2 µm bins with pool_um="
        )
    return bins[bin_um]


def _spatial_file(bin_dir: Path, name: str) -> Path | None:
    """``name`` in the bin's ``spatial/``, else in ``outs/spatial/``."""
    for folder in (bin_dir / "spatial", bin_dir.parents[1] / "spatial"):
        if (folder / name).is_file():
            return folder / name
    return None


#: the names 10x gives the full-resolution image in its public Visium HD datasets
FULLRES_SUFFIXES = (".btf", ".tif", ".tiff", ".jpg", ".jpeg", ".png")


def resolve_bin_um(bin_um: float | None, pool_um: float | None) -> float:
    """The bins :func:`read_visium_hd` reads: ``bin_um``, or by default 2 µm when pooling and
    8 µm (10x's recommended size) when not."""
    if bin_um is None:
        return 2.0 if pool_um is not None else 8.0
    return float(bin_um)


def visium_hd_image(path: str | Path) -> Path | None:
    """The full-resolution image of a Visium HD run by 10x's names, or ``None``: the one file of
    ``outs/microscope_image/``, else ``*tissue_image.<btf|tif|tiff|jpg|png>`` in the run folder
    or in ``outs/`` (as 10x's public datasets ship it)."""
    outs = find_visium_hd_outs(path)
    micro = outs / "microscope_image"
    if micro.is_dir():
        files = sorted(p for p in micro.iterdir() if p.is_file())
        if len(files) == 1:
            return files[0]
    run = outs.parent if outs.name == "outs" else outs
    for folder in (run, outs):
        found = sorted(
            p
            for p in folder.glob("*tissue_image.*")
            if p.is_file() and p.suffix.lower() in FULLRES_SUFFIXES
        )
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            log.warning("%s: several *tissue_image files (%s); pass --image", folder, found)
    return None


def visium_hd_input_files(path: str | Path, bin_um: float) -> list[Path]:
    """The files :func:`read_visium_hd` reads for bins of ``bin_um``: the matrix, the positions,
    the scale factors and the hires/lowres images (what a dataset's fingerprint hashes)."""
    bin_dir = _bin_folder(Path(path), float(bin_um))
    files = [bin_dir / MATRIX_FILE, bin_dir / "spatial" / POSITIONS_FILE]
    for name in (SCALEFACTORS_FILE, "tissue_hires_image.png", "tissue_lowres_image.png"):
        p = _spatial_file(bin_dir, name)
        if p is not None:
            files.append(p)
    return [p for p in files if p.exists()]


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
    if not _BARCODE.match(first):
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


@dataclass
class BinPool:
    """Bins summed into pooled spots.

    Attributes
    ----------
    counts
        ``(n_spots, n_genes)`` CSR int32.
    genes, gene_ids
        ``(n_genes,)`` symbols and ids (Gene Expression features of the matrix, in its order).
    grid
        ``(n_spots, 2)`` int ``(col, row)`` index of each spot on the pooling grid: spot
        ``(i, j)`` is centred at ``((i + 0.5) * pitch_um, (j + 0.5) * pitch_um)`` µm on the
        capture array; sorted by row, then column.
    n_bins
        ``(n_spots,)`` bins of the matrix (under tissue) summed into each spot.
    n_grid_bins
        ``(n_spots,)`` bins of the whole grid whose centres fall in the spot.
    pool_um, pitch_um, shape, bin_um
        The pooling: a square's side or a disc's diameter, the grid pitch, ``square`` or
        ``disc``, and the source bins' size.
    stats
        ``n_bins_read``, ``n_bins_pooled`` (inside a spot), ``n_blocks``, ``n_folds``.
    """

    counts: object
    genes: list[str]
    gene_ids: list[str]
    grid: np.ndarray
    n_bins: np.ndarray
    n_grid_bins: np.ndarray
    pool_um: float
    pitch_um: float
    shape: str
    bin_um: float
    stats: dict[str, object] = field(default_factory=dict)

    @property
    def centres_um(self) -> np.ndarray:
        """``(n_spots, 2)`` spot centres ``(x, y)`` in µm on the capture array."""
        return (self.grid + 0.5) * self.pitch_um


def _check_pool(pool_um, pitch_um, shape, bin_um) -> tuple[float, float]:
    if not (isinstance(pool_um, int | float) and math.isfinite(pool_um) and pool_um > 0):
        raise SpatialFormatError(f"pool_um={pool_um!r} must be a positive size in µm, e.g. 55")
    if pool_um < bin_um:
        raise SpatialFormatError(
            f"pool_um={pool_um:g} is smaller than the {bin_um:g} µm bins it pools; choose "
            f"pool_um >= {bin_um:g} or read the bins as they are (pool_um=None)"
        )
    if shape not in POOL_SHAPES:
        raise SpatialFormatError(f"pool_shape={shape!r}: expected one of {', '.join(POOL_SHAPES)}")
    pitch = float(pool_um if pitch_um is None else pitch_um)
    if not (math.isfinite(pitch) and pitch >= pool_um):
        raise SpatialFormatError(
            f"pool_pitch_um={pitch_um!r} must be >= pool_um={pool_um:g} (spots may be spaced "
            f"out, e.g. 55 µm discs 100 µm apart as on Visium, but not overlap)"
        )
    return float(pool_um), pitch


def _assign(rows, cols, *, bin_um, pool_um, pitch_um, shape, n_pool_cols):
    """Pooled spot key (``j * n_pool_cols + i``) of each bin, ``-1`` outside every spot."""
    x = (cols + 0.5) * bin_um
    y = (rows + 0.5) * bin_um
    i = np.floor(x / pitch_um).astype(np.int64)
    j = np.floor(y / pitch_um).astype(np.int64)
    dx = x - (i + 0.5) * pitch_um
    dy = y - (j + 0.5) * pitch_um
    h = pool_um / 2
    if shape == "square":
        inside = (dx >= -h) & (dx < h) & (dy >= -h) & (dy < h)
    else:
        inside = dx * dx + dy * dy <= h * h
    return np.where(inside, j * n_pool_cols + i, -1)


class _Folder:
    """The running pooled sums of :func:`pool_bins`.

    Space Ranger sorts a bin matrix by barcode, that is by grid row: once a block has been read,
    the spots of the pooling rows above its last bin row are complete. Their sums are then
    finished into CSR chunks (ascending, disjoint) and only the band of open spots stays as
    ``(key, gene, count)`` triples, so memory holds the result plus one band. A matrix not in
    that order is folded instead (the pattern of
    :mod:`~histoxmodal.io.spatial.xenium_transcripts`): triples summed into one sparse total
    whenever they pile up.
    """

    def __init__(self, n_keys: int, n_genes: int, where: str) -> None:
        self.shape = (n_keys, n_genes)
        self.where = where
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_pending = 0
        self.done: list[tuple[np.ndarray, object]] = []  # (keys, CSR rows), ascending
        self.total = None  # unsorted matrices only
        self.sorted = True
        self.last_row = -1
        self.n_folds = 0

    def add(self, key, gene, count) -> None:
        self.pending.append((key, gene, count))
        self.n_pending += len(key)
        if not self.sorted:
            nnz = self.total.nnz if self.total is not None else 0
            if self.n_pending > max(FOLD_MIN_TRIPLES, nnz // 2):
                self.fold()

    def _triples(self):
        if not self.pending:
            z = np.zeros(0, np.int64)
            return z, z, z
        k, g, v = (np.concatenate(x) for x in zip(*self.pending, strict=True))
        self.pending.clear()
        self.n_pending = 0
        return k, g, v

    def block_rows(self, rows: np.ndarray, complete_below: int) -> None:
        """After a block whose bins lie on grid ``rows``: finish the spots with keys below
        ``complete_below`` if the matrix is still in row order, else switch to folding."""
        if not self.sorted or len(rows) == 0:
            return
        if rows[0] < self.last_row or (np.diff(rows) < 0).any():
            log.info("%s: bins not in row order; summing by folds", self.where)
            self.sorted = False
            for keys_, chunk in self.done:
                coo = chunk.tocoo()
                self.pending.append((keys_[coo.row], coo.col.astype(np.int64), coo.data))
                self.n_pending += coo.nnz
            self.done.clear()
            self.fold()
            return
        self.last_row = int(rows[-1])
        self._finish(complete_below)

    def _finish(self, below: int | None) -> None:
        import scipy.sparse as sp

        k, g, v = self._triples()
        sel = np.ones(len(k), bool) if below is None else k < below
        if sel.any():
            rows, inv = np.unique(k[sel], return_inverse=True)
            chunk = sp.csr_matrix((v[sel], (inv, g[sel])), shape=(len(rows), self.shape[1]))
            chunk.sum_duplicates()
            self.done.append((rows, _int32_counts(chunk, self.where)))
        if not sel.all():
            rest = ~sel
            self.pending.append((k[rest], g[rest], v[rest]))
            self.n_pending = int(rest.sum())

    def fold(self) -> None:
        import scipy.sparse as sp

        k, g, v = self._triples()
        part = sp.csr_matrix((v, (k, g)), shape=self.shape, dtype=np.int64)
        del k, g, v
        self.total = part if self.total is None else self.total + part
        self.n_folds += 1

    def result(self, present: np.ndarray):
        """``(len(present), n_genes)`` CSR int32: the sums of the spots ``present`` (ascending
        keys; spots without a count are empty rows)."""
        import scipy.sparse as sp

        if not self.sorted:
            self.fold()
            return _int32_counts(self.total[present], self.where)
        self._finish(None)
        if not self.done:
            return sp.csr_matrix((len(present), self.shape[1]), dtype=np.int32)
        keys_ = np.concatenate([k for k, _ in self.done])
        stacked = sp.vstack([c for _, c in self.done], format="csr")
        self.done.clear()
        # every spot with a count holds a bin, so its key is in `present`: spread the rows to
        # their places (empty rows between) without copying the counts
        pos = np.searchsorted(present, keys_)
        if pos.max() >= len(present) or not np.array_equal(present[pos], keys_):
            raise AssertionError("pooled spots with counts but no bin")  # a bug, not bad input
        row_nnz = np.zeros(len(present), np.int64)
        row_nnz[pos] = np.diff(stacked.indptr)
        indptr = np.r_[0, np.cumsum(row_nnz)]
        return sp.csr_matrix(
            (stacked.data, stacked.indices, indptr), shape=(len(present), self.shape[1])
        )


def _int32_counts(m, where: str):
    import scipy.sparse as sp

    if m.nnz and m.data.max() > np.iinfo(np.int32).max:
        raise SpatialFormatError(f"{where}: a pooled count exceeds the int32 counts stored")
    return sp.csr_matrix(m, dtype=np.int32)


def _h5_matrix(path: Path):
    """The open ``matrix`` group of a 10x HDF5 file, checked, and its Gene Expression columns."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise SpatialFormatError(
            f"{path}: not a readable HDF5 file ({exc}); re-copy it from the Space Ranger output"
        ) from exc
    need = ("barcodes", "data", "indices", "indptr", "shape", "features/name", "features/id")
    m = f.get("matrix")
    lacking = [k for k in need if m is None or k not in m]
    if lacking:
        f.close()
        raise SpatialFormatError(
            f"{path}: not a 10x feature-barcode matrix (missing matrix/{', matrix/'.join(lacking)}"
            f"); expected Space Ranger's {MATRIX_FILE}"
        )
    return f, m


def pool_bins(
    matrix: str | Path,
    positions: str | Path,
    *,
    bin_um: float,
    pool_um: float,
    shape: str = "square",
    pitch_um: float | None = None,
    block_bins: int = DEFAULT_BLOCK_BINS,
) -> tuple[BinPool, BinGrid]:
    """Sum the bins of a Visium HD matrix into squares or discs of ``pool_um`` µm, streaming.

    A bin belongs to the spot whose square (side ``pool_um``, half-open) or disc (diameter
    ``pool_um``) holds its centre; spots sit on a square grid of pitch ``pitch_um`` (default
    ``pool_um``: squares tile the array, discs touch) anchored at the array's corner. Bins in no
    spot (between discs) are left out and counted in ``stats``.

    Parameters
    ----------
    matrix
        The bins' ``filtered_feature_bc_matrix.h5``.
    positions
        Their ``tissue_positions.parquet`` (the grid's extent and the pixel map).
    bin_um
        The bins' side (µm), e.g. 2.
    pool_um, shape, pitch_um
        The spots: side or diameter (µm), ``square`` or ``disc``, pitch (µm, >= ``pool_um``).
    block_bins
        Barcodes read per block: memory grows with it, not with the matrix.

    Returns
    -------
    (BinPool, grid)
        The pooled counts, and the grid read from the positions (extent, homography).
    """
    matrix, positions = Path(matrix), Path(positions)
    pool_um, pitch_um = _check_pool(pool_um, pitch_um, shape, bin_um)
    if not (isinstance(block_bins, int) and block_bins > 0):
        raise SpatialFormatError(f"block_bins={block_bins!r} must be a positive integer")
    grid = read_bin_grid(require_file(positions, "bin positions"))
    n_pool_cols = math.ceil(grid.n_cols * bin_um / pitch_um) + 1
    n_pool_rows = math.ceil(grid.n_rows * bin_um / pitch_um) + 1
    n_keys = n_pool_rows * n_pool_cols
    import scipy.sparse as sp

    f, m = _h5_matrix(require_file(matrix, "bin matrix"))
    with f:
        n_feat, n_bc = (int(v) for v in m["shape"][:2])
        names = [s.decode() for s in m["features/name"][:]]
        ids = [s.decode() for s in m["features/id"][:]]
        ftype = (
            [s.decode() for s in m["features/feature_type"][:]]
            if "features/feature_type" in m
            else ["Gene Expression"] * n_feat
        )
        gex = np.flatnonzero(np.array(ftype) == "Gene Expression")
        if len(gex) == 0:
            raise SpatialFormatError(f"{matrix}: no 'Gene Expression' feature")
        col_of = np.full(n_feat, -1, np.int64)
        col_of[gex] = np.arange(len(gex))
        folder = _Folder(n_keys, len(gex), str(matrix))
        n_bins = np.zeros(n_keys, np.int64)
        n_pooled = n_blocks = 0
        for b0 in range(0, n_bc, block_bins):
            b1 = min(b0 + block_bins, n_bc)
            ip = m["indptr"][b0 : b1 + 1].astype(np.int64)
            rows, cols = parse_bin_barcodes(m["barcodes"][b0:b1], str(matrix))
            if len(rows) and (rows.max() >= grid.n_rows or cols.max() >= grid.n_cols):
                raise SpatialFormatError(
                    f"{matrix}: bins beyond the grid of {positions.name} ({grid.n_rows} x "
                    f"{grid.n_cols}); are the matrix and the positions of the same bin size?"
                )
            key = _assign(
                rows, cols, bin_um=bin_um, pool_um=pool_um, pitch_um=pitch_um, shape=shape,
                n_pool_cols=n_pool_cols,
            )  # fmt: skip
            inside = key >= 0
            n_bins += np.bincount(key[inside], minlength=n_keys)
            n_pooled += int(inside.sum())
            n_blocks += 1
            p0, p1 = int(ip[0]), int(ip[-1])
            data = m["data"][p0:p1]
            genes = col_of[m["indices"][p0:p1]]
            row_of = np.repeat(np.arange(b1 - b0), np.diff(ip))
            keep = (genes >= 0) & inside[row_of]
            block = sp.csr_matrix(
                (data[keep].astype(np.int64), (row_of[keep], genes[keep])),
                shape=(b1 - b0, len(gex)),
            )
            del data, genes, row_of, keep
            # the block's bins summed per spot: a (spots of the block x bins) 0/1 product
            uniq, local = np.unique(key[inside], return_inverse=True)
            assign = sp.csr_matrix(
                (np.ones(len(local), np.int64), (local, np.flatnonzero(inside))),
                shape=(len(uniq), b1 - b0),
            )
            part = (assign @ block).tocoo()
            folder.add(uniq[part.row], part.col.astype(np.int64), part.data)
            del block, assign, part
            # spots on pooling rows above the one holding this block's last bin are complete
            # (when the bins come in row order, as Space Ranger writes them)
            if len(rows):
                last = math.floor((rows[-1] + 0.5) * bin_um / pitch_um)
                folder.block_rows(rows, last * n_pool_cols)
    present = np.flatnonzero(n_bins > 0)
    counts = folder.result(present)
    gi, gj = present % n_pool_cols, present // n_pool_cols
    pool = BinPool(
        counts=counts,
        genes=[names[k] for k in gex],
        gene_ids=[ids[k] for k in gex],
        grid=np.c_[gi, gj].astype(np.int64),
        n_bins=n_bins[present],
        n_grid_bins=_grid_bins(
            grid,
            present,
            bin_um=bin_um,
            pool_um=pool_um,
            pitch_um=pitch_um,
            shape=shape,
            n_pool_cols=n_pool_cols,
            n_keys=n_keys,
        ),
        pool_um=pool_um,
        pitch_um=pitch_um,
        shape=shape,
        bin_um=float(bin_um),
        stats={
            "n_bins_read": n_bc,
            "n_bins_pooled": n_pooled,
            "n_blocks": n_blocks,
            "n_folds": folder.n_folds,
            "row_order": folder.sorted,
        },
    )
    return pool, grid


def _grid_bins(grid, present, *, n_keys, **kw) -> np.ndarray:
    """Bins of the whole grid (in tissue or not) in each spot of ``present``, by grid rows."""
    total = np.zeros(n_keys, np.int64)
    cols = np.arange(grid.n_cols, dtype=np.int64)
    step = max(1, (1 << 20) // grid.n_cols)
    for r0 in range(0, grid.n_rows, step):
        r = np.arange(r0, min(r0 + step, grid.n_rows), dtype=np.int64)
        key = _assign(np.repeat(r, len(cols)), np.tile(cols, len(r)), **kw)
        total += np.bincount(key[key >= 0], minlength=n_keys)
    return total[present]


def _load_images(bin_dir: Path, scal: dict[str, float]) -> tuple[dict[str, np.ndarray], list]:
    from PIL import Image

    images, blank = {}, []
    for key, fname in (("hires", "tissue_hires_image.png"), ("lowres", "tissue_lowres_image.png")):
        p = _spatial_file(bin_dir, fname)
        if p is None:
            continue
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 400_000_000)
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
        if is_blank(arr):
            blank.append(key)
        else:
            images[key] = arr
    return images, blank


def read_visium_hd(
    path: str | Path,
    *,
    bin_um: float | None = None,
    pool_um: float | None = None,
    pool_shape: str = "square",
    pool_pitch_um: float | None = None,
    image: str | Path | None = None,
    mpp: float | None = None,
    block_bins: int = DEFAULT_BLOCK_BINS,
    sample: str | None = None,
    patient: str | None = None,
    batch: str | None = None,
):
    """Read a Visium HD output: one bin size as it is, or its bins pooled into larger spots.

    Parameters
    ----------
    path
        Space Ranger's ``outs/`` (holding ``binned_outputs/``) or the run folder above it.
    bin_um
        The bins read (µm): 2, 8, 16 or a custom size the output holds. Default: 2 when
        pooling, else 8 (10x's recommended size).
    pool_um
        Pool the bins into spots of this size (µm; a square's side or a disc's diameter), e.g.
        55 (HESCAPE's pseudo-spots) or 100 (legacy ST). ``None`` reads the bins as they are.
    pool_shape
        ``square`` or ``disc``.
    pool_pitch_um
        Distance between pooled spots (µm, >= ``pool_um``); default ``pool_um``.
    image
        The full-resolution image given to Space Ranger (the H&E the positions refer to).
    mpp
        µm per full-resolution pixel; by default ``microns_per_pixel`` of the scale factors.
    block_bins
        Pooling only: barcodes read per block.
    sample, patient, batch
        Ids; default the run folder's name (above ``outs/``).

    Returns
    -------
    anndata.AnnData
        Raw counts in ``X`` (spots × genes, CSR int32); ``obsm['spatial']`` the bin or spot
        centres in full-resolution pixels; ``obs['array_row' | 'array_col']`` the bin's array
        indices (pooled: the spot's indices on the pooling grid), ``obs['x_um' | 'y_um']`` the
        centre in µm on the capture array; pooled, also ``n_bins`` (bins under tissue summed)
        and ``tissue_fraction`` (of the bins the spot spans). ``uns['spatial'][sample]``:
        hires/lowres images, scale factors (``spot_diameter_fullres`` and ``bin_size_um`` of
        the spots read) and ``metadata`` with the files, the pixel size and its source and, when
        pooled, ``pooling`` (source bins, size, shape, pitch, bins read and pooled).
    """
    import anndata as ad
    import pandas as pd

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Visium HD folder not found: {path}")
    outs = find_visium_hd_outs(path)
    sample = sample or (outs.resolve().parent.name if outs.name == "outs" else outs.name)
    bin_um = resolve_bin_um(bin_um, pool_um)
    if not (isinstance(bin_um, int | float) and bin_um > 0):
        raise SpatialFormatError(f"bin_um={bin_um!r} must be a bin size in µm, e.g. 2, 8 or 16")
    bin_um = float(bin_um)
    bin_dir = _bin_folder(outs, bin_um)
    mfile = bin_dir / MATRIX_FILE
    if not mfile.is_file():
        raise MissingSpatialFileError(
            f"{bin_dir}: no {MATRIX_FILE}; Space Ranger writes it in every bin folder (the "
            f"matrix-market folder alone cannot be streamed: keep the .h5)"
        )
    pfile = bin_dir / "spatial" / POSITIONS_FILE
    sf_file = _spatial_file(bin_dir, SCALEFACTORS_FILE)
    if not pfile.is_file() or sf_file is None:
        raise MissingSpatialFileError(
            f"{bin_dir}: expected spatial/{POSITIONS_FILE} and spatial/{SCALEFACTORS_FILE}"
        )
    scal = {
        k: float(v)
        for k, v in json.loads(sf_file.read_text()).items()
        if isinstance(v, int | float)
    }
    if scal.get("bin_size_um") and abs(scal["bin_size_um"] - bin_um) > 1e-6:
        raise SpatialFormatError(
            f"{sf_file}: bin_size_um={scal['bin_size_um']:g} but the folder is {bin_dir.name}; "
            f"the scale factors belong to another bin size"
        )
    meta: dict[str, object] = {
        "format": "visium_hd",
        "matrix": absolute(mfile),
        "positions": absolute(pfile),
        "scalefactors_file": absolute(sf_file),
        "bin_um": bin_um,
        "image_path": None,
    }
    if pool_um is None:
        adata, xy = _read_bins(mfile, pfile)
        size_um = bin_um
        grid_px_per_bin = None
    else:
        pool, grid = pool_bins(
            mfile, pfile, bin_um=bin_um, pool_um=pool_um, shape=pool_shape,
            pitch_um=pool_pitch_um, block_bins=block_bins,
        )  # fmt: skip
        centres = pool.centres_um
        xy = apply_homography(grid.homography, centres / bin_um - 0.5)
        gi, gj = pool.grid[:, 0], pool.grid[:, 1]
        obs = pd.DataFrame(
            {
                "x_um": centres[:, 0],
                "y_um": centres[:, 1],
                keys.OBS_ARRAY_ROW: gj,
                keys.OBS_ARRAY_COL: gi,
                "n_bins": pool.n_bins,
                "tissue_fraction": pool.n_bins / np.maximum(pool.n_grid_bins, 1),
                keys.OBS_IN_TISSUE: True,
            },
            index=[f"{pool_shape}_{pool.pool_um:g}um_{j:05d}_{i:05d}" for i, j in pool.grid],
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            adata = ad.AnnData(X=pool.counts, obs=obs)
        adata.var_names = unique_gene_names(pool.genes, str(mfile))
        adata.var[keys.VAR_GENE_IDS] = pool.gene_ids
        adata.var[keys.VAR_FEATURE_TYPES] = "Gene Expression"
        size_um = pool.pool_um
        meta["pooling"] = {
            "source_bin_um": bin_um,
            "pool_um": pool.pool_um,
            "shape": pool.shape,
            "pitch_um": pool.pitch_um,
            "n_bins_read": pool.stats["n_bins_read"],
            "n_bins_pooled": pool.stats["n_bins_pooled"],
            "n_spots": int(adata.n_obs),
            "rule": "a bin belongs to the spot holding its centre",
        }
        meta["homography"] = grid.homography.tolist()
        meta["homography_rms_px"] = grid.rms_px
        grid_px_per_bin = float(
            np.linalg.norm(
                apply_homography(grid.homography, [[grid.n_cols / 2 + 1, grid.n_rows / 2]])
                - apply_homography(grid.homography, [[grid.n_cols / 2, grid.n_rows / 2]])
            )
        )
    adata.obsm[keys.OBSM_SPATIAL] = np.asarray(xy, np.float64)
    candidates: list[tuple[float | None, str]] = [(mpp, "user")]
    if scal.get("microns_per_pixel"):
        candidates.append((scal["microns_per_pixel"], "scalefactors microns_per_pixel"))
    images: dict[str, np.ndarray]
    if image is not None:
        from histoxmodal.io.slide import open_slide

        image = require_file(Path(image), "full-resolution image")
        with open_slide(image, allow_implausible_mpp=True) as s:
            candidates.append((s.mpp_info.metadata_mpp, f"image metadata ({s.mpp_info.detail})"))
        images, own, size = images_from_full(image)
        scal.update(own)
        meta.update({"image_path": absolute(image), "image_size": list(size), "blank_images": []})
    else:
        images, blank = _load_images(bin_dir, scal)
        meta["blank_images"] = blank
        size = None
        for key, sf in (("hires", keys.SCALEF_HIRES), ("lowres", keys.SCALEF_LOWRES)):
            if key in images and scal.get(sf):
                h, w = images[key].shape[:2]
                size = (round(w / scal[sf]), round(h / scal[sf]))
                break
    if size is not None:
        check_coords_in_image(adata.obsm[keys.OBSM_SPATIAL], size, f"{sample} ({pfile.name})", scal)
    if grid_px_per_bin:
        candidates.append((bin_um / grid_px_per_bin, f"bin pitch ({bin_um:g} µm)"))
    value, source = reconcile_mpp(candidates, sample)
    meta.update({"mpp": value, "mpp_source": source})
    scal[keys.SPOT_DIAMETER] = size_um / value
    scal["bin_size_um"] = size_um
    return finalize(
        adata,
        sample=sample,
        patient=patient,
        batch=batch,
        images=images,
        scalefactors=scal,
        metadata=meta,
    )


def _read_bins(mfile: Path, pfile: Path):
    """The bins as they are: ``(adata, xy (n, 2) full-resolution px)``."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        full = sc.read_10x_h5(mfile, gex_only=True)
    if full.n_obs > 2_000_000:
        log.warning(
            "%s: %d bins read as they are (a dense grid of spots); pool them (pool_um=) for a "
            "spot-level dataset",
            mfile,
            full.n_obs,
        )
    pos = pd.read_parquet(pfile, columns=list(POSITION_COLUMNS)).set_index("barcode")
    missing = full.obs_names.difference(pos.index)
    if len(missing):
        raise SpatialFormatError(
            f"{mfile.name} and {pfile}: {len(missing)} of {full.n_obs} bins of the matrix have no "
            f"position (e.g. {', '.join(missing[:3])}); are they from the same bin folder?"
        )
    pos = pos.loc[full.obs_names]
    bin_um = float(_BARCODE.match(full.obs_names[0]).group(1)) if full.n_obs else 0.0
    obs = pd.DataFrame(
        {
            "x_um": (pos["array_col"].to_numpy() + 0.5) * bin_um,
            "y_um": (pos["array_row"].to_numpy() + 0.5) * bin_um,
            keys.OBS_ARRAY_ROW: pos["array_row"].to_numpy(),
            keys.OBS_ARRAY_COL: pos["array_col"].to_numpy(),
            keys.OBS_IN_TISSUE: pos["in_tissue"].to_numpy() == 1,
        },
        index=full.obs_names,
    )
    adata = ad.AnnData(X=full.X, obs=obs)
    adata.var_names = unique_gene_names(full.var_names, str(mfile))
    adata.var[keys.VAR_GENE_IDS] = full.var["gene_ids"].to_numpy()
    adata.var[keys.VAR_FEATURE_TYPES] = "Gene Expression"
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    return adata, xy
