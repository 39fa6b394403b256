"""Visium HD 2 µm bins pooled into squares or discs of any size in µm, streamed: the HDF5 matrix
is read one block of barcodes at a time, each block summed into its pooled spots by a sparse
product, and the partial sums folded into one sparse result when they pile up, so memory is
bounded by the block plus the pooled result (a full 11-million-bin capture area never becomes a
dense or even a whole sparse 2 µm matrix).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoxmodal.io.spatial.common import SpatialFormatError, require_file
from histoxmodal.io.spatial.visium_hd_grid import BinGrid, parse_bin_barcodes, read_bin_grid

log = logging.getLogger(__name__)

#: the bin matrix of a bin folder (10x's HDF5 feature-barcode matrix)
MATRIX_FILE = "filtered_feature_bc_matrix.h5"
POOL_SHAPES = ("square", "disc")
#: barcodes per block read from the matrix (a few MB of counts for 2 µm bins)
DEFAULT_BLOCK_BINS = 1 << 18
#: (pool, gene, count) triples held before they are folded into the total (or half its nnz)
FOLD_MIN_TRIPLES = 1 << 22


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
