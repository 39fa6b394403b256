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
#: rows per record batch: ~40 MB of the columns read
DEFAULT_BATCH_ROWS = 1 << 20
#: (spot, feature, count) triples held before they are folded into the sparse total (at least;
#: up to half the total's nonzeros)
FOLD_MIN_TRIPLES = 1 << 22
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


def _feature_names(batch, path: Path):
    """Dictionary-encoded ``feature_name``: ``(codes, names)``; bytes decoded as UTF-8."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = batch.column("feature_name")
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        col = col.cast(pa.string())  # older XOA versions store the names as bytes
    if col.null_count:
        raise SpatialFormatError(
            f"{path}: {col.null_count} transcripts have no feature_name; the file is damaged or "
            f"not Xenium's transcripts table"
        )
    enc = pc.dictionary_encode(col)
    return enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist()


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
    import scipy.sparse as sp

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
        pf = pq.ParquetFile(path)
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

    feature_of: dict[str, int] = {}
    category_of: list[str] = []
    spot_of: dict[int, int] = {}
    low = np.zeros(0, np.int64)
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (key, count) per batch
    n_pending = 0
    total = None
    n_rows = n_batches = n_folds = 0

    def fold(total, n_spots: int, n_features: int):
        keys = np.concatenate([k for k, _ in pending])
        vals = np.concatenate([v for _, v in pending])
        part = sp.csr_matrix(
            (vals, (keys // _MAX_FEATURES, keys % _MAX_FEATURES)),
            shape=(n_spots, n_features),
            dtype=np.int32,
        )  # duplicates (the same pair in several batches) are summed
        if total is None:
            return part
        total.resize((n_spots, n_features))
        return total + part

    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        n = batch.num_rows
        if n == 0:
            continue
        n_batches += 1
        n_rows += n
        codes, local_names = _feature_names(batch, path)
        new = [s for s in local_names if s not in feature_of]
        if new:
            if has_category:
                import pyarrow.compute as pc

                # a feature's category is the same on every row: read it at one row each
                first = np.zeros(len(local_names), np.int64)
                first[codes] = np.arange(n)
                cats = pc.take(batch.column("codeword_category"), first).to_pylist()
                cat_of = dict(zip(local_names, cats, strict=True))
            for s in new:
                if has_category:
                    c = cat_of[s]
                    c = c.decode() if isinstance(c, bytes) else str(c)
                    cat = "gene" if c in GENE_CATEGORIES else c
                else:
                    cat = control_class(s) or "gene"
                feature_of[s] = len(feature_of)
                category_of.append(cat)
            if len(feature_of) >= _MAX_FEATURES:
                raise SpatialFormatError(f"{path}: more than {_MAX_FEATURES} distinct features")
        lut = np.array([feature_of[s] for s in local_names], np.int64)
        feat = lut[codes]
        x = _column(batch, "x_location").astype(np.float64, copy=False)
        y = _column(batch, "y_location").astype(np.float64, copy=False)
        qv = _column(batch, "qv").astype(np.float64, copy=False)
        finite = np.isfinite(x) & np.isfinite(y)
        if not finite.all():
            raise SpatialFormatError(
                f"{path}: {int((~finite).sum())} transcripts in rows {n_rows - n}-{n_rows - 1} "
                f"have no finite x_location/y_location; the file is damaged"
            )
        ix = np.floor(x / bin_um).astype(np.int64)
        iy = np.floor(y / bin_um).astype(np.int64)
        code = (ix << 32) + (iy + (1 << 31))  # one int64 per bin (|index| < 2^31)
        uniq, inverse = np.unique(code, return_inverse=True)
        ids = np.fromiter(
            (spot_of.setdefault(c, len(spot_of)) for c in uniq.tolist()), np.int64, len(uniq)
        )
        spot = ids[inverse.ravel()]
        n_spots = len(spot_of)
        good = qv >= min_qv  # NaN qv fails the test: counted as low quality
        if len(low) < n_spots:
            low = np.concatenate([low, np.zeros(n_spots - len(low), np.int64)])
        low += np.bincount(spot[~good], minlength=n_spots)
        key, count = np.unique(spot[good] * _MAX_FEATURES + feat[good], return_counts=True)
        pending.append((key, count))
        n_pending += len(key)
        # Fold the triples into the sparse total before they outgrow half of it: memory stays
        # within the batch plus ~1.5x the result, and each triple is folded O(1) times.
        if n_pending > max(FOLD_MIN_TRIPLES, (total.nnz if total is not None else 0) // 2):
            total = fold(total, n_spots, len(feature_of))
            n_folds += 1
            pending.clear()
            n_pending = 0
    n_spots, n_features = len(spot_of), len(feature_of)
    if pending or total is None:
        if not pending:
            pending.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
        total = fold(total, n_spots, n_features)
        n_folds += 1
        pending.clear()
    total.resize((n_spots, n_features))

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
