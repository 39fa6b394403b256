"""Xenium transcripts pooled into square pseudo-spots, streamed in bounded memory.

``transcripts.parquet`` (Xenium Onboard Analysis; 10x's "Understanding Xenium outputs") holds one
row per decoded transcript: ``transcript_id``, ``cell_id``, ``overlaps_nucleus``,
``feature_name``, ``x_location``, ``y_location``, ``z_location`` (µm), ``qv`` (Phred-scaled
quality), ``fov_name``, ``nucleus_distance``, and since XOA 2-3 ``codeword_index``,
``codeword_category`` and ``is_gene``. Only ``feature_name``, ``x_location``, ``y_location``,
``qv`` and ``codeword_category`` (when present) are read.

A whole-slide run holds 100M+ rows, so the file is read in record batches
(``pyarrow.parquet.ParquetFile.iter_batches``); each batch is reduced to (spot, feature, count)
triples, and the triples are folded into one sparse matrix whenever they pile up. Memory is
bounded by the batch size plus the (spot × feature) nonzeros, never by the number of rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoxmodal.io.spatial.common import SpatialFormatError, absolute

log = logging.getLogger(__name__)

__all__ = [
    "CONTROL_PREFIXES",
    "DEFAULT_MIN_QV",
    "GENE_CATEGORIES",
    "TRANSCRIPT_COLUMNS",
    "TranscriptPool",
    "control_class",
    "pool_transcripts",
]

#: the columns pooling reads (``codeword_category`` too when the file has it)
TRANSCRIPT_COLUMNS = ("feature_name", "x_location", "y_location", "qv")
#: Xenium's own threshold: its cell-feature matrix counts transcripts with qv >= 20
DEFAULT_MIN_QV = 20.0
#: ``codeword_category`` values that are genes; every other category is a control
GENE_CATEGORIES = frozenset({"predesigned_gene", "custom_gene"})
#: feature-name prefixes of the controls, for files without ``codeword_category``, and the
#: category each stands for (``BLANK_`` and ``antisense_`` are older panels' names)
CONTROL_PREFIXES: dict[str, str] = {
    "NegControlProbe_": "negative_control_probe",
    "NegControlCodeword_": "negative_control_codeword",
    "UnassignedCodeword_": "unassigned_codeword",
    "DeprecatedCodeword_": "deprecated_codeword",
    "BLANK_": "blank_codeword",
    "antisense_": "antisense_probe",
    "Intergenic": "genomic_control_probe",
}
#: rows per record batch (a batch never spans two Parquet row groups)
DEFAULT_BATCH_ROWS = 1 << 19
#: (spot, feature, count) triples held before they are folded into the sparse total (at least;
#: up to half the total's nonzeros)
FOLD_MIN_TRIPLES = 1 << 21
#: feature codes are packed with the spot into one int64 key
_MAX_FEATURES = 1 << 24


def control_class(name: str) -> str | None:
    """The control category a feature name's prefix marks (:data:`CONTROL_PREFIXES`), or
    ``None`` for a gene."""
    for prefix, cls in CONTROL_PREFIXES.items():
        if name.startswith(prefix):
            return cls
    return None


@dataclass
class TranscriptPool:
    """Transcripts counted per square bin and feature.

    Attributes
    ----------
    counts
        ``(n_spots, n_features)`` CSR int32: transcripts with ``qv >= min_qv``, genes and controls.
    features
        ``(n_features,)`` names: genes first (sorted), then controls (sorted).
    categories
        ``(n_features,)`` each feature's category: ``gene`` or the control's category.
    grid
        ``(n_spots, 2)`` int bin indices ``(col, row)``: bin ``(i, j)`` spans
        ``[i, i+1) x [j, j+1)`` times ``bin_um`` µm; sorted by column, then row.
    n_low_qv
        ``(n_spots,)`` transcripts of every feature dropped for ``qv < min_qv``.
    bin_um, min_qv
        The pooling's parameters.
    stats
        Totals over the file: ``n_transcripts`` (rows read), ``n_low_qv``, ``n_gene`` and
        ``n_control`` (kept), ``control_by_category``, ``n_bins_low_qv_only`` (bins dropped for
        holding no transcript above the threshold), ``n_batches``, ``n_folds``.
    """

    counts: object
    features: list[str]
    categories: list[str]
    grid: np.ndarray
    n_low_qv: np.ndarray
    bin_um: float
    min_qv: float
    stats: dict[str, object] = field(default_factory=dict)

    @property
    def is_gene(self) -> np.ndarray:
        """``(n_features,)`` bool."""
        return np.array([c == "gene" for c in self.categories], bool)

    @property
    def centres_um(self) -> np.ndarray:
        """``(n_spots, 2)`` bin centres in µm."""
        return (self.grid + 0.5) * self.bin_um


def _column(batch, name: str) -> np.ndarray:
    return batch.column(name).to_numpy(zero_copy_only=False)


def _feature_names(batch, path: Path) -> tuple[np.ndarray, list[str]]:
    """``feature_name`` as ``(codes (n,), names)``: its Parquet dictionary when read as one
    (the names need not all occur in this batch), else dictionary-encoded here; bytes decoded as
    UTF-8 (older XOA versions store the names as bytes)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = batch.column("feature_name")
    if col.null_count:
        raise SpatialFormatError(
            f"{path}: {col.null_count} transcripts have no feature_name; the file is damaged or "
            f"not Xenium's transcripts table"
        )
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    names = col.dictionary
    if pa.types.is_binary(names.type) or pa.types.is_large_binary(names.type):
        names = names.cast(pa.string())
    return col.indices.to_numpy(zero_copy_only=False), names.to_pylist()


