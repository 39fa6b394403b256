"""HESCAPE's panels: H&E crops paired with pseudo-spot counts, read in batches of bounded size.

HESCAPE (Gindra et al. 2025, https://github.com/peng-lab/hescape) publishes each 10x Xenium gene
panel as a Hugging Face dataset (``Peng-AI/hescape-pyarrow``, one config per panel). The layout
below is the one HESCAPE's own code reads (``src/hescape/data_modules/image_gexp_dataset.py``,
``src/hescape/constants.py``, ``experiments/configs/{datamodule,paths}/*.yaml`` and the
repository's ``data/<panel>/`` folder).

The rows, one per 55 µm pseudo-spot, saved as Parquet shards (the Hub's
``<panel>/train-*.parquet``) or by ``datasets``' ``save_to_disk`` (``data-*.arrow`` with
``state.json`` and ``dataset_info.json``):

- ``name``: the sample id, a ``ClassLabel`` (int64 codes whose names the schema's ``huggingface``
  metadata lists) or a string;
- ``image``: an ``Image`` feature, the struct ``{bytes, path}`` of an encoded H&E crop centred on
  the spot (``datasets`` decodes it to a PIL image);
- ``gexp``: an ``Array2D`` of shape ``(1, n_genes)``, the spot's raw counts;
- ``cell_coords``: an array, the spot's position in the tissue;
- ``source``, ``tissue`` (a ``ClassLabel``) and metadata: ``atlas``, ``age``, ``diagnosis``,
  ``cancer`` (bool), ``oncotree_code``, ``tumor_grade``, ``gender``, ``race``,
  ``treatment_type``, ``therapeutic_agents``, ``tumor_tissue_type``, ``assay``,
  ``preservation_method``, ``stain``, ``spaceranger``, ``species``, ``cytassist`` (strings).

Beside the rows (HESCAPE's ``data/<panel>/``):

- ``train.csv``, ``val.csv``, ``test.csv``: HEST-1k metadata, one line per sample: ``id`` (a
  row's ``name``), ``patient``, ``pixel_size_um_estimated`` (µm per pixel of the crops),
  ``dataset_title``, ``gene_panel``, ``organ``, ``disease_state``, ``preservation_method``,
  ``magnification``;
- ``nicheformer_reference.h5ad``: its ``var_names`` are the gene symbols of ``gexp``'s columns,
  in order (``var['gene_ids']``: Ensembl ids).

:func:`find_hescape` finds these pieces under one or more folders, :func:`read_hescape_splits`
and :func:`read_hescape_genes` read the small ones, and :class:`HescapeReader` streams the rows
with ``datasets`` when it is installed, else with pyarrow alone.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal.errors import ConfigError
from histoxmodal.io.spatial.common import MissingSpatialFileError, SpatialFormatError

log = logging.getLogger(__name__)

__all__ = [
    "ENGINES",
    "REFERENCE_FILE",
    "SPLITS",
    "HescapeReader",
    "HescapeSource",
    "HescapeSplits",
    "decode_image",
    "find_hescape",
    "read_hescape_genes",
    "read_hescape_splits",
]

#: HESCAPE's split files, in this order
SPLITS = ("train", "val", "test")
#: the gene reference of a panel: its var names are the columns of ``gexp``
REFERENCE_FILE = "nicheformer_reference.h5ad"
#: how the rows are read: ``auto`` uses ``datasets`` when installed, else pyarrow
ENGINES = ("auto", "datasets", "pyarrow")

COL_NAME, COL_IMAGE, COL_GEXP, COL_COORDS = "name", "image", "gexp", "cell_coords"
REQUIRED_COLUMNS = (COL_NAME, COL_IMAGE, COL_GEXP)
CSV_ID, CSV_MPP, CSV_PATIENT = "id", "pixel_size_um_estimated", "patient"

LAYOUT = (
    "expected a HESCAPE panel: its rows as Parquet shards (the Hub's <panel>/train-*.parquet) or "
    "a datasets save_to_disk folder (data-*.arrow, state.json, dataset_info.json), and "
    "train.csv, val.csv, test.csv with nicheformer_reference.h5ad side by side (hescape's "
    "data/<panel>/ folder), all under the --src folders"
)


@dataclass(frozen=True)
class HescapeSource:
    """Where the pieces of one HESCAPE panel lie.

    Attributes
    ----------
    layout
        ``parquet`` (shards) or ``save_to_disk`` (a ``datasets`` arrow folder).
    dataset
        The folder of the shards, or the ``save_to_disk`` folder.
    files
        The files holding the rows, in reading order.
    splits
        ``{"train": Path, "val": Path, "test": Path}``: HESCAPE's split CSVs.
    reference
        The gene reference ``.h5ad``.
    """

    layout: str
    dataset: Path
    files: tuple[Path, ...]
    splits: dict[str, Path]
    reference: Path

    @property
    def row_files(self) -> list[Path]:
        """The files of the rows: :attr:`files`, and a ``save_to_disk`` folder's ``state.json``
        and ``dataset_info.json``."""
        extra = []
        if self.layout == "save_to_disk":
            extra = [self.dataset / "state.json", self.dataset / "dataset_info.json"]
        return [*self.files, *extra]

    @property
    def input_files(self) -> list[Path]:
        """Every file the panel is read from: :attr:`row_files`, split CSVs, reference."""
        return [*self.row_files, *self.splits.values(), self.reference]


def _roots(src: str | Path | Sequence[str | Path]) -> list[Path]:
    """The ``--src`` folders as absolute paths, each checked to exist."""
    items = [src] if isinstance(src, str | Path) else list(src)
    if not items:
        raise ConfigError(f"no --src given; {LAYOUT}")
    roots = []
    for s in items:
        p = Path(os.path.abspath(s))
        if not p.exists():
            raise MissingSpatialFileError(f"--src {p}: not found")
        roots.append(p)
    return roots


def _walk(roots: list[Path], pattern: str) -> list[Path]:
    """Files matching ``pattern`` under ``roots`` (a root that is such a file included), hidden
    folders (``.cache``, staging folders) left out; sorted, each once."""
    found: set[Path] = set()
    for r in roots:
        if r.is_file():
            if r.match(pattern):
                found.add(r)
            continue
        for p in r.rglob(pattern):
            rel = p.relative_to(r).parts
            if p.is_file() and not any(part.startswith(".") for part in rel):
                found.add(p)
    return sorted(found)


def _where(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def _state_files(folder: Path) -> list[Path]:
    """The arrow files a ``save_to_disk`` folder's ``state.json`` lists, in order."""
    state = folder / "state.json"
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
        names = [d["filename"] for d in data["_data_files"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SpatialFormatError(
            f"{state}: not a datasets save_to_disk state file ({type(exc).__name__}: {exc}); "
            f"save the panel again with Dataset.save_to_disk"
        ) from exc
    files = [folder / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing or not files:
        raise MissingSpatialFileError(
            f"{folder}: state.json lists {', '.join(missing) or 'no data file'}, "
            f"{'not in the folder' if missing else 'nothing to read'}; copy the whole "
            f"save_to_disk folder"
        )
    return files


def _find_rows(roots: list[Path]) -> tuple[str, Path, tuple[Path, ...]]:
    """``(layout, folder, files)`` of the one copy of the rows under ``roots``."""
    disk = sorted(
        {p.parent for p in _walk(roots, "state.json") if (p.parent / "dataset_info.json").is_file()}
    )
    groups: dict[Path, list[Path]] = {}
    for p in _walk(roots, "*.parquet"):
        groups.setdefault(p.parent, []).append(p)
    copies = [f"{d} (save_to_disk)" for d in disk]
    copies += [f"{d} ({len(fs)} Parquet shards)" for d, fs in groups.items()]
    if len(copies) > 1:
        raise SpatialFormatError(
            f"--src {_where(roots)}: several copies of HESCAPE rows: {'; '.join(copies)}; keep "
            f"one panel, in one form, under the --src folders (give the folder of that copy and "
            f"the folder of its split CSVs as two --src)"
        )
    if disk:
        return "save_to_disk", disk[0], tuple(_state_files(disk[0]))
    if groups:
        folder, files = next(iter(groups.items()))
        return "parquet", folder, tuple(files)
    raise MissingSpatialFileError(
        f"--src {_where(roots)}: no HESCAPE rows (no *.parquet shard, no save_to_disk folder "
        f"with state.json); {LAYOUT}"
    )


def _csv_ids(path: Path) -> set[str]:
    """The ``id`` column of a split CSV (empty when it cannot be read; read properly later)."""
    import pandas as pd

    try:
        return set(pd.read_csv(path, dtype=str)[CSV_ID].dropna())
    except (OSError, ValueError, KeyError):
        return set()


def _find_splits(roots: list[Path], rows: Path, sample_names: list[str] | None) -> dict[str, Path]:
    """The folder holding ``train.csv``, ``val.csv`` and ``test.csv`` for the rows in ``rows``.

    When several folders hold split CSVs (HESCAPE's ``data/`` has one per panel), the one named
    like the rows' folder, or the one whose ids are all sample names of the rows, is taken.
    """
    folders = sorted({p.parent for s in SPLITS for p in _walk(roots, f"{s}.csv")})
    if not folders:
        raise MissingSpatialFileError(
            f"--src {_where(roots)}: no train.csv, val.csv or test.csv (HESCAPE's sample split, "
            f"with the pixel size of each sample); {LAYOUT}"
        )
    if len(folders) > 1:
        stem = rows.name.removesuffix(".dataset")
        chosen = [f for f in folders if f.name == rows.name or f.name == stem]
        if len(chosen) != 1 and sample_names:
            known = set(sample_names)

            def fits(folder: Path) -> bool:
                ids = set().union(*(_csv_ids(folder / f"{s}.csv") for s in SPLITS))
                return bool(ids) and ids <= known

            chosen = [f for f in folders if fits(f)]
        if len(chosen) != 1:
            raise SpatialFormatError(
                f"--src {_where(roots)}: split CSVs in several folders "
                f"({', '.join(map(str, folders))}) and none is clearly the one of {rows}; give "
                f"only that panel's folder as --src"
            )
        folders = chosen
    folder = folders[0]
    missing = [f"{s}.csv" for s in SPLITS if not (folder / f"{s}.csv").is_file()]
    if missing:
        raise MissingSpatialFileError(
            f"{folder}: {' and '.join(missing)} missing; HESCAPE's split is three CSVs side by "
            f"side, train.csv, val.csv and test.csv (columns {CSV_ID}, {CSV_MPP}, ...): copy "
            f"the panel's data/<panel>/ folder of the hescape repository whole"
        )
    return {s: folder / f"{s}.csv" for s in SPLITS}


def _find_reference(roots: list[Path], split_folder: Path) -> Path:
    """The panel's ``nicheformer_reference.h5ad``: beside the split CSVs, else the one under
    ``roots``."""
    beside = split_folder / REFERENCE_FILE
    if beside.is_file():
        return beside
    found = _walk(roots, REFERENCE_FILE)
    if len(found) > 1:
        found = [p for p in found if p.parent.name == split_folder.name] or found
    if len(found) == 1:
        return found[0]
    if found:
        raise SpatialFormatError(
            f"--src {_where(roots)}: several {REFERENCE_FILE} ({', '.join(map(str, found))}); "
            f"put the panel's own beside {split_folder / 'train.csv'}"
        )
    raise MissingSpatialFileError(
        f"--src {_where(roots)}: no {REFERENCE_FILE} (HESCAPE's gene reference: its var_names "
        f"name the columns of gexp, in order; the hescape repository has it at "
        f"data/<panel>/{REFERENCE_FILE}); put it beside {split_folder / 'train.csv'}"
    )


def find_hescape(src: str | Path | Sequence[str | Path]) -> HescapeSource:
    """Find a HESCAPE panel's rows, split CSVs and gene reference under ``src``.

    Parameters
    ----------
    src
        One folder or several (``--src`` is repeatable), searched recursively; hidden folders are
        skipped. Exactly one copy of the rows may lie under them.

    Returns
    -------
    HescapeSource

    Raises
    ------
    MissingSpatialFileError
        A piece is missing (a :class:`~histoxmodal.errors.ConfigError`): the message names it
        and the layout expected.
    SpatialFormatError
        The pieces are ambiguous (two copies of the rows, several panels' CSVs).
    """
    roots = _roots(src)
    layout, folder, files = _find_rows(roots)
    names = _features(files[0], layout, folder).get(COL_NAME, {}).get("names")
    splits = _find_splits(roots, folder, names)
    reference = _find_reference(roots, splits["train"].parent)
    return HescapeSource(layout, folder, files, splits, reference)


@dataclass(frozen=True)
class HescapeSplits:
    """HESCAPE's sample-level split, read from its three CSVs.

    Attributes
    ----------
    samples
        ``{"train": [...], "val": [...], "test": [...]}``: sample ids in file order.
    mpp
        Sample -> µm per pixel of its crops (``pixel_size_um_estimated``).
    patient
        Sample -> HEST's patient label, ``None`` where the CSV leaves it empty. The labels are
        those of the source study (``patient 1``), so equal labels of different studies need
        not be one donor.
    info
        Sample -> the CSV's other columns (``dataset_title``, ``organ``, ...), as strings.
    files
        Split -> CSV path.
    where
        Sample -> the CSV that lists it first.
    """

    samples: dict[str, list[str]]
    mpp: dict[str, float]
    patient: dict[str, str | None]
    info: dict[str, dict[str, str]]
    files: dict[str, Path]
    where: dict[str, str] = field(default_factory=dict)

    @property
    def val_equals_test(self) -> bool:
        """Whether ``val.csv`` lists the same samples as ``test.csv`` (HESCAPE's skin panel)."""
        return bool(self.samples["val"]) and set(self.samples["val"]) == set(self.samples["test"])

    @property
    def all_samples(self) -> list[str]:
        """Every sample of the split, in train, val, test order, each once."""
        return list(dict.fromkeys(s for k in SPLITS for s in self.samples[k]))

    def split_of(self, sample: str) -> str | None:
        """``train``, ``val``, ``test`` or ``val+test`` (listed in both), ``None`` if absent."""
        where = [k for k in SPLITS if sample in self.samples[k]]
        return "+".join(where) if where else None


def read_hescape_splits(files: dict[str, Path]) -> HescapeSplits:
    """Read HESCAPE's ``train.csv``, ``val.csv`` and ``test.csv``.

    Parameters
    ----------
    files
        Split name -> CSV (see :attr:`HescapeSource.splits`).

    Returns
    -------
    HescapeSplits

    Raises
    ------
    SpatialFormatError
        A CSV that cannot be read or lacks ``id`` or ``pixel_size_um_estimated``, a pixel size
        that is not a positive number, a sample given two pixel sizes, or a sample in train and
        also in val or test (a leak): the message names the file and the sample.
    """
    import pandas as pd

    samples: dict[str, list[str]] = {}
    mpp: dict[str, float] = {}
    patient: dict[str, str | None] = {}
    info: dict[str, dict[str, str]] = {}
    where: dict[str, str] = {}
    for split in SPLITS:
        path = files[split]
        try:
            df = pd.read_csv(path, dtype={CSV_ID: str, CSV_PATIENT: str})
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise SpatialFormatError(
                f"{path}: not readable as HESCAPE's {split} split ({type(exc).__name__}: {exc})"
            ) from exc
        lacking = [c for c in (CSV_ID, CSV_MPP) if c not in df.columns]
        if lacking:
            raise SpatialFormatError(
                f"{path}: no {' and no '.join(lacking)} column (it has "
                f"{', '.join(map(str, df.columns)) or 'none'}); HESCAPE's split CSVs are HEST "
                f"metadata rows with {CSV_ID} (the rows' name) and {CSV_MPP} (µm per pixel)"
            )
        if df[CSV_ID].isna().any():
            raise SpatialFormatError(f"{path}: {int(df[CSV_ID].isna().sum())} line(s) without id")
        values = pd.to_numeric(df[CSV_MPP], errors="coerce")
        samples[split] = list(dict.fromkeys(df[CSV_ID].str.strip()))
        for i, sample in enumerate(df[CSV_ID].str.strip()):
            value = float(values.iloc[i])
            if not (np.isfinite(value) and 0 < value < 100):
                raise SpatialFormatError(
                    f"{path}: {sample}: {CSV_MPP}={df[CSV_MPP].iloc[i]!r} is not a pixel size "
                    f"in µm (a number in (0, 100), e.g. 0.2125); fix the CSV"
                )
            if sample in mpp and not np.isclose(mpp[sample], value, rtol=1e-6):
                raise SpatialFormatError(
                    f"{path}: {sample}: {CSV_MPP}={value} but {where[sample]} gives "
                    f"{mpp[sample]}; one sample has one pixel size: fix one of the CSVs"
                )
            mpp[sample] = value
            where.setdefault(sample, str(path))
            p = df[CSV_PATIENT].iloc[i] if CSV_PATIENT in df.columns else None
            if sample not in patient or patient[sample] is None:
                patient[sample] = None if p is None or pd.isna(p) else str(p).strip()
            extra = {
                str(c): str(df[c].iloc[i])
                for c in df.columns
                if c not in (CSV_ID, CSV_MPP, CSV_PATIENT) and not pd.isna(df[c].iloc[i])
            }
            info.setdefault(sample, {}).update(extra)
    for other in ("val", "test"):
        leak = [s for s in samples["train"] if s in samples[other]]
        if leak:
            raise SpatialFormatError(
                f"{leak[0]} is in {files['train']} and in {files[other]}: a sample on both sides "
                f"of the split leaks into the evaluation; remove it from one CSV"
            )
    return HescapeSplits(samples, mpp, patient, info, dict(files), where)


def read_hescape_genes(reference: str | Path):
    """The gene panel of a HESCAPE reference ``.h5ad``, in the order of ``gexp``'s columns.

    Returns
    -------
    pandas.DataFrame
        Indexed by unique gene symbols (duplicates made unique with ``-1``, ``-2`` and a
        warning), with ``gene_ids`` (Ensembl ids) when the reference has them.
    """
    import anndata as ad
    import pandas as pd

    from histoxmodal import keys
    from histoxmodal.io.spatial.common import unique_gene_names

    reference = Path(reference)
    try:
        ref = ad.read_h5ad(reference, backed="r")
    except (OSError, KeyError, ValueError) as exc:
        raise SpatialFormatError(
            f"{reference}: not a readable .h5ad ({type(exc).__name__}: {exc}); HESCAPE's gene "
            f"reference is data/<panel>/{REFERENCE_FILE} of the hescape repository"
        ) from exc
    try:
        symbols = [str(g) for g in ref.var_names]
        var = pd.DataFrame(index=unique_gene_names(symbols, str(reference)))
        if keys.VAR_GENE_IDS in ref.var:
            var[keys.VAR_GENE_IDS] = ref.var[keys.VAR_GENE_IDS].astype(str).to_numpy()
    finally:
        ref.file.close()
    if len(var) == 0:
        raise SpatialFormatError(f"{reference}: no genes (var is empty)")
    return var


def _features(first: Path, layout: str, folder: Path) -> dict[str, dict]:
    """The Hugging Face feature types of the rows (``{column: {"_type": ..., ...}}``), from the
    schema's ``huggingface`` metadata, else ``dataset_info.json``; ``{}`` when neither has them."""
    schema = _file_schema(first, layout)
    raw = (schema.metadata or {}).get(b"huggingface")
    feats: Any = None
    if raw:
        try:
            feats = json.loads(raw).get("info", {}).get("features")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            feats = None
    info = folder / "dataset_info.json"
    if feats is None and info.is_file():
        try:
            feats = json.loads(info.read_text(encoding="utf-8")).get("features")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            feats = None
    return feats if isinstance(feats, dict) else {}


def _file_schema(path: Path, layout: str):
    """The arrow schema of one file of the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if layout == "parquet":
            return pq.read_schema(path)
        with pa.memory_map(str(path)) as mm:
            return _open_ipc(mm).schema
    except (OSError, pa.ArrowException) as exc:
        raise SpatialFormatError(
            f"{path}: not readable as {'Parquet' if layout == 'parquet' else 'Arrow'} "
            f"({type(exc).__name__}: {exc}); the file is truncated or not part of the panel"
        ) from exc


def _open_ipc(source):
    """An Arrow IPC reader: ``datasets`` writes the stream format; the file format is accepted."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source)


def _plain(arr):
    """``arr`` (Array or ChunkedArray) as one Array, extension types (``Array2D``) replaced by
    their storage."""
    import pyarrow as pa

    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    chunks = [c.storage if isinstance(c, pa.ExtensionArray) else c for c in chunks]
    if not chunks:
        typ = arr.type.storage_type if isinstance(arr.type, pa.ExtensionType) else arr.type
        return pa.array([], type=typ)
    return chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)


def _is_list(typ) -> bool:
    import pyarrow as pa

    return pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)


def _uniform_rows(arr, what: str) -> np.ndarray:
    """A column of (nested) lists of equal shape as ``(n_rows, values_per_row)``.

    Raises
    ------
    SpatialFormatError
        A null row, or rows of different lengths.
    """
    import pyarrow.compute as pc

    n = len(arr)
    per_row = 1
    while _is_list(arr.type):
        if arr.null_count:
            raise SpatialFormatError(f"{what}: {arr.null_count} empty (null) value(s)")
        lengths = np.asarray(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
        if len(lengths) and (lengths != lengths[0]).any():
            raise SpatialFormatError(
                f"{what}: rows of different lengths ({int(lengths.min())} to "
                f"{int(lengths.max())} values); every row must have the same shape"
            )
        per_row *= int(lengths[0]) if len(lengths) else 0
        arr = arr.flatten()
    if arr.null_count:
        raise SpatialFormatError(f"{what}: {arr.null_count} missing (null) value(s)")
    values = np.asarray(arr.to_numpy(zero_copy_only=False))
    return values.reshape(n, per_row) if n else values.reshape(0, per_row)


def decode_image(payload: Any, *, root: Path | None = None) -> np.ndarray:
    """One row's image as an RGB ``(h, w, 3)`` uint8 array.

    Parameters
    ----------
    payload
        What :meth:`HescapeReader.image_payloads` gives: encoded bytes (an ``Image`` feature's
        ``bytes``), a file path (its ``path`` when it holds no bytes; relative paths are taken
        from ``root``), or an array ``(h, w[, c])``.
    """
    from PIL import Image

    if isinstance(payload, bytes | bytearray | memoryview):
        with Image.open(io.BytesIO(payload)) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(payload, str):
        p = Path(payload)
        if not p.is_absolute() and root is not None:
            p = root / p
        if not p.is_file():
            raise MissingSpatialFileError(
                f"an image holds no bytes and its path {payload} is not a file (looked in "
                f"{root}); save the panel with its images embedded (save_to_disk, or the Hub's "
                f"Parquet shards)"
            )
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    arr = np.asarray(payload)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise SpatialFormatError(f"an image array of shape {arr.shape}, expected (h, w, 3)")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise SpatialFormatError(f"image values from {arr.min()} to {arr.max()}, not 0-255")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr[:, :, :3])


def _has_datasets() -> bool:
    """Whether the ``datasets`` package imports."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


class HescapeReader:
    """The rows of a HESCAPE panel, in batches of at most ``batch_size`` rows.

    Only one batch is held at a time (Parquet is read row group by row group, arrow files are
    memory-mapped), so memory does not grow with the number of rows.

    Parameters
    ----------
    source
        What :func:`find_hescape` found.
    engine
        ``datasets`` (``load_from_disk``, or a streaming ``load_dataset("parquet")``),
        ``pyarrow``, or ``auto``: ``datasets`` when it is installed, else pyarrow. Both give
        the same batches.
    batch_size
        Most rows per batch.

    Attributes
    ----------
    engine
        The engine in use (``datasets`` or ``pyarrow``).
    columns
        Column names of the rows.
    class_names
        Column -> label names of its ``ClassLabel`` (``name``, ``tissue``).
    """

    def __init__(self, source: HescapeSource, *, engine: str = "auto", batch_size: int = 256):
        if engine not in ENGINES:
            raise ConfigError(f"engine={engine!r}: expected one of {', '.join(ENGINES)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: expected a whole number >= 1")
        if engine == "auto":
            engine = "datasets" if _has_datasets() else "pyarrow"
        elif engine == "datasets" and not _has_datasets():
            raise ConfigError(
                "engine='datasets' needs the datasets package (pip install datasets); "
                "engine='pyarrow' reads the same rows without it"
            )
        self.source = source
        self.engine = engine
        self.batch_size = batch_size
        schema = _file_schema(source.files[0], source.layout)
        self.columns = list(schema.names)
        self._types = {f.name: f.type for f in schema}
        feats = _features(source.files[0], source.layout, source.dataset)
        self.class_names: dict[str, list[str]] = {
            c: [str(n) for n in f["names"]]
            for c, f in feats.items()
            if isinstance(f, dict) and f.get("_type") == "ClassLabel" and "names" in f
        }
        lacking = [c for c in REQUIRED_COLUMNS if c not in self.columns]
        if lacking:
            raise SpatialFormatError(
                f"{source.files[0]}: no {', '.join(lacking)} column (it has "
                f"{', '.join(self.columns)}); HESCAPE's rows have name, image and gexp"
            )

    def __repr__(self) -> str:
        return (
            f"HescapeReader({self.source.dataset}, {self.source.layout}, "
            f"{len(self.source.files)} file(s), engine={self.engine!r})"
        )

    def _unit_rows(self) -> list[int]:
        """Rows of each unit pyarrow reads: each shard (Parquet footers), or each record batch
        of the memory-mapped arrow files."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.source.layout == "parquet":
            return [pq.ParquetFile(f).metadata.num_rows for f in self.source.files]
        out = []
        for f in self.source.files:
            with pa.memory_map(str(f)) as mm:
                out += [b.num_rows for b in _open_ipc(mm)]
        return out

    @property
    def num_rows(self) -> int:
        """Rows in the panel."""
        return sum(self._unit_rows())

    @property
    def num_batches(self) -> int:
        """Batches :meth:`batches` yields (pyarrow does not join the ends of two shards)."""
        bs = self.batch_size
        if self.engine == "datasets":
            return -(-self.num_rows // bs)
        return sum(-(-n // bs) for n in self._unit_rows())

    @property
    def metadata_columns(self) -> list[str]:
        """Columns of one plain value per row (strings, numbers, bools, ``ClassLabel``s) other
        than ``name``: ``source``, ``tissue``, ``atlas``, ..."""
        import pyarrow as pa

        out = []
        for c in self.columns:
            t = self._types[c]
            t = t.storage_type if isinstance(t, pa.ExtensionType) else t
            if c in (COL_NAME, COL_IMAGE, COL_GEXP, COL_COORDS) or pa.types.is_nested(t):
                continue
            if pa.types.is_binary(t) or pa.types.is_large_binary(t):
                continue
            out.append(c)
        return out

    def batches(self, columns: Sequence[str] | None = None) -> Iterator:
        """Yield the rows in order as arrow tables or record batches of at most
        :attr:`batch_size` rows, with ``columns`` only (default all)."""
        cols = list(columns) if columns is not None else list(self.columns)
        unknown = [c for c in cols if c not in self.columns]
        if unknown:
            raise ConfigError(f"columns {unknown} not in the rows ({', '.join(self.columns)})")
        inner = (
            self._datasets_batches(cols) if self.engine == "datasets" else self._pa_batches(cols)
        )
        for b in inner:
            for start in range(0, b.num_rows, self.batch_size):
                yield b.slice(start, self.batch_size) if b.num_rows > self.batch_size else b

    def _pa_batches(self, cols: list[str]) -> Iterator:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for f in self.source.files:
            try:
                if self.source.layout == "parquet":
                    pf = pq.ParquetFile(f)
                    yield from pf.iter_batches(batch_size=self.batch_size, columns=cols)
                    continue
                with pa.memory_map(str(f)) as mm:
                    for b in _open_ipc(mm):
                        yield b.select(cols)
            except (OSError, pa.ArrowException) as exc:
                raise SpatialFormatError(
                    f"{f}: unreadable ({type(exc).__name__}: {exc}); the file is truncated or "
                    f"corrupt: copy it again"
                ) from exc

    def _datasets_batches(self, cols: list[str]) -> Iterator:
        import datasets

        files = [str(f) for f in self.source.files]
        # no download: local files only, and the builder's lock files in a throw-away folder
        with tempfile.TemporaryDirectory(prefix="hescape-") as cache:
            if self.source.layout == "save_to_disk":
                ds = datasets.load_from_disk(str(self.source.dataset))
            else:
                ds = datasets.load_dataset(
                    "parquet", data_files=files, split="train", streaming=True, cache_dir=cache
                )
            ds = ds.select_columns(cols).with_format("arrow")
            yield from ds.iter(batch_size=self.batch_size)

    def _labels(self, batch, column: str) -> np.ndarray:
        """``column`` of ``batch`` as strings (``ClassLabel`` codes mapped to their names)."""
        import pyarrow as pa

        arr = _plain(batch.column(column))
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if pa.types.is_integer(arr.type) and column in self.class_names:
            names = np.asarray(self.class_names[column], dtype=object)
            codes = np.asarray(arr.fill_null(-1).to_numpy(zero_copy_only=False), np.int64)
            bad = (codes < 0) | (codes >= len(names))
            if bad.any():
                raise SpatialFormatError(
                    f"{self.source.dataset}: {column} code {int(codes[bad][0])} has no label "
                    f"(the ClassLabel lists {len(names)} names); the rows are damaged"
                )
            return names[codes]
        if pa.types.is_integer(arr.type) and column == COL_NAME:
            raise SpatialFormatError(
                f"{self.source.files[0]}: name holds integer codes but the schema records no "
                f"ClassLabel names (no huggingface metadata, no dataset_info.json); the sample "
                f"ids cannot be matched to the split CSVs: save the panel with datasets"
            )
        return np.asarray(arr.to_pylist(), dtype=object)

    def names(self, batch) -> np.ndarray:
        """The sample id (``name``) of each row of ``batch``: ``(b,)`` object array of str."""
        out = self._labels(batch, COL_NAME)
        if any(v is None for v in out):
            raise SpatialFormatError(f"{self.source.dataset}: rows without a name (sample id)")
        return out

    def expression(self, batch) -> np.ndarray:
        """``gexp`` of ``batch``: ``(b, n_genes)`` in the stored dtype (raw counts)."""
        return _uniform_rows(_plain(batch.column(COL_GEXP)), f"{self.source.dataset}: gexp")

    def coordinates(self, batch) -> np.ndarray:
        """The position of each row, ``(b, 2)`` float64: ``cell_coords`` (the mean of its points
        when it holds several), NaN where the column or a value is missing."""
        n = batch.num_rows
        out = np.full((n, 2), np.nan)
        if COL_COORDS not in batch.column_names:
            return out
        for i, v in enumerate(_plain(batch.column(COL_COORDS)).to_pylist()):
            if v is None:
                continue
            pts = np.asarray(v, np.float64).reshape(-1)
            if pts.size and pts.size % 2 == 0:
                out[i] = pts.reshape(-1, 2).mean(axis=0)
        return out

    def metadata(self, batch) -> dict[str, np.ndarray]:
        """The :attr:`metadata_columns` of ``batch``, ``ClassLabel`` codes as names:
        column -> ``(b,)`` array."""
        import pyarrow as pa

        out = {}
        for c in self.metadata_columns:
            if c not in batch.column_names:
                continue
            if c in self.class_names:
                out[c] = self._labels(batch, c)
                continue
            arr = _plain(batch.column(c))
            if pa.types.is_dictionary(arr.type):
                arr = arr.dictionary_decode()
            if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                out[c] = np.asarray(arr.to_pylist(), dtype=object)
            else:
                out[c] = np.asarray(arr.to_numpy(zero_copy_only=False))
        return out

    def image_payloads(self, batch) -> list[Any]:
        """Each row's image as :func:`decode_image` takes it: encoded bytes, a path (an
        ``Image`` without bytes) or an array."""
        import pyarrow as pa

        arr = _plain(batch.column(COL_IMAGE))
        where = f"{self.source.dataset}: image"
        if pa.types.is_struct(arr.type):
            names = [arr.type.field(i).name for i in range(arr.type.num_fields)]
            raw = arr.field("bytes").to_pylist() if "bytes" in names else [None] * len(arr)
            paths = arr.field("path").to_pylist() if "path" in names else [None] * len(arr)
            null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
            out = []
            for i, (b, p) in enumerate(zip(raw, paths, strict=True)):
                if null[i] or (b is None and p is None):
                    raise SpatialFormatError(f"{where}: row {i} of a batch has no image")
                out.append(b if b is not None else p)
            return out
        if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            return arr.to_pylist()
        if _is_list(arr.type):
            return [np.asarray(v, np.uint8) for v in arr.to_pylist()]
        raise SpatialFormatError(
            f"{where}: of type {arr.type}; expected an Image feature (struct of bytes and path), "
            f"encoded bytes or an (h, w, 3) array"
        )
