"""ECG reader on the real PTB, MIT-BIH and DICOM records, checked against wfdb and pydicom."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from histoxmodal.errors import ConfigError, HistoxmodalError
from histoxmodal.io.ecg import (
    STANDARD_LEADS,
    ECGReadError,
    MissingLeadsError,
    normalize_lead_name,
    read_ecg,
)

wfdb = pytest.importorskip("wfdb")
pydicom = pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def ecg_dir(data_dir):
    return data_dir / "ecg"


def test_ptb_record_all_leads_equal_wfdb(ecg_dir):
    rec = read_ecg(ecg_dir / "s0010_re", leads="all")
    ref = wfdb.rdrecord(str(ecg_dir / "s0010_re"))
    assert rec.signal.shape == (15, 38_400) and rec.signal.dtype == np.float32
    assert rec.fs == 1000 and rec.duration_s == pytest.approx(38.4)
    assert rec.leads == (*STANDARD_LEADS, "vx", "vy", "vz")
    assert rec.lead_mask.all() and rec.units == "mV"
    assert rec.source_format == "wfdb" and rec.record_id == "s0010_re"
    assert rec.path == ecg_dir / "s0010_re.hea"
    for t, lead in [(0, 0), (1, 1), (12_345, 6), (38_399, 11), (20_000, 14)]:
        assert rec.signal[lead, t] == np.float32(ref.p_signal[t, lead])
    np.testing.assert_array_equal(rec.signal, ref.p_signal.T.astype(np.float32))
    assert "myocardial infarction" in rec.header_text.lower()
    assert "Acute infarction (localization): infero-latera" in rec.header_text
    assert rec.acquired_at == datetime(1990, 10, 1)  # "ECG date: 01/10/1990", day first


def test_ptb_standard_view_drops_frank_leads(ecg_dir):
    full = read_ecg(ecg_dir / "s0010_re", leads="all")
    std = read_ecg(ecg_dir / "s0010_re.hea")
    assert std.leads == STANDARD_LEADS and std.lead_mask.all()
    np.testing.assert_array_equal(std.signal, full.signal[:12])
    assert std.metadata["extra_leads"] == ["vx", "vy", "vz"]
    assert std.metadata["file_leads"][:3] == ["i", "ii", "iii"]
    # the .dat and the Frank leads' .xyz file name the same record
    for other in ("s0010_re.dat", "s0010_re.xyz"):
        np.testing.assert_array_equal(read_ecg(ecg_dir / other).signal, std.signal)


def test_mitbih_two_leads_masked(ecg_dir):
    rec = read_ecg(ecg_dir / "100")
    ref = wfdb.rdrecord(str(ecg_dir / "100"))
    assert rec.fs == 360 and rec.signal.shape == (12, 650_000)
    present = [lead for lead, m in zip(rec.leads, rec.lead_mask, strict=True) if m]
    assert present == ["II", "V5"]
    assert (~rec.lead_mask).sum() == 10
    assert not rec.signal[~rec.lead_mask].any()
    np.testing.assert_array_equal(rec.signal[1], ref.p_signal[:, 0].astype(np.float32))  # MLII
    np.testing.assert_array_equal(rec.signal[10], ref.p_signal[:, 1].astype(np.float32))  # V5
    assert rec.metadata["file_leads"] == ["MLII", "V5"]
    assert rec.metadata["missing_leads"] == [x for x in STANDARD_LEADS if x not in ("II", "V5")]
    assert "Aldomet, Inderal" in rec.header_text
    only = read_ecg(ecg_dir / "100.dat", leads="all")
    assert only.leads == ("II", "V5") and only.lead_mask.all()


def test_missing_leads_error_names_them(ecg_dir):
    with pytest.raises(MissingLeadsError) as e:
        read_ecg(ecg_dir / "100.hea", missing_leads="error")
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, HistoxmodalError)
    assert "100.hea" in msg and "MLII, V5" in msg
    assert "I, III, aVR, aVL, aVF, V1, V2, V3, V4, V6" in msg
    assert "missing_leads='mask'" in msg
    # asking only for recorded leads is fine
    rec = read_ecg(ecg_dir / "100", leads=["ii", "v5"], missing_leads="error")
    assert rec.leads == ("II", "V5")


def _write_sine_record(tmp_path, fs=1000, seconds=10, f=5.0, amp=1.5):
    t = np.arange(fs * seconds) / fs
    sig = np.stack([amp * np.sin(2 * np.pi * f * t), 0.5 * np.cos(2 * np.pi * f * t)], axis=1)
    wfdb.wrsamp(
        "sine",
        fs=fs,
        units=["mV", "mV"],
        sig_name=["i", "v2"],
        p_signal=sig,
        fmt=["16", "16"],
        adc_gain=[1000.0, 1000.0],
        baseline=[0, 0],
        comments=["synthetic sine"],
        write_dir=str(tmp_path),
    )
    return tmp_path / "sine"


def test_resample_halves_length_and_keeps_amplitude(tmp_path):
    path = _write_sine_record(tmp_path)
    native = read_ecg(path)
    assert native.signal.shape == (12, 10_000)
    assert (
        native.leads[0] == "I"
        and native.lead_mask.tolist() == [True] + [False] * 6 + [True] + [False] * 4
    )
    np.testing.assert_array_equal(
        native.signal[[0, 7]], wfdb.rdrecord(str(path)).p_signal.T.astype(np.float32)
    )
    half = read_ecg(path, fs=500)
    assert half.fs == 500 and half.signal.shape == (12, 5_000)
    assert half.metadata["fs_original"] == 1000 and half.metadata["n_samples_original"] == 10_000
    t = np.arange(5_000) / 500
    mid = slice(250, 4_750)  # away from the filter's edge effects
    np.testing.assert_allclose(half.signal[0, mid], 1.5 * np.sin(2 * np.pi * 5 * t[mid]), atol=2e-3)
    assert np.abs(half.signal[0, mid]).max() == pytest.approx(1.5, abs=2e-3)
    assert not half.signal[~half.lead_mask].any()


def test_length_pads_and_crops_at_the_end(tmp_path):
    path = _write_sine_record(tmp_path)
    ref = read_ecg(path, fs=500)
    padded = read_ecg(path, fs=500, length_s=12)
    assert padded.signal.shape == (12, 6_000) and padded.metadata["pad_samples"] == 1_000
    np.testing.assert_array_equal(padded.signal[:, :5_000], ref.signal)
    assert not padded.signal[:, 5_000:].any()
    cropped = read_ecg(path, length_s=2.5)
    assert cropped.signal.shape == (12, 2_500) and cropped.metadata["crop_samples"] == 7_500
    assert cropped.metadata["pad_samples"] == 0


def test_resample_to_non_integer_ratio(ecg_dir):
    rec = read_ecg(ecg_dir / "100", fs=500, length_s=10)
    assert rec.fs == 500 and rec.signal.shape == (12, 5_000)
    assert rec.metadata["crop_samples"] == 902_778 - 5_000  # ceil(650000 * 25 / 18)
    assert rec.lead_mask.sum() == 2


def test_dicom_waveform(ecg_dir):
    path = ecg_dir / "waveform_ecg.dcm"
    rec = read_ecg(path)
    ds = pydicom.dcmread(path)
    assert rec.source_format == "dicom" and rec.fs == 1000
    assert rec.signal.shape == (12, 10_000) and rec.duration_s == 10
    assert rec.leads == STANDARD_LEADS and rec.lead_mask.all()
    assert rec.units == "mV" and rec.metadata["file_units"] == ["uV"] * 12
    # waveform_array applies Channel Sensitivity (1.25 uV per unit here); the reader adds uV -> mV
    ref = ds.waveform_array(0)
    np.testing.assert_array_equal(rec.signal, (ref.T * 1e-3).astype(np.float32))
    raw = pydicom.waveforms.numpy_handler.multiplex_array(ds, 0, as_raw=True)
    assert rec.signal[1, 0] == np.float32(raw[0, 1] * 1.25 * 1e-3) == np.float32(0.1125)
    assert rec.patient_id == "642341"
    assert rec.acquired_at == datetime(2013, 1, 25, 10, 59, 19)
    assert rec.header_text == "RITMO SINUSALE\nECG NORMALE"
    assert rec.metadata["measurements"]["QRS Duration [ms]"] == 75
    assert rec.metadata["dicom_groups"] == ["RHYTHM", "MEDIAN BEAT"]
    median = read_ecg(path, dicom_group=1)
    assert median.signal.shape == (12, 1_200)
    with pytest.raises(ConfigError, match="dicom_group=5"):
        read_ecg(path, dicom_group=5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("i", "I"),
        ("II", "II"),
        ("avr", "aVR"),
        ("AVF", "aVF"),
        ("v1", "V1"),
        ("MLII", "II"),
        ("Lead I (Einthoven)", "I"),
        ("Lead aVR", "aVR"),
        ("Lead V6", "V6"),
        ("vx", "vx"),
    ],
)
def test_normalize_lead_name(name, expected):
    assert normalize_lead_name(name) == expected


def test_bad_inputs(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_ecg(tmp_path / "nope")
    txt = tmp_path / "notes.txt"
    txt.write_text("not an ECG")
    with pytest.raises(ECGReadError, match="notes.txt"):
        read_ecg(txt)
    with pytest.raises(ECGReadError, match="read_radiology"):
        read_ecg(data_dir / "cxr" / "CT_small.dcm")
    bad = tmp_path / "bad.hea"
    bad.write_text("this is not a header\n")
    with pytest.raises(ECGReadError, match="bad.hea"):
        read_ecg(bad)
    with pytest.raises(ConfigError, match="missing_leads='drop'"):
        read_ecg(tmp_path / "nope", missing_leads="drop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="leads='twelve'"):
        read_ecg(data_dir / "ecg" / "100", leads="twelve")


@pytest.mark.parametrize(
    ("record", "keep_bytes", "expected", "found"),
    [
        # MIT-BIH format 212, 2 leads: 3 bytes a frame; cut mid-frame (NumPy broadcast error)
        ("100", 300_001, 650_000, 100_000),
        # PTB format 16, 12 leads in the .dat: 24 bytes a frame (NumPy reshape error)
        ("s0010_re", 99_990, 38_400, 4_166),
    ],
)
def test_truncated_wfdb_dat_says_shorter_than_header(
    ecg_dir, tmp_path, record, keep_bytes, expected, found
):
    for f in ecg_dir.glob(f"{record}.*"):
        data = f.read_bytes()
        (tmp_path / f.name).write_bytes(data[:keep_bytes] if f.suffix == ".dat" else data)
    with pytest.raises(ECGReadError) as e:
        read_ecg(tmp_path / record)
    msg = str(e.value)
    assert f"{tmp_path / (record + '.dat')}" in msg
    assert "shorter than its header" in msg
    assert f"{expected:,} samples" in msg and f"{found:,}" in msg
    assert "broadcast" not in msg and "reshape" not in msg


def test_text_file_named_dcm_is_not_a_dicom_file(tmp_path):
    p = tmp_path / "notes.dcm"
    p.write_text("patient 12, resting ECG, see scan\n")
    with pytest.raises(ECGReadError) as e:
        read_ecg(p)
    msg = str(e.value)
    assert str(p) in msg and "not a DICOM file" in msg and "DICM" in msg
    assert "SOP class" not in msg