class _Accumulator:
    """The running counts of :func:`pool_transcripts`.

    :meth:`add` reduces one record batch to (spot, feature, count) triples; its arrays die when
    it returns, so no batch's temporaries outlive it (in a loop body they would stay alive
    while the next batch is processed, doubling the peak).
    """

    def __init__(self, path: Path, *, bin_um: float, min_qv: float, category: bool) -> None:
        self.path, self.bin_um, self.min_qv, self.category = path, bin_um, min_qv, category
        self.feature_of: dict[str, int] = {}
        self.category_of: list[str] = []
        self.spot_of: dict[int, int] = {}
        self.low = np.zeros(0, np.int64)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []  # (key, count) per batch
        self.n_pending = 0
        self.total = None
        self.n_rows = self.n_batches = self.n_folds = 0

    def _new_features(self, batch, codes: np.ndarray, local_names: list[str]) -> None:
        present = np.zeros(len(local_names), bool)
        present[codes] = True
        known = self.feature_of
        new = [s for s, p in zip(local_names, present, strict=True) if p and s not in known]
        if not new:
            return
        if self.category:
            import pyarrow.compute as pc

            # a feature's category is the same on every row: read it at one row each
            first = np.zeros(len(local_names), np.int64)
            first[codes] = np.arange(len(codes))
            cats = pc.take(batch.column("codeword_category"), first).to_pylist()
            cat_of = {s: c for s, c, p in zip(local_names, cats, present, strict=True) if p}
        for s in dict.fromkeys(new):
            if self.category:
                c = cat_of[s]
                c = c.decode() if isinstance(c, bytes) else str(c)
                cat = "gene" if c in GENE_CATEGORIES else c
            else:
                cat = control_class(s) or "gene"
            self.feature_of[s] = len(self.feature_of)
            self.category_of.append(cat)
        if len(self.feature_of) >= _MAX_FEATURES:
            raise SpatialFormatError(f"{self.path}: more than {_MAX_FEATURES} distinct features")

    def _bins(self, batch, name: str) -> np.ndarray:
        v = _column(batch, name).astype(np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            raise SpatialFormatError(
                f"{self.path}: {int(bad.sum())} transcripts in rows {self.n_rows}-"
                f"{self.n_rows + len(v) - 1} have no finite {name}; the file is damaged"
            )
        np.floor(v / self.bin_um, out=v)
        return v.astype(np.int64)

    def add(self, batch) -> None:
        n = batch.num_rows
        if n == 0:
            return
        codes, local_names = _feature_names(batch, self.path)
        self._new_features(batch, codes, local_names)
        # names of the Parquet dictionary absent from this batch are never looked up
        lut = np.array([self.feature_of.get(s, -1) for s in local_names], np.int64)
        # one int64 per bin: column in the high 32 bits, row + 2^31 in the low (|index| < 2^31)
        code = (self._bins(batch, "x_location") << 32) + (
            self._bins(batch, "y_location") + (1 << 31)
        )
        uniq, inverse = np.unique(code, return_inverse=True)
        del code
        spot_of = self.spot_of
        ids = np.fromiter(
            (spot_of.setdefault(c, len(spot_of)) for c in uniq.tolist()), np.int64, len(uniq)
        )
        spot = ids[inverse.ravel()]
        del inverse
        n_spots = len(spot_of)
        # NaN qv fails the test: counted as low quality
        good = _column(batch, "qv").astype(np.float64) >= self.min_qv
        if len(self.low) < n_spots:
            self.low = np.concatenate([self.low, np.zeros(n_spots - len(self.low), np.int64)])
        self.low += np.bincount(spot[~good], minlength=n_spots)
        key = spot[good] * _MAX_FEATURES + lut[codes[good]]
        key, count = np.unique(key, return_counts=True)
        self.pending.append((key, count.astype(np.int32)))
        self.n_pending += len(key)
        self.n_rows += n
        self.n_batches += 1
        # Fold the triples into the sparse total before they outgrow half of it: memory stays
        # within the batch plus ~1.5x the result, and each triple is folded O(1) times.
        nnz = self.total.nnz if self.total is not None else 0
        if self.n_pending > max(FOLD_MIN_TRIPLES, nnz // 2):
            self.fold()

    def fold(self) -> None:
        import scipy.sparse as sp

        shape = (len(self.spot_of), len(self.feature_of))
        if self.pending:
            keys = np.concatenate([k for k, _ in self.pending])
            vals = np.concatenate([v for _, v in self.pending])
        else:
            keys, vals = np.zeros(0, np.int64), np.zeros(0, np.int32)
        self.pending.clear()
        self.n_pending = 0
        # duplicates (the same pair in several batches) are summed
        part = sp.csr_matrix(
            (vals, (keys // _MAX_FEATURES, keys % _MAX_FEATURES)), shape=shape, dtype=np.int32
        )
        del keys, vals
        if self.total is None:
            self.total = part
        else:
            self.total.resize(shape)
            self.total = self.total + part
        self.n_folds += 1

    def finish(self):
        if self.pending or self.total is None:
            self.fold()
        self.total.resize((len(self.spot_of), len(self.feature_of)))
        return self.total, self.spot_of, self.feature_of, self.category_of, self.low


def pool_transcripts(
    path: str | Path,
    *,
    bin_um: float,
    min_qv: float = DEFAULT_MIN_QV,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> TranscriptPool:
    """Count a ``transcripts.parquet`` per square bin of ``bin_um`` µm and feature, streaming.

    Bins lie on a grid anchored at (0, 0) in the slide's µm frame (the same grid
    :func:`~histoxmodal.io.spatial.xenium.pool_pseudo_spots` puts cells on). Transcripts with
    ``qv < min_qv`` are counted apart per bin (:attr:`TranscriptPool.n_low_qv`); bins holding
    none above the threshold are left out.

    Parameters
    ----------
    path
        ``transcripts.parquet``.
    bin_um
        Side of the square bins (µm).
    min_qv
        Keep transcripts with ``qv >= min_qv`` (Xenium's matrices use 20; 0 keeps all).
    batch_rows
        Rows per record batch: memory grows with it, not with the file.

    Returns
    -------
    TranscriptPool
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not (isinstance(bin_um, int | float) and bin_um > 0 and np.isfinite(bin_um)):
        raise SpatialFormatError(f"pseudo_spot_um={bin_um!r} must be a positive size in µm")
    if not (isinstance(min_qv, int | float) and np.isfinite(min_qv) and min_qv >= 0):
        raise SpatialFormatError(
            f"min_qv={min_qv!r} must be a number >= 0 (Xenium's default threshold is 20)"
        )
    if not (isinstance(batch_rows, int) and batch_rows > 0):
        raise SpatialFormatError(f"batch_rows={batch_rows!r} must be a positive integer")
    try:
        # pre_buffer off: with it, pyarrow keeps every column chunk it has read cached until the
        # file is closed (measured: +15 MB of Arrow memory per 1M-row batch, 0 without), which
        # would make memory grow with the file instead of staying flat. The string columns are
        # read as their Parquet dictionaries (int32 codes, not one string per row): about 100 MB
        # less per 1M-row batch.
        schema = pq.read_schema(path)
        dictionary = [c for c in ("feature_name", "codeword_category") if c in schema.names]
        pf = pq.ParquetFile(path, pre_buffer=False, read_dictionary=dictionary)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on non-Parquet files
        raise SpatialFormatError(
            f"{path}: not a readable Parquet file ({exc}); re-copy transcripts.parquet from the "
            f"Xenium output folder"
        ) from exc
    names = set(pf.schema_arrow.names)
    missing = [c for c in TRANSCRIPT_COLUMNS if c not in names]
    if missing:
        raise SpatialFormatError(
            f"{path}: missing column(s) {', '.join(missing)}; Xenium's transcripts table has "
            f"{', '.join(TRANSCRIPT_COLUMNS)} (found: {', '.join(sorted(names))})"
        )
    has_category = "codeword_category" in names
    columns = [*TRANSCRIPT_COLUMNS, *(["codeword_category"] if has_category else [])]

    acc = _Accumulator(path, bin_um=float(bin_um), min_qv=float(min_qv), category=has_category)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        acc.add(batch)
        del batch  # or it stays alive while the next batch is read
    total, spot_of, feature_of, category_of, low = acc.finish()
    n_rows, n_batches, n_folds = acc.n_rows, acc.n_batches, acc.n_folds
    n_spots = len(spot_of)

    codes_all = np.fromiter(spot_of.keys(), np.int64, n_spots)
    grid = np.c_[codes_all >> 32, (codes_all & 0xFFFFFFFF) - (1 << 31)]
    names_all = list(feature_of)
    cats = np.array(category_of, dtype=object)
    is_gene = cats == "gene"
    feat_order = np.r_[
        np.flatnonzero(is_gene)[np.argsort([names_all[i] for i in np.flatnonzero(is_gene)])],
        np.flatnonzero(~is_gene)[np.argsort([names_all[i] for i in np.flatnonzero(~is_gene)])],
    ].astype(np.int64)
    kept = np.asarray(total.sum(axis=1)).ravel() > 0
    spot_order = np.flatnonzero(kept)
    spot_order = spot_order[np.lexsort((grid[spot_order, 1], grid[spot_order, 0]))]
    counts = total[spot_order][:, feat_order].tocsr()
    counts.sort_indices()
    col_sums = np.asarray(total.sum(axis=0)).ravel()
    control_by_category: dict[str, int] = {}
    for i in np.flatnonzero(~is_gene):
        control_by_category[str(cats[i])] = control_by_category.get(str(cats[i]), 0) + int(
            col_sums[i]
        )
    stats: dict[str, object] = {
        "file": absolute(path),
        "n_transcripts": int(n_rows),
        "n_low_qv": int(low.sum()),
        "n_gene": int(col_sums[is_gene].sum()),
        "n_control": int(col_sums[~is_gene].sum()),
        "control_by_category": dict(sorted(control_by_category.items())),
        "n_bins_low_qv_only": int((~kept).sum()),
        "n_batches": int(n_batches),
        "n_folds": int(n_folds),
        "category_source": "codeword_category" if has_category else "feature_name prefixes",
    }
    log.info(
        "%s: %d transcripts in %d batches -> %d bins of %g µm (%d dropped for qv < %g)",
        path.name,
        n_rows,
        n_batches,
        len(spot_order),
        bin_um,
        stats["n_low_qv"],
        min_qv,
    )
    return TranscriptPool(
        counts=counts,
        features=[names_all[i] for i in feat_order],
        categories=[str(cats[i]) for i in feat_order],
        grid=grid[spot_order],
        n_low_qv=low[spot_order],
        bin_um=float(bin_um),
        min_qv=float(min_qv),
        stats=stats,
    )
