"""ECG records from WFDB (PhysioNet) and DICOM waveform files, in one lead order and in mV.

:func:`read_ecg` detects the format from the file, maps lead names to the standard 12-lead names
(``I, II, III, aVR, aVL, aVF, V1..V6``), converts to millivolts, and can resample to a common rate
and length, so records from different sources stack into one ``(n_leads, n_samples)`` batch.
Leads a record lacks (MIT-BIH keeps 2 of 12) are zero rows with ``lead_mask`` False.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from histoxmodal.deps import require_extra
from histoxmodal.errors import ConfigError
from histoxmodal.errors import ECGReadError as ECGReadError
from histoxmodal.errors import MissingLeadsError as MissingLeadsError

log = logging.getLogger(__name__)

#: the standard 12-lead order of every ``leads="standard12"`` record
STANDARD_LEADS: tuple[str, ...] = (
    "I",
    "II",
    "III",
    "aVR",
    "aVL",
    "aVF",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
)

# lower-cased name without spaces -> standard name. MIT-BIH's modified limb leads (MLI, MLII,
# MLIII) record the same vector as I/II/III from torso electrodes; European D1-D3 are I-III.
_ALIASES: dict[str, str] = {name.lower(): name for name in STANDARD_LEADS}
_ALIASES.update(
    {
        "mli": "I",
        "mlii": "II",
        "mliii": "III",
        "d1": "I",
        "d2": "II",
        "d3": "III",
        "di": "I",
        "dii": "II",
        "diii": "III",
    }
)

# SCP-ECG lead codes used in DICOM channel sources (DICOM PS3.16 CID 3001), a fallback for
# files whose code meanings are not plain lead names.
_SCPECG_CODES = {
    "5.6.3-9-1": "I",
    "5.6.3-9-2": "II",
    "5.6.3-9-61": "III",
    "5.6.3-9-62": "aVR",
    "5.6.3-9-63": "aVL",
    "5.6.3-9-64": "aVF",
    "5.6.3-9-3": "V1",
    "5.6.3-9-4": "V2",
    "5.6.3-9-5": "V3",
    "5.6.3-9-6": "V4",
    "5.6.3-9-7": "V5",
    "5.6.3-9-8": "V6",
}

# physical unit -> factor to millivolts
_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "v": 1e3, "nv": 1e-6}

MissingLeads = Literal["mask", "error"]


@dataclass
class ECGRecord:
    """One ECG record in physical units.

    Attributes
    ----------
    signal
        ``(n_leads, n_samples)`` float32, in ``units`` (mV); rows of missing leads are zero.
    leads
        ``(n_leads,)`` lead names, standard names where the lead is a standard one.
    lead_mask
        ``(n_leads,)`` bool, True where the lead was recorded.
    fs
        Sampling rate in Hz (after resampling, if asked).
    units
        Physical unit of ``signal``: ``"mV"`` unless a lead's unit could not be converted.
    patient_id, record_id
        From the DICOM header, or the WFDB record name (and a PTB ``patientNNN`` folder).
    acquired_at
        Acquisition time as written in the file (naive, the site's local time), or None.
    header_text
        WFDB header comments or DICOM free-text annotations, one per line: usable as a report.
    source_format
        ``"wfdb"`` or ``"dicom"``.
    path
        The WFDB header (``.hea``) or the DICOM file.
    metadata
        Everything else: lead names in the file (``file_leads``), leads not in this view
        (``extra_leads``), original rate and length, ``pad_samples`` / ``crop_samples``, ...
    """

    signal: np.ndarray = field(repr=False)
    leads: tuple[str, ...]
    lead_mask: np.ndarray = field(repr=False)
    fs: float
    units: str
    patient_id: str | None
    record_id: str
    acquired_at: datetime | None
    header_text: str = field(repr=False)
    source_format: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


@dataclass
class _Raw:
    """What a format reader hands to :func:`read_ecg`: all leads as in the file."""

    signal: np.ndarray  # (n_file_leads, n_samples) float64, mV where convertible
    names: list[str]  # as written in the file
    units: list[str]  # per lead, after conversion
    fs: float
    patient_id: str | None
    record_id: str
    acquired_at: datetime | None
    header_text: str
    source_format: str
    path: Path
    metadata: dict[str, Any]


def normalize_lead_name(name: str) -> str:
    """The standard name of an ECG lead, or ``name`` stripped when it is not a standard lead.

    Case-insensitive; ``"Lead I (Einthoven)"`` -> ``"I"``, ``"avr"`` -> ``"aVR"``,
    ``"MLII"`` -> ``"II"``, ``"v1"`` -> ``"V1"``; ``"vx"`` stays ``"vx"``.
    """
    s = re.sub(r"\(.*?\)", " ", str(name))
    s = re.sub(r"^\s*lead\b", " ", s, flags=re.IGNORECASE)
    key = re.sub(r"[\s_]+", "", s).lower()
    return _ALIASES.get(key, str(name).strip())


def read_ecg(
    path: str | Path,
    *,
    fs: float | None = None,
    length_s: float | None = None,
    leads: str | Sequence[str] = "standard12",
    missing_leads: MissingLeads = "mask",
    dicom_group: int | None = None,
) -> ECGRecord:
    """Read one ECG record (WFDB or DICOM waveform) into an :class:`ECGRecord` in mV.

    Parameters
    ----------
    path
        A WFDB record as its ``.hea`` file, one of its signal files (``.dat``, ``.xyz``, ...) or
        the record path without extension; or a DICOM waveform file (``.dcm`` or any file with
        the ``DICM`` preamble).
    fs
        Resample to this rate in Hz (``scipy.signal.resample_poly`` with the rational ratio of
        the rates); None keeps the file's rate.
    length_s
        Crop or zero-pad at the end to this duration in seconds (after resampling); the padding
        is recorded in ``metadata["pad_samples"]``, the cut in ``metadata["crop_samples"]``.
    leads
        ``"standard12"``: the 12 standard leads in standard order (other leads such as the
        PTB Frank leads ``vx, vy, vz`` are left out and listed in ``metadata["extra_leads"]``);
        ``"all"``: every lead of the file in file order, standard names where they apply;
        or a sequence of lead names (normalized like the file's).
    missing_leads
        ``"mask"``: a requested lead the record lacks is a zero row with ``lead_mask`` False;
        ``"error"``: raise :class:`MissingLeadsError` instead.
    dicom_group
        Index of the DICOM multiplex group to read; by default the rhythm (original) group,
        not a derived median beat.

    Returns
    -------
    ECGRecord
        ``signal`` of shape ``(n_leads, n_samples)``, float32.
    """
    require_extra("medical", "read_ecg")
    if missing_leads not in ("mask", "error"):
        raise ConfigError(
            f"read_ecg: missing_leads={missing_leads!r}; expected 'mask' (zero rows, "
            f"lead_mask False) or 'error'"
        )
    if fs is not None and not fs > 0:
        raise ConfigError(f"read_ecg: fs={fs!r}; expected a sampling rate in Hz > 0, or None")
    if length_s is not None and not length_s > 0:
        raise ConfigError(
            f"read_ecg: length_s={length_s!r}; expected a duration in seconds > 0, or None"
        )
    fmt, target = detect_ecg_format(path)
    raw = _read_wfdb(target) if fmt == "wfdb" else _read_dicom(target, dicom_group)
    return _finish(raw, fs=fs, length_s=length_s, leads=leads, missing_leads=missing_leads)


def detect_ecg_format(path: str | Path) -> tuple[str, Path]:
    """``("wfdb", header_path)`` or ``("dicom", file)`` for an ECG path; errors name the path."""
    p = Path(path)
    if not p.exists():
        hea = p.parent / (p.name + ".hea")
        if hea.is_file():
            return "wfdb", hea
        raise FileNotFoundError(
            f"ECG record not found: {p} (nor a WFDB header {hea.name} beside it); give a .hea, "
            f".dat or .dcm file, or a WFDB record path without extension"
        )
    if p.is_dir():
        raise ECGReadError(
            f"{p} is a folder; give one ECG record: a WFDB .hea/.dat file or a DICOM .dcm file"
        )
    if _has_dicm_preamble(p) or p.suffix.lower() == ".dcm":
        return "dicom", p
    if p.suffix.lower() == ".hea":
        return "wfdb", p
    hea = p.with_suffix(".hea")
    if p.suffix and hea.is_file():
        return "wfdb", hea
    raise ECGReadError(
        f"{p}: not an ECG file this reader knows: no DICOM preamble and no WFDB header "
        f"{hea.name} beside it; give a WFDB record (.hea with its signal files) or a DICOM "
        f"waveform (.dcm)"
    )


def _has_dicm_preamble(p: Path) -> bool:
    with p.open("rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


# --------------------------------------------------------------------------------------- WFDB


def _read_wfdb(hea: Path) -> _Raw:
    import wfdb

    record_path = hea.with_suffix("")
    _check_wfdb_file_sizes(hea)
    try:
        rec = wfdb.rdrecord(str(record_path))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{hea}: a file of this WFDB record is missing ({e}); keep the .hea beside its "
            f"signal files (.dat, ...)"
        ) from e
    except Exception as e:  # wfdb raises bare ValueError/IndexError/... on malformed input
        raise ECGReadError(f"{hea}: not a readable WFDB record: {type(e).__name__}: {e}") from e
    if rec.p_signal is None or rec.p_signal.ndim != 2 or rec.p_signal.shape[1] == 0:
        raise ECGReadError(f"{hea}: the WFDB record has no signals")
    sig = np.asarray(rec.p_signal, dtype=np.float64).T.copy()
    file_units = list(rec.units or ["mV"] * sig.shape[0])
    units = _convert_to_mv(sig, file_units, hea)
    comments = [str(c) for c in (rec.comments or [])]
    acquired = None
    if rec.base_date is not None:
        acquired = datetime.combine(rec.base_date, rec.base_time or time())
    else:
        acquired = _ptb_ecg_date(comments)
    parent = hea.parent.name
    return _Raw(
        signal=sig,
        names=[str(n) for n in rec.sig_name],
        units=units,
        fs=float(rec.fs),
        patient_id=parent if re.fullmatch(r"patient\d+", parent) else None,
        record_id=str(rec.record_name),
        acquired_at=acquired,
        header_text="\n".join(comments),
        source_format="wfdb",
        path=hea,
        metadata={"file_units": file_units, "comments": comments},
    )


# Bytes per sample of the WFDB signal formats (the WFDB spec, signal(5)); the FLAC formats 508,
# 516 and 524 are compressed and have no fixed size, so they are left out.
_WFDB_BYTES_PER_SAMPLE = {
    "8": 1.0,
    "16": 2.0,
    "24": 3.0,
    "32": 4.0,
    "61": 2.0,
    "80": 1.0,
    "160": 2.0,
    "212": 1.5,
    "310": 4 / 3,
    "311": 4 / 3,
}


def _check_wfdb_file_sizes(hea: Path) -> None:
    """Refuse a signal file shorter than its header says, before wfdb fails on it.

    wfdb reads what is there and then fails with a NumPy reshape or broadcast error that names no
    file; the header gives the sample count, format and byte offset, so the size can be checked.
    """
    import math

    import wfdb

    try:
        head = wfdb.rdheader(str(hea.with_suffix("")))
    except Exception:  # a malformed header is reported by rdrecord with its own message
        return
    if not isinstance(head, wfdb.Record) or not head.sig_len or not head.file_name:
        return  # multi-segment records, or a header without a length: nothing to compare
    files: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(head.file_name):
        fmt = str(head.fmt[i])
        spf = int((head.samps_per_frame or [1] * len(head.file_name))[i] or 1)
        entry = files.setdefault(
            name, {"fmt": fmt, "samples": 0, "leads": 0, "offset": 0, "bytes": 0.0}
        )
        entry["samples"] += spf
        entry["leads"] += 1
        entry["bytes"] += spf * _WFDB_BYTES_PER_SAMPLE.get(fmt, 0.0)
        entry["offset"] = int((head.byte_offset or [0] * len(head.file_name))[i] or 0)
    for name, e in files.items():
        dat = hea.parent / name
        frame_bytes = e["bytes"]
        if frame_bytes <= 0 or not dat.is_file():
            continue  # compressed (FLAC) formats have no fixed size; a missing file is rdrecord's
        expected_bytes = e["offset"] + math.ceil(head.sig_len * frame_bytes)
        size = dat.stat().st_size
        if size >= expected_bytes:
            continue
        found = max(0, math.floor((size - e["offset"]) / frame_bytes))
        raise ECGReadError(
            f"{dat}: the signal file is shorter than its header {hea.name} says: "
            f"{head.sig_len:,} samples per lead expected ({e['leads']} leads in format "
            f"{e['fmt']}, {expected_bytes:,} bytes), only {found:,} found ({size:,} bytes); "
            f"was the copy or download interrupted? Copy the record again, or correct the "
            f"sample count in {hea.name}"
        )


def _ptb_ecg_date(comments: list[str]) -> datetime | None:
    """PTB writes the recording date only as a comment, ``ECG date: dd/mm/yyyy``."""
    for c in comments:
        m = re.fullmatch(r"\s*ECG date:\s*(\d{1,2})/(\d{1,2})/(\d{4})\s*", c)
        if m:
            try:
                return datetime(int(m[3]), int(m[2]), int(m[1]))
            except ValueError:
                log.warning("unparseable PTB ECG date %r", c)
    return None


def _convert_to_mv(sig: np.ndarray, units: list[str], where: Path) -> list[str]:
    """Scale rows of ``sig`` to mV in place; returns each row's unit afterwards."""
    out = []
    for i, u in enumerate(units):
        factor = _TO_MV.get(str(u).strip().lower())
        if factor is None:
            warnings.warn(
                f"{where}: lead {i} has unit {u!r}, not a voltage; kept as is",
                UserWarning,
                stacklevel=4,
            )
            out.append(str(u))
            continue
        if factor != 1.0:
            sig[i] *= factor
        out.append("mV")
    return out


# -------------------------------------------------------------------------------------- DICOM


def _read_dicom(p: Path, group: int | None) -> _Raw:
    from histoxmodal.io.radiology import dicom_datetime, read_dicom_dataset

    ds = read_dicom_dataset(p, error=ECGReadError)
    seq = ds.get("WaveformSequence")
    if not seq:
        sop = ds.get("SOPClassUID")
        raise ECGReadError(
            f"{p}: DICOM file without a waveform (SOP class "
            f"{getattr(sop, 'name', sop)!s}, modality {ds.get('Modality', '?')}), so not an "
            f"ECG; images are read with histoxmodal.read_radiology"
        )
    idx = _pick_group(seq) if group is None else group
    if not 0 <= idx < len(seq):
        raise ConfigError(
            f"read_ecg: dicom_group={group} but {p} has {len(seq)} multiplex groups "
            f"({_group_labels(seq)}); pass an index from 0 to {len(seq) - 1}"
        )
    w = seq[idx]
    try:
        # (samples, channels), Channel Sensitivity x Correction Factor + Baseline applied
        arr = ds.waveform_array(idx)
    except Exception as e:
        raise ECGReadError(
            f"{p}: waveform group {idx} cannot be decoded: {type(e).__name__}: {e}"
        ) from e
    sig = np.asarray(arr, dtype=np.float64).T.copy()
    names, file_units = [], []
    for j, ch in enumerate(w.ChannelDefinitionSequence):
        names.append(_channel_name(ch, j))
        unit_seq = ch.get("ChannelSensitivityUnitsSequence")
        if "ChannelSensitivity" not in ch or not unit_seq:
            file_units.append("raw")
        else:
            file_units.append(str(unit_seq[0].get("CodeValue", "raw")))
    units = _convert_to_mv(sig, file_units, p)
    texts, measurements = _annotations(ds)
    for kw, label in (("ReasonForStudy", "Reason for study"), ("VisitComments", "Comments")):
        v = str(ds.get(kw, "") or "").strip()
        if v:
            texts.append(f"{label}: {v}")
    acquired = dicom_datetime(ds, ("Acquisition", "Content", "Study"))
    pid = str(ds.get("PatientID", "") or "").strip() or None
    meta = {
        "file_units": file_units,
        "dicom_group": idx,
        "dicom_groups": _group_labels(seq),
        "measurements": measurements,
        "sop_class": str(getattr(ds.get("SOPClassUID"), "name", ds.get("SOPClassUID", ""))),
        "study_id": str(ds.get("StudyInstanceUID", "")) or None,
        "sex": str(ds.get("PatientSex", "")) or None,
        "age": str(ds.get("PatientAge", "")) or None,
        "manufacturer": str(ds.get("Manufacturer", "")) or None,
        "filter_low_hz": _float_or_none(w.ChannelDefinitionSequence[0].get("FilterLowFrequency")),
        "filter_high_hz": _float_or_none(w.ChannelDefinitionSequence[0].get("FilterHighFrequency")),
    }
    return _Raw(
        signal=sig,
        names=names,
        units=units,
        fs=float(w.SamplingFrequency),
        patient_id=pid,
        record_id=str(ds.get("SOPInstanceUID", "") or p.stem),
        acquired_at=acquired,
        header_text="\n".join(texts),
        source_format="dicom",
        path=p,
        metadata=meta,
    )


def _pick_group(seq) -> int:
    """The rhythm recording: a group labelled RHYTHM, else the first ORIGINAL, else the first."""
    for i, w in enumerate(seq):
        if "RHYTHM" in str(w.get("MultiplexGroupLabel", "")).upper():
            return i
    for i, w in enumerate(seq):
        if str(w.get("WaveformOriginality", "")).upper() == "ORIGINAL":
            return i
    return 0


def _group_labels(seq) -> list[str]:
    return [str(w.get("MultiplexGroupLabel", "") or f"group {i}") for i, w in enumerate(seq)]


def _channel_name(ch, j: int) -> str:
    src = ch.get("ChannelSourceSequence")
    meaning = code = None
    if src:
        meaning = src[0].get("CodeMeaning")
        code = src[0].get("CodeValue")
    for candidate in (meaning, ch.get("ChannelLabel")):
        if candidate:
            name = normalize_lead_name(str(candidate))
            if name in STANDARD_LEADS:
                return name
    if code and str(code) in _SCPECG_CODES:
        return _SCPECG_CODES[str(code)]
    return str(meaning or ch.get("ChannelLabel") or f"channel {j}").strip()


def _annotations(ds) -> tuple[list[str], dict[str, float]]:
    """Free-text statements and named numeric measurements (``"RR Interval [ms]": 982.0``)."""
    texts: list[str] = []
    meas: dict[str, float] = {}
    for a in ds.get("WaveformAnnotationSequence", []) or []:
        t = str(a.get("UnformattedTextValue", "") or "").strip()
        if t:
            texts.append(t)
        if "NumericValue" in a and a.get("ConceptNameCodeSequence"):
            name = str(a.ConceptNameCodeSequence[0].get("CodeMeaning", "")).strip()
            unit_seq = a.get("MeasurementUnitsCodeSequence")
            unit = str(unit_seq[0].get("CodeValue", "")) if unit_seq else ""
            value = _float_or_none(a.NumericValue)
            if name and value is not None:
                meas[f"{name} [{unit}]" if unit else name] = value
    return texts, meas


def _float_or_none(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        if isinstance(v, Sequence) and not isinstance(v, str):
            v = v[0]
        return float(v)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------- leads, rate, length


def _finish(
    raw: _Raw,
    *,
    fs: float | None,
    length_s: float | None,
    leads: str | Sequence[str],
    missing_leads: MissingLeads,
) -> ECGRecord:
    file_leads = [normalize_lead_name(n) for n in raw.names]
    row_of: dict[str, int] = {}
    for i, name in enumerate(file_leads):
        if name in row_of:
            warnings.warn(
                f"{raw.path}: lead {name} occurs twice ({raw.names[row_of[name]]!r} and "
                f"{raw.names[i]!r}); the first is used",
                UserWarning,
                stacklevel=3,
            )
            continue
        row_of[name] = i

    wanted = _wanted_leads(leads, file_leads)
    missing = [name for name in wanted if name not in row_of]
    if missing and missing_leads == "error":
        present = ", ".join(raw.names)
        raise MissingLeadsError(
            f"{raw.path}: the record has leads {present} but lacks {', '.join(missing)}; "
            f"pass missing_leads='mask' to read it with those leads as zero rows "
            f"(lead_mask False), or leads='all' for the recorded leads only"
        )

    n_file = raw.signal.shape[1]
    rows = [row_of[name] for name in wanted if name in row_of]
    present_sig = raw.signal[rows]
    fs_out = raw.fs
    if fs is not None and fs != raw.fs:
        present_sig, fs_out = _resample(present_sig, raw.fs, float(fs), raw.path)
    n = present_sig.shape[1]

    signal = np.zeros((len(wanted), n), dtype=np.float32)
    mask = np.array([name in row_of for name in wanted], dtype=bool)
    signal[mask] = present_sig.astype(np.float32)

    meta = dict(raw.metadata)
    meta.update(
        file_leads=list(raw.names),
        extra_leads=[raw.names[i] for i in range(len(raw.names)) if file_leads[i] not in wanted],
        missing_leads=missing,
        fs_original=raw.fs,
        n_samples_original=n_file,
        pad_samples=0,
        crop_samples=0,
    )
    if length_s is not None:
        n_target = round(length_s * fs_out)
        if n_target < n:
            meta["crop_samples"] = n - n_target
            signal = np.ascontiguousarray(signal[:, :n_target])
        elif n_target > n:
            meta["pad_samples"] = n_target - n
            signal = np.pad(signal, ((0, 0), (0, n_target - n)))
    lead_units = [raw.units[row_of[name]] for name in wanted if name in row_of]
    units = "mV" if all(u == "mV" for u in lead_units) else ",".join(dict.fromkeys(lead_units))
    return ECGRecord(
        signal=signal,
        leads=tuple(wanted),
        lead_mask=mask,
        fs=fs_out,
        units=units,
        patient_id=raw.patient_id,
        record_id=raw.record_id,
        acquired_at=raw.acquired_at,
        header_text=raw.header_text,
        source_format=raw.source_format,
        path=raw.path,
        metadata=meta,
    )


def _wanted_leads(leads: str | Sequence[str], file_leads: list[str]) -> list[str]:
    if isinstance(leads, str):
        if leads == "standard12":
            return list(STANDARD_LEADS)
        if leads == "all":
            return list(dict.fromkeys(file_leads))
        raise ConfigError(
            f"read_ecg: leads={leads!r}; expected 'standard12', 'all' or a list of lead names "
            f"such as ['I', 'II', 'V1']"
        )
    wanted = [normalize_lead_name(n) for n in leads]
    if not wanted:
        raise ConfigError("read_ecg: leads=[] asks for no lead; give at least one lead name")
    dup = sorted({n for n in wanted if wanted.count(n) > 1})
    if dup:
        raise ConfigError(f"read_ecg: leads={list(leads)!r} names {', '.join(dup)} twice")
    return wanted


def _resample(
    sig: np.ndarray, fs_in: float, fs_out: float, where: Path
) -> tuple[np.ndarray, float]:
    """Polyphase resampling by the rational ratio ``fs_out / fs_in`` (denominator <= 1000)."""
    from scipy.signal import resample_poly

    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    actual = fs_in * ratio.numerator / ratio.denominator
    if abs(actual - fs_out) > 1e-6 * fs_out:
        warnings.warn(
            f"{where}: {fs_in:g} Hz -> {fs_out:g} Hz is not a ratio of small integers; "
            f"resampled to {actual:.6g} Hz (ratio {ratio})",
            UserWarning,
            stacklevel=4,
        )
    if sig.shape[0] == 0:
        n = -(-sig.shape[1] * ratio.numerator // ratio.denominator)
        return np.zeros((0, n)), actual
    # padtype="line" extends each lead along its end trend instead of with zeros: a lead sitting
    # off zero (baseline wander) would otherwise ring at both ends.
    out = resample_poly(sig, ratio.numerator, ratio.denominator, axis=1, padtype="line")
    return out, actual


__all__ = [
    "STANDARD_LEADS",
    "ECGReadError",
    "ECGRecord",
    "MissingLeadsError",
    "detect_ecg_format",
    "normalize_lead_name",
    "read_ecg",
]
