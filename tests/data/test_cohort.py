"""The cohort store: generated files (PNG, WFDB, text) -> paired, read, stored, split by patient."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("wfdb")
pytest.importorskip("pydicom")
h5py = pytest.importorskip("h5py")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from histoxmodal.testing.cohort import make_synthetic_cohort
    from histoxmodal.workflows.build import build_cohort

    root = tmp_path_factory.mktemp("cohort")
    gen = make_synthetic_cohort(root / "raw", n_patients=40, missing=0.2, image_px=32, seed=1)
    # one unreadable ECG: recorded as a failure, the row kept with the ECG masked
    broken = root / "raw" / "ecg" / f"{gen.patients[3]}.dat"
    if broken.exists():
        broken.write_bytes(b"\x00")
    meta = build_cohort(gen.manifest, root / "store", image_px=32, fs=100.0, length_s=2.5)
    return gen, root / "store", meta


def test_store_holds_every_record_with_masks(cohort):
    import pandas as pd

    gen, store, meta = cohort
    manifest = pd.read_csv(gen.manifest)
    counts = manifest["modality"].value_counts()
    assert meta["n_rows"] == meta["n_patients"] == 40
    failed = {f["modality"] for f in meta["failures"]}
    assert meta["present"]["cxr"] == counts["cxr"] == 40
    assert meta["present"]["report"] == counts["report"]
    assert meta["present"]["ecg"] == counts["ecg"] - (1 if "ecg" in failed else 0)
    with h5py.File(store / "cohort.h5") as f:
        assert f["cxr"].shape == (40, 32, 32) and f["cxr"].dtype == np.uint8
        assert f["ecg"].shape == (40, 12, 250)  # resampled 500 -> 100 Hz, 2.5 s
        present = f["present"][:]
        ecg = f["ecg"][:].astype(np.float32)
        reports = [r.decode() for r in f["report"][:]]
    # rows without an ECG are zeros, masked; the reports are findings + impression text
    assert np.all(ecg[~present[:, 1]] == 0)
    assert all(
        ("lobe" in r or "effusion" in r) for r, p in zip(reports, present[:, 2], strict=True) if p
    )
    assert all(r == "" for r, p in zip(reports, present[:, 2], strict=True) if not p)


def test_records_equal_the_readers_output(cohort):
    from histoxmodal import read_ecg, read_radiology
    from histoxmodal.data.cohort import CohortDataset, collate_cohort

    gen, store, _ = cohort
    ds = CohortDataset(store)
    row = next(i for i in range(len(ds)) if bool(ds.present[i].all()))
    pid = ds.patients[row]
    item = ds[row]
    img = read_radiology(gen.manifest.parent / "cxr" / f"{pid}.png", unit=True).pixels
    np.testing.assert_allclose(item["cxr"][0].numpy(), np.round(img * 255) / 255, atol=1e-6)
    rec = read_ecg(gen.manifest.parent / "ecg" / f"{pid}.hea", fs=100.0, length_s=2.5)
    np.testing.assert_allclose(item["ecg"].numpy(), rec.signal, atol=2e-3)  # float16 storage
    batch = collate_cohort([ds[0], ds[1]])
    assert batch["cxr"].shape == (2, 1, 32, 32) and len(batch["report"]) == 2


def test_patient_split_keeps_patients_apart(cohort):
    from histoxmodal.data.splits import load_split

    _, store, meta = cohort
    fold = load_split(store / "splits" / "patient.json")[0]
    assert len(fold.test) == 8 and len(fold.val) == 4  # 20 % and 10 % of 40 patients
    assert meta["splits"]["patient"]["sha256"]
    assert json.loads((store / "manifest.json").read_text())["kind"] == "cohort"
