"""Pair the records of a multimodal cohort by patient and time, from a manifest table.

A manifest (CSV or Parquet) lists one record per row: ``patient_id``, ``modality`` (``cxr``,
``ecg``, ``report``, ``pathology``, ...), ``path``, and optionally ``time`` (ISO 8601) and
``study_id``. :func:`pair_cohort` builds one row per record of the anchor modality with the
nearest record of each other modality of the same patient within a time window, the way Symile
pairs an ECG and labs with a chest X-ray taken within a window. Records without a partner keep
their row, with ``mask_<modality>`` False.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from histoxmodal.deps import require_extra
from histoxmodal.errors import CohortError as CohortError
from histoxmodal.errors import ConfigError

log = logging.getLogger(__name__)

#: columns every manifest needs
REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "modality", "path")
#: columns a manifest may have
OPTIONAL_COLUMNS: tuple[str, ...] = ("time", "study_id")

_TZ_PATTERN = r"[T ]\d.*(?:Z|[+-]\d{2}:?\d{2})$"


def read_manifest(manifest: Any, *, root: str | Path | None = None, check_exists: bool = True):
    """Read and validate a manifest; paths resolved under ``root`` and times parsed.

    Parameters
    ----------
    manifest
        A ``.csv`` / ``.parquet`` file, or a DataFrame.
    root
        Folder the ``path`` column is relative to, and that every path must stay inside;
        default: the manifest's folder (the current directory for a DataFrame).
    check_exists
        Raise :class:`FileNotFoundError` naming the row when a path does not exist.

    Returns
    -------
    pandas.DataFrame
        The manifest with ``modality`` lower-cased, ``path`` absolute (str), ``time`` as
        datetimes (NaT where empty; UTC when the times carry offsets) and a ``row`` column with
        each record's position in the manifest.
    """
    import pandas as pd

    df, where, root_dir = _load(manifest, root)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CohortError(
            f"{where}: missing column(s) {', '.join(missing)} (found: "
            f"{', '.join(map(str, df.columns)) or 'none'}); a manifest needs "
            f"{', '.join(REQUIRED_COLUMNS)} and may have {', '.join(OPTIONAL_COLUMNS)}"
        )
    df = df.reset_index(drop=True).copy()
    df["row"] = range(len(df))
    for col in ("patient_id", "modality"):
        s = df[col].astype("string").str.strip()
        empty = s.isna() | (s == "")
        if empty.any():
            raise CohortError(
                f"{where}: column {col!r} is empty in {_rows(df, empty, where)}; every record "
                f"needs a {col}"
            )
        df[col] = s.astype(object)
    df["modality"] = df["modality"].str.lower()
    if "study_id" in df.columns:
        s = df["study_id"].astype("string").str.strip()
        keep = (s.notna() & (s != "")).to_numpy(dtype=bool)
        df["study_id"] = [v if k else None for v, k in zip(s.astype(object), keep, strict=True)]
    if "time" in df.columns:
        df["time"] = _parse_times(df, where)
    else:
        df["time"] = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns]")
    df.attrs["has_time"] = bool(df["time"].notna().any())
    df["path"] = _resolve_paths(df, where, root_dir, check_exists)
    return df


def pair_cohort(
    manifest: Any,
    *,
    modalities: Sequence[str] = ("cxr", "ecg", "report"),
    anchor: str = "cxr",
    window: str | timedelta | None = "24h",
    root: str | Path | None = None,
    check_exists: bool = True,
):
    """One row per anchor record with the nearest record of each other modality.

    Parameters
    ----------
    manifest
        A ``.csv`` / ``.parquet`` file or a DataFrame with columns ``patient_id``,
        ``modality``, ``path``, optionally ``time`` (ISO 8601) and ``study_id``.
    modalities
        Modalities to pair (lower case); the anchor is included if not listed.
    anchor
        The modality that defines the rows (each of its records is one row).
    window
        Largest time difference, either side of the anchor, to pair a record (``"24h"``,
        ``"2d"``, ``"30min"``, a ``timedelta``); the edge is included. None: no limit.
    root
        Folder the manifest's paths are relative to and confined to (default: the manifest's
        folder); a path resolving outside it (``../x``, an absolute path elsewhere, a symlink
        out) is an error naming the row.
    check_exists
        Raise :class:`FileNotFoundError` naming the row when a path does not exist.

    Returns
    -------
    pandas.DataFrame
        Rows in manifest order of the anchor records, columns ``patient_id``, ``study_id``
        (when the manifest has it), ``time`` (the anchor's), then for each modality ``m``:
        ``path_m`` (absolute path, None when unpaired), ``time_m`` and ``mask_m`` (bool).

    Notes
    -----
    Pairing, for each anchor and modality: a record of the same patient with the same
    ``study_id`` wins regardless of time (the report of that radiograph); otherwise the record
    of the same patient nearest in time within ``window``, the earlier one on a tie. Records
    with no time pair only through ``study_id``; when the manifest has no times at all (no
    ``time`` column, or all empty), the first record of the patient pairs. One record may pair
    with several anchors.
    """
    require_extra("spatial", "pair_cohort")  # pandas only
    import numpy as np
    import pandas as pd

    mods = _check_modalities(modalities, anchor)
    anchor = anchor.strip().lower()
    win = _check_window(window)
    df = read_manifest(manifest, root=root, check_exists=check_exists)
    has_time = df.attrs["has_time"]
    has_study = "study_id" in df.columns

    anchors = df[df["modality"] == anchor].reset_index(drop=True)
    out = pd.DataFrame({"patient_id": anchors["patient_id"].to_numpy(dtype=object)})
    if has_study:
        out["study_id"] = anchors["study_id"].to_numpy(dtype=object)
    out["time"] = anchors["time"].to_numpy()
    present = set(df["modality"])
    for m in mods:
        if m == anchor:
            idx = anchors["row"].to_numpy()
        else:
            if m not in present:
                log.info("pair_cohort: no %r records in the manifest; mask_%s is all False", m, m)
            cand = df[df["modality"] == m]
            idx = _match(anchors, cand, win, has_time=has_time, has_study=has_study)
        ok = pd.notna(idx)
        rows = np.where(ok, idx, 0).astype(np.int64)  # "row" is the position in df
        paths = df["path"].to_numpy(dtype=object)[rows]
        paths[~ok] = None
        out[f"path_{m}"] = paths
        out[f"time_{m}"] = df["time"].iloc[rows].where(ok).to_numpy()
        out[f"mask_{m}"] = np.asarray(ok, dtype=bool)
    return out


# ---------------------------------------------------------------------------------- matching


def _match(anchors, cand, win, *, has_time: bool, has_study: bool):
    """Manifest row of the partner of each anchor (NaN where none), as a float array."""
    import numpy as np
    import pandas as pd

    result = pd.Series(np.nan, index=anchors.index, dtype="float64")
    if len(anchors) == 0 or len(cand) == 0:
        return result.to_numpy()

    if has_study:
        a = anchors.loc[anchors["study_id"].notna(), ["patient_id", "study_id", "time"]]
        a = a.reset_index(names="_a")
        c = cand.loc[cand["study_id"].notna(), ["patient_id", "study_id", "time", "row"]]
        j = a.merge(c, on=["patient_id", "study_id"], suffixes=("", "_c"))
        if len(j):
            dt = (j["time_c"] - j["time"]).abs()
            # unknown times sort after known ones; ties keep manifest order
            j["_d"] = dt.fillna(pd.Timedelta.max)
            j = j.sort_values(["_a", "_d", "row"], kind="stable").drop_duplicates("_a")
            result.loc[j["_a"].to_numpy()] = j["row"].to_numpy(dtype="float64")

    todo = result.isna()
    if not has_time:
        first = cand.drop_duplicates("patient_id").set_index("patient_id")["row"]
        result[todo] = anchors.loc[todo, "patient_id"].map(first).astype("float64")
        return result.to_numpy()

    a = anchors.loc[todo & anchors["time"].notna(), ["patient_id", "time"]]
    a = a.reset_index(names="_a").sort_values("time", kind="stable")
    c = cand.loc[cand["time"].notna(), ["patient_id", "time", "row"]]
    # one candidate per (patient, time): the first in the manifest, so ties are deterministic
    c = c.sort_values(["time", "row"], kind="stable").drop_duplicates(["patient_id", "time"])
    c = c.rename(columns={"time": "_ct"})
    if len(a) == 0 or len(c) == 0:
        return result.to_numpy()
    kw = {"left_on": "time", "right_on": "_ct", "by": "patient_id", "tolerance": win}
    back = pd.merge_asof(a, c, direction="backward", **kw).set_index("_a")
    fwd = pd.merge_asof(a, c, direction="forward", **kw).set_index("_a")
    d_back = back["time"] - back["_ct"]
    d_fwd = fwd["_ct"] - fwd["time"]
    use_back = back["row"].notna() & (fwd["row"].isna() | (d_back <= d_fwd))
    chosen = back["row"].where(use_back, fwd["row"])
    result.loc[chosen.index] = chosen.astype("float64")
    return result.to_numpy()


# ------------------------------------------------------------------------------- validation


def _load(manifest: Any, root: str | Path | None):
    import pandas as pd

    if isinstance(manifest, pd.DataFrame):
        return manifest, "manifest DataFrame", Path(root) if root is not None else Path.cwd()
    if not isinstance(manifest, (str, Path)):
        raise ConfigError(
            f"manifest={type(manifest).__name__}; expected a .csv/.parquet path or a DataFrame"
        )
    p = Path(manifest)
    if not p.is_file():
        raise FileNotFoundError(f"cohort manifest not found: {p}")
    suffix = p.name.lower()
    try:
        if suffix.endswith((".parquet", ".pq")):
            df = pd.read_parquet(p)
        elif suffix.endswith((".csv", ".csv.gz", ".tsv")):
            # every column as text: patient ids such as 00012 keep their zeros
            df = pd.read_csv(
                p, dtype=str, keep_default_na=False, sep="\t" if ".tsv" in suffix else ","
            )
            df = df.replace("", None)
        else:
            raise CohortError(
                f"{p}: a manifest must be .csv, .tsv or .parquet (got {p.suffix!r}); save the "
                f"table as CSV with columns {', '.join(REQUIRED_COLUMNS)}"
            )
    except (ValueError, OSError) as e:
        if isinstance(e, CohortError):
            raise
        raise CohortError(f"{p}: cannot be read as a table: {e}") from e
    return df, str(p), Path(root) if root is not None else p.parent


def _rows(df, mask, where: str, limit: int = 5) -> str:
    """``row 3 (line 5)``, ... for a CSV (header on line 1); ``row 3`` otherwise."""
    idx = [int(i) for i in df.index[mask]]
    csv = where.lower().endswith((".csv", ".csv.gz", ".tsv"))
    parts = [f"row {i} (line {i + 2})" if csv else f"row {i}" for i in idx[:limit]]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ", ".join(parts) + more


def _parse_times(df, where: str):
    import pandas as pd

    raw = df["time"]
    if pd.api.types.is_datetime64_any_dtype(raw):
        return raw
    s = raw.astype("string").str.strip()
    present = s.notna() & (s != "")
    has_tz = s[present].str.contains(_TZ_PATTERN, regex=True)
    if has_tz.any() and not has_tz.all():
        mixed = present.copy()
        mixed[present] = ~has_tz.astype(bool)
        raise CohortError(
            f"{where}: column 'time' mixes times with a UTC offset and times without one "
            f"(without: {_rows(df, mixed, where)}); give every time an offset "
            f"(2020-01-31T14:05:00+01:00) or none"
        )
    parsed = pd.to_datetime(
        s.where(present, None).astype(object),
        format="ISO8601",
        errors="coerce",
        utc=bool(len(has_tz) and has_tz.all()),
    )
    bad = present & parsed.isna()
    if bad.any():
        examples = ", ".join(repr(v) for v in s[bad].head(3))
        raise CohortError(
            f"{where}: column 'time' has values that are not ISO 8601 date-times in "
            f"{_rows(df, bad, where)} ({examples}); write them like 2020-01-31T14:05:00 or "
            f"2020-01-31, or leave the cell empty"
        )
    return parsed


def _resolve_paths(df, where: str, root_dir: Path, check_exists: bool) -> list[str]:
    base = root_dir.resolve()
    if not base.is_dir():
        raise FileNotFoundError(f"cohort root folder not found: {root_dir} (root= of {where})")
    out = []
    for i, raw in enumerate(df["path"].tolist()):
        label = f"{where}: row {i}" + (
            f" (line {i + 2})" if where.lower().endswith((".csv", ".csv.gz", ".tsv")) else ""
        )
        if raw is None or (isinstance(raw, float) and raw != raw) or not str(raw).strip():
            raise CohortError(f"{label}: column 'path' is empty; every record needs a file path")
        q = Path(str(raw).strip())
        full = (q if q.is_absolute() else base / q).resolve()
        if not full.is_relative_to(base):
            raise CohortError(
                f"{label}: path {str(raw)!r} (patient {df['patient_id'].iloc[i]}, modality "
                f"{df['modality'].iloc[i]}) resolves to {full}, outside the root {base}; "
                f"give paths inside the root, or pass root= a folder that contains them"
            )
        if check_exists and not full.exists():
            raise FileNotFoundError(
                f"{label}: path {str(raw)!r} not found ({full}); fix the path, or pass "
                f"check_exists=False to pair without checking the files"
            )
        out.append(str(full))
    return out


def _check_modalities(modalities: Sequence[str], anchor: str) -> list[str]:
    if isinstance(modalities, str) or not all(isinstance(m, str) for m in modalities):
        raise ConfigError(
            f"modalities={modalities!r}; expected a list of modality names, e.g. "
            f"('cxr', 'ecg', 'report')"
        )
    if not isinstance(anchor, str) or not anchor.strip():
        raise ConfigError(f"anchor={anchor!r}; expected a modality name such as 'cxr'")
    mods = list(dict.fromkeys(m.strip().lower() for m in modalities))
    a = anchor.strip().lower()
    if a not in mods:
        mods.insert(0, a)
    return mods


def _check_window(window: str | timedelta | None):
    import pandas as pd

    if window is None:
        return None
    try:
        win = pd.Timedelta(window)
    except (ValueError, TypeError):
        raise ConfigError(
            f"window={window!r}; expected a duration such as '24h', '2d', '30min' or a "
            f"timedelta, or None for no limit"
        ) from None
    if pd.isna(win) or win < pd.Timedelta(0):
        raise ConfigError(f"window={window!r}; the window must be a duration >= 0")
    return win


__all__ = ["OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "CohortError", "pair_cohort", "read_manifest"]
