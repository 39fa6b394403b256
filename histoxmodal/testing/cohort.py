"""A generated multimodal cohort: a chest radiograph (PNG), a 12-lead ECG (WFDB) and a report
(text) per patient, written as real files with a manifest, whose content is set by hidden bits.

Each modality carries ``bits`` binary findings: the radiograph shows an opacity in lung zone j,
the ECG an inverted T wave in lead group j, the report states finding j. ``mode`` sets how the
modalities' bits relate:

- ``"shared"``: one latent factor; all three carry the same bits (every pair is informative).
- ``"xor"``: radiograph bits ``a`` and ECG bits ``b`` are independent and the report states
  ``a XOR b`` (the Symile paper's example): any two modalities are independent, and only the
  three together carry the signal. Pairwise CLIP cannot learn it; Symile can.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

#: Report phrases of the findings, in bit order.
FINDINGS = (
    "right upper lobe opacity",
    "left lower lobe consolidation",
    "right pleural effusion",
    "left upper lobe nodule",
)
#: ECG lead groups whose T waves invert with each finding bit (standard 12-lead order indices).
LEAD_GROUPS = ((1, 2, 5), (0, 4, 10, 11), (6, 7, 8, 9), (3, 4, 5))
_FILLER = (
    "The cardiomediastinal silhouette is within normal limits.",
    "The osseous structures are intact.",
    "No pneumothorax is seen.",
    "Lungs are hyperexpanded.",
    "Surgical clips in the upper abdomen.",
    "Degenerative changes of the thoracic spine.",
)
STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@dataclass(frozen=True)
class SyntheticCohort:
    """What :func:`make_synthetic_cohort` wrote: the manifest and the hidden bits (ground truth)
    per patient, ``(n_patients, bits)`` for each modality."""

    manifest: Path
    patients: list[str]
    cxr_bits: np.ndarray
    ecg_bits: np.ndarray
    report_bits: np.ndarray


def _radiograph(bits: np.ndarray, px: int, rng: np.random.Generator) -> np.ndarray:
    """Lungs dark on a bright mediastinum; each finding has its own look, not only its own
    place (a tower that pools globally still tells them apart): a soft opacity, a streaky
    consolidation, a bright meniscus at a lung base, a small dense nodule."""
    yy, xx = np.mgrid[0:px, 0:px] / px
    img = 0.75 + 0.05 * rng.standard_normal()  # bright mediastinum and soft tissue
    lungs = np.zeros((px, px))
    for cx in (0.3, 0.7):
        lungs = np.maximum(lungs, ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2 <= 1)
    img = img - 0.45 * lungs
    jitter = rng.uniform(-0.04, 0.04, 2)
    for j, on in enumerate(bits):
        if not on:
            continue
        if j == 0:  # right upper lobe opacity: a large soft blob
            cx, cy = 0.3 + jitter[0], 0.32 + jitter[1]
            img = img + 0.35 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.1**2)))
        elif j == 1:  # left lower lobe consolidation: streaks (air bronchograms) in a patch
            cx, cy = 0.7 + jitter[0], 0.65 + jitter[1]
            patch = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.11**2)))
            img = img + 0.3 * patch * (0.5 + 0.5 * np.sin(2 * np.pi * yy * px / 4))
        elif j == 2:  # right pleural effusion: a bright meniscus filling the lung base
            img = img + 0.4 * lungs * (xx < 0.5) * (yy > 0.72 + jitter[1])
        else:  # left upper lobe nodule: small and dense
            cx, cy = 0.68 + jitter[0], 0.3 + jitter[1]
            img = img + 0.6 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.03**2)))
    img = img + 0.04 * rng.standard_normal((px, px))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _ecg(bits: np.ndarray, fs: float, length_s: float, rng: np.random.Generator) -> np.ndarray:
    n = round(fs * length_s)
    t = np.arange(n) / fs
    hr = rng.uniform(55, 95) / 60.0
    phase = (t * hr + rng.random()) % 1.0  # position within each beat
    amp = rng.uniform(0.8, 1.2, 12)

    def bump(centre, width, height):
        return height * np.exp(-((phase - centre) ** 2) / (2 * width * width))

    sig = np.empty((12, n))
    for lead in range(12):
        t_sign = 1.0
        for j, on in enumerate(bits):
            if on and lead in LEAD_GROUPS[j % len(LEAD_GROUPS)]:
                t_sign = -1.0
        sig[lead] = amp[lead] * (
            bump(0.15, 0.02, 0.12) + bump(0.30, 0.012, 1.0) - bump(0.33, 0.01, 0.25)
        ) + t_sign * bump(0.55, 0.04, 0.3)
    sig += 0.03 * rng.standard_normal(sig.shape)
    return sig


def _report(bits: np.ndarray, rng: np.random.Generator) -> str:
    sentences = [
        f"There is {FINDINGS[j]}." if on else f"No {FINDINGS[j]}." for j, on in enumerate(bits)
    ]
    sentences += list(rng.choice(_FILLER, size=2, replace=False))
    rng.shuffle(sentences)
    positives = [FINDINGS[j] for j, on in enumerate(bits) if on]
    impression = "; ".join(positives).capitalize() + "." if positives else "No acute findings."
    return f"FINDINGS: {' '.join(sentences)}\nIMPRESSION: {impression}\n"


def make_synthetic_cohort(
    out: str | Path,
    *,
    n_patients: int = 500,
    mode: str = "xor",
    bits: int = 3,
    missing: float = 0.0,
    image_px: int = 64,
    fs: float = 500.0,
    length_s: float = 2.5,
    seed: int = 0,
) -> SyntheticCohort:
    """Write ``out/{cxr,ecg,reports}/`` files and ``out/manifest.csv`` for ``n_patients``.

    Parameters
    ----------
    mode
        ``"xor"`` (report bits = radiograph XOR ECG bits) or ``"shared"`` (one latent factor).
    bits
        Findings per modality (1 to 4).
    missing
        Probability that a patient's ECG, and independently their report, is absent (left out
        of the manifest): the cohort keeps the patient with a mask.
    image_px, fs, length_s
        Radiograph size; ECG sampling rate and duration (WFDB, 12 standard leads, mV).
    seed
        Same seed, same files.
    """
    import wfdb
    from PIL import Image

    if mode not in ("xor", "shared"):
        raise ValueError(f"mode={mode!r}: xor or shared")
    if not 1 <= bits <= len(FINDINGS):
        raise ValueError(f"bits={bits}: 1 to {len(FINDINGS)}")
    out = Path(out)
    for sub in ("cxr", "ecg", "reports"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, (n_patients, bits))
    b = a.copy() if mode == "shared" else rng.integers(0, 2, (n_patients, bits))
    c = a.copy() if mode == "shared" else a ^ b
    t0 = datetime(2020, 1, 1)
    rows = ["patient_id,modality,path,time"]
    patients = []
    for i in range(n_patients):
        pid = f"P{i:05d}"
        patients.append(pid)
        when = t0 + timedelta(days=int(rng.integers(0, 700)), minutes=int(rng.integers(0, 1440)))
        Image.fromarray(_radiograph(a[i], image_px, rng)).save(out / "cxr" / f"{pid}.png")
        rows.append(f"{pid},cxr,cxr/{pid}.png,{when.isoformat()}")
        if rng.random() >= missing:
            sig = _ecg(b[i], fs, length_s, rng)
            wfdb.wrsamp(
                pid,
                fs=fs,
                units=["mV"] * 12,
                sig_name=list(STANDARD_LEADS),
                p_signal=sig.T,
                fmt=["16"] * 12,
                adc_gain=[1000.0] * 12,
                baseline=[0] * 12,
                write_dir=str(out / "ecg"),
                comments=[f"synthetic ECG of {pid}"],
            )
            ecg_time = when + timedelta(hours=float(rng.uniform(-20, 20)))
            rows.append(f"{pid},ecg,ecg/{pid}.hea,{ecg_time.isoformat()}")
        if rng.random() >= missing:
            (out / "reports" / f"{pid}.txt").write_text(_report(c[i], rng), encoding="utf-8")
            rows.append(f"{pid},report,reports/{pid}.txt,{(when + timedelta(hours=2)).isoformat()}")
    manifest = out / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return SyntheticCohort(manifest, patients, a, b, c)
