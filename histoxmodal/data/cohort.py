"""The multimodal cohort dataset: radiograph, ECG and report per anchor record, paired by
patient and time, stored once in one HDF5 file so training reads arrays, not thousands of files.

``build_cohort(manifest, out)`` pairs the manifest's records (:func:`histoxmodal.pair_cohort`),
reads each through the readers (radiographs windowed to [0, 1] and resized; ECGs in mV, standard
12-lead order, resampled to a common rate and length, missing leads masked; reports as their
findings + impression), and writes ``out/cohort.h5``, ``out/manifest.json`` (counts, failures
with reasons) and ``out/splits/patient.json``. A record that cannot be read is recorded and its
modality masked; the build goes on. Missing modalities are kept as masks, never dropped.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal._fileutil import write_json_atomic
from histoxmodal.errors import ConfigError

log = logging.getLogger(__name__)

COHORT_FILE = "cohort.h5"
#: The modalities the cohort store knows, in storage order.
MODALITIES = ("cxr", "ecg", "report")


def _report_text(path: str) -> str:
    from histoxmodal.io.reports import split_sections

    text = Path(path).read_text(encoding="utf-8", errors="replace")
    parts = split_sections(text)
    body = " ".join(parts.get(k, "") for k in ("findings", "impression")).strip()
    return body or text.strip()


def build_cohort(
    manifest: str | Path,
    out: str | Path,
    *,
    anchor: str = "cxr",
    window: str | timedelta | None = "24h",
    image_px: int = 224,
    fs: float = 100.0,
    length_s: float = 10.0,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
) -> dict[str, Any]:
    """Pair, read and store a cohort; returns the manifest written to ``out/manifest.json``.

    Parameters
    ----------
    manifest
        CSV/Parquet with ``patient_id, modality, path[, time, study_id]`` (paths relative to its
        folder and confined to it).
    anchor, window
        One row per record of ``anchor``, partners within ``window`` (see ``pair_cohort``).
    image_px
        Radiographs are windowed to [0, 1] and resized to ``image_px`` square (uint8 stored).
    fs, length_s
        ECGs are resampled to ``fs`` and cropped/padded to ``length_s`` (float16, mV).
    seed, test_fraction, val_fraction
        The patient-level split written to ``splits/patient.json``.
    """
    import h5py

    from histoxmodal._progress import progress
    from histoxmodal.data.splits import _digest
    from histoxmodal.io.cohort import pair_cohort
    from histoxmodal.io.ecg import read_ecg
    from histoxmodal.io.radiology import read_radiology

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = pair_cohort(manifest, modalities=MODALITIES, anchor=anchor, window=window)
    n = len(pairs)
    if n == 0:
        raise ConfigError(f"{manifest}: no {anchor!r} records to anchor the cohort on")
    n_t = round(fs * length_s)
    cxr = np.zeros((n, image_px, image_px), np.uint8)
    ecg = np.zeros((n, 12, n_t), np.float16)
    lead_mask = np.zeros((n, 12), bool)
    reports = [""] * n
    present = np.zeros((n, len(MODALITIES)), bool)
    failures: list[dict[str, str]] = []
    for i in progress(range(n), total=n, desc="records", unit="row"):
        row = pairs.iloc[i]
        for m_idx, m in enumerate(MODALITIES):
            if not row[f"mask_{m}"]:
                continue
            path = row[f"path_{m}"]
            try:
                if m == "cxr":
                    img = read_radiology(path, size=(image_px, image_px), unit=True)
                    if img.pixels.ndim != 2:
                        raise ConfigError(f"{path}: a volume, not a radiograph")
                    cxr[i] = np.round(img.pixels * 255).astype(np.uint8)
                elif m == "ecg":
                    rec = read_ecg(path, fs=fs, length_s=length_s, missing_leads="mask")
                    ecg[i] = rec.signal.astype(np.float16)
                    lead_mask[i] = rec.lead_mask
                else:
                    reports[i] = _report_text(path)
                present[i, m_idx] = True
            except (OSError, ValueError) as exc:
                failures.append(
                    {"row": str(i), "modality": m, "path": str(path), "error": str(exc)}
                )
                log.warning("cohort row %d: %s not read: %s", i, m, exc)
    patients = pairs["patient_id"].astype(str).to_numpy()
    tmp = out / f".{COHORT_FILE}.partial"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("cxr", data=cxr, chunks=(1, image_px, image_px))
        f.create_dataset("ecg", data=ecg, chunks=(1, 12, n_t))
        f.create_dataset("ecg_lead_mask", data=lead_mask)
        f.create_dataset("report", data=np.array(reports, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("present", data=present)
        f.create_dataset("patient_id", data=patients.astype(object), dtype=h5py.string_dtype())
        f.attrs.update(
            {"modalities": list(MODALITIES), "image_px": image_px, "fs": fs, "length_s": length_s}
        )
    tmp.replace(out / COHORT_FILE)
    # patient-level split: all records of a patient on one side
    rng = np.random.default_rng(seed)
    uniq = rng.permutation(np.unique(patients))
    n_test, n_val = round(len(uniq) * test_fraction), round(len(uniq) * val_fraction)
    test_p, val_p = set(uniq[:n_test]), set(uniq[n_test : n_test + n_val])
    split = {
        "kind": "patient",
        "seed": seed,
        "n_obs": n,
        "obs_names_sha256": _digest([str(p) for p in patients]),
        "folds": [
            {
                "name": "random_patients",
                "held_out": sorted(test_p),
                "test": [i for i in range(n) if patients[i] in test_p],
                "val": [i for i in range(n) if patients[i] in val_p],
            }
        ],
    }
    split["sha256"] = _digest(split)
    (out / "splits").mkdir(exist_ok=True)
    write_json_atomic(out / "splits" / "patient.json", split)
    meta = {
        "status": "complete",
        "kind": "cohort",
        "source_manifest": str(Path(manifest).resolve()),
        "anchor": anchor,
        "window": str(window),
        "n_rows": n,
        "n_patients": len(uniq),
        "present": {m: int(present[:, k].sum()) for k, m in enumerate(MODALITIES)},
        "failures": failures,
        "params": {"image_px": image_px, "fs": fs, "length_s": length_s},
        "splits": {"patient": {"file": "splits/patient.json", "sha256": split["sha256"]}},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(out / "manifest.json", meta)
    return meta


def is_cohort(path: str | Path) -> bool:
    """True when ``path`` is a folder written by :func:`build_cohort`."""
    p = Path(path) / "manifest.json"
    return p.exists() and json.loads(p.read_text(encoding="utf-8")).get("kind") == "cohort"


class CohortDataset:
    """Rows of a cohort store as dicts of arrays: ``cxr`` ``(1, H, W)`` float32 in [0, 1],
    ``ecg`` ``(12, T)`` float32 mV, ``ecg_lead_mask`` ``(12,)``, ``report`` str and
    ``present`` ``(n_modalities,)`` bool. The HDF5 file is opened lazily in each worker.

    ``augment=True`` (training) draws fresh nuisance every time a row is read, so a model
    cannot tell records apart by their noise instead of their content: radiograph brightness,
    contrast, a shift of up to 1/16 of the side and pixel noise; ECG amplitude, a circular time
    shift and noise; the report's sentences in a new order.
    """

    def __init__(
        self,
        path: str | Path,
        indices: np.ndarray | None = None,
        *,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        import h5py

        self.file = Path(path) / COHORT_FILE
        if not self.file.exists():
            raise ConfigError(
                f"{path}: not a cohort dataset (build one with `histoxmodal build "
                f"--recipe cohort --manifest FILE --out DIR`)"
            )
        with h5py.File(self.file, "r") as f:
            n = len(f["present"])
            self.modalities = tuple(f.attrs["modalities"])
            self.reports = [s.decode() if isinstance(s, bytes) else s for s in f["report"][:]]
            self.present = f["present"][:]
            self.patients = np.array(
                [s.decode() if isinstance(s, bytes) else s for s in f["patient_id"][:]]
            )
        self.indices = np.arange(n) if indices is None else np.asarray(indices)
        self.augment, self.seed, self._draws = augment, seed, 0
        self._h5 = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import h5py
        import torch

        if self._h5 is None:
            self._h5 = h5py.File(self.file, "r")
        j = int(self.indices[i])
        cxr = self._h5["cxr"][j].astype(np.float32) / 255.0
        ecg = self._h5["ecg"][j].astype(np.float32)
        report = self.reports[j]
        if self.augment:
            self._draws += 1
            rng = np.random.default_rng((self.seed, j, self._draws, torch.initial_seed() % 2**32))
            cxr, ecg, report = _augment(cxr, ecg, report, rng)
        return {
            "cxr": torch.from_numpy(cxr)[None],
            "ecg": torch.from_numpy(ecg),
            "ecg_lead_mask": torch.from_numpy(self._h5["ecg_lead_mask"][j]),
            "report": report,
            "present": torch.from_numpy(self.present[j]),
        }

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"] = None  # h5py handles do not cross process boundaries
        return state


def _augment(cxr: np.ndarray, ecg: np.ndarray, report: str, rng: np.random.Generator):
    import re

    h, w = cxr.shape
    dy, dx = rng.integers(-(h // 16), h // 16 + 1), rng.integers(-(w // 16), w // 16 + 1)
    cxr = np.roll(cxr, (int(dy), int(dx)), axis=(0, 1))
    cxr = (cxr - 0.5) * rng.uniform(0.9, 1.1) + 0.5 + rng.uniform(-0.05, 0.05)
    cxr = np.clip(cxr + rng.normal(0, 0.02, cxr.shape), 0, 1).astype(np.float32)
    if ecg.any():
        ecg = np.roll(ecg, int(rng.integers(0, ecg.shape[1])), axis=1) * rng.uniform(0.9, 1.1)
        ecg = (ecg + rng.normal(0, 0.02, ecg.shape) * (ecg != 0)).astype(np.float32)
    sentences = [s for s in re.split(r"(?<=[.;])\s+", report) if s]
    if len(sentences) > 1:
        report = " ".join(sentences[k] for k in rng.permutation(len(sentences)))
    return cxr, ecg, report


def collate_cohort(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep report strings as a list (the text tower tokenises them)."""
    import torch

    out: dict[str, Any] = {"report": [t["report"] for t in items]}
    for k in ("cxr", "ecg", "ecg_lead_mask", "present"):
        out[k] = torch.stack([t[k] for t in items])
    return out
