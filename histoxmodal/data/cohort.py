"""The multimodal cohort dataset: radiograph, ECG and report per anchor record, paired by
patient and time, stored once in one HDF5 file so training reads arrays, not thousands of files.

:func:`histoxmodal.workflows.build.build_cohort` pairs the manifest's records
(:func:`histoxmodal.pair_cohort`), reads each through the readers (radiographs windowed to
[0, 1] and resized; ECGs in mV, standard 12-lead order, resampled to a common rate and length,
missing leads masked; reports as their findings + impression), and writes ``out/cohort.h5``,
``out/manifest.json`` (counts, failures with reasons) and ``out/splits/patient.json``. A record
that cannot be read is recorded and its modality masked; the build goes on. Missing modalities
are kept as masks, never dropped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError

log = logging.getLogger(__name__)

COHORT_FILE = keys.COHORT_STORE_FILE
#: The modalities the cohort store knows, in storage order.
MODALITIES = ("cxr", "ecg", "report")


def is_cohort(path: str | Path) -> bool:
    """True when ``path`` is a folder written by :func:`build_cohort`."""
    p = Path(path) / keys.PAIRED_MANIFEST_FILE
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
            keys.BATCH_CXR: torch.from_numpy(cxr)[None],
            keys.BATCH_ECG: torch.from_numpy(ecg),
            keys.BATCH_ECG_LEAD_MASK: torch.from_numpy(self._h5["ecg_lead_mask"][j]),
            keys.BATCH_REPORT: report,
            keys.BATCH_PRESENT: torch.from_numpy(self.present[j]),
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

    out: dict[str, Any] = {keys.BATCH_REPORT: [t[keys.BATCH_REPORT] for t in items]}
    for k in (keys.BATCH_CXR, keys.BATCH_ECG, keys.BATCH_ECG_LEAD_MASK, keys.BATCH_PRESENT):
        out[k] = torch.stack([t[k] for t in items])
    return out
