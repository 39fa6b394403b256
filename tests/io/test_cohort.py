"""Cohort pairing: exact pairs, masks and window edges on a small manifest; path confinement."""

from __future__ import annotations

import os

import pytest

from histoxmodal.errors import ConfigError
from histoxmodal.io.cohort import CohortError, pair_cohort, read_manifest

pd = pytest.importorskip("pandas")

ROWS = [
    # patient, modality, path, time, study
    ("001", "cxr", "img/p1_a.png", "2020-01-01T10:00:00", "S1"),
    ("001", "ecg", "ecg/p1_1.dat", "2020-01-01T20:00:00", ""),
    ("001", "ecg", "ecg/p1_2.dat", "2020-01-03T10:00:00", ""),
    ("001", "report", "rep/p1.txt", "2020-01-05T00:00:00", "S1"),
    ("001", "cxr", "img/p1_b.png", "2020-01-02T09:00:00", "S2"),
    ("002", "cxr", "img/p2.png", "2020-02-01T00:00:00", ""),
    ("002", "ecg", "ecg/p2_before.dat", "2020-01-31T22:00:00", ""),
    ("002", "ecg", "ecg/p2_after.dat", "2020-02-01T02:00:00", ""),
    ("002", "report", "rep/p2.txt", "2020-02-02T00:00:00", ""),
    ("003", "cxr", "img/p3.png", "2020-03-01", ""),
    ("003", "ecg", "ecg/p3.dat", "2020-03-02T00:00:01", ""),
    ("003", "pathology", "wsi/p3.svs", "", ""),
]


def _write(root, rows=ROWS, name="manifest.csv", header="patient_id,modality,path,time,study_id"):
    root.mkdir(parents=True, exist_ok=True)
    for r in rows:
        f = root / r[2]
        if not r[2].startswith("/") and ".." not in r[2]:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch()
    lines = [header] + [",".join(r) for r in rows]
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


@pytest.fixture
def manifest(tmp_path):
    return _write(tmp_path / "cohort")


def test_exact_pairs_and_masks(manifest):
    root = manifest.parent
    out = pair_cohort(manifest)
    assert len(out) == 4  # one row per chest X-ray, none dropped
    assert out.columns.tolist() == [
        "patient_id",
        "study_id",
        "time",
        "path_cxr",
        "time_cxr",
        "mask_cxr",
        "path_ecg",
        "time_ecg",
        "mask_ecg",
        "path_report",
        "time_report",
        "mask_report",
    ]
    assert out["patient_id"].tolist() == ["001", "001", "002", "003"]  # zeros kept
    assert out["path_cxr"].tolist() == [
        str(root / p) for p in ("img/p1_a.png", "img/p1_b.png", "img/p2.png", "img/p3.png")
    ]
    # p1_a: ECG 10 h later; p1_b: the same ECG 13 h earlier beats one 25 h later (out of window)
    # p2: ECGs 2 h before and 2 h after -> the earlier; p3: ECG 24 h + 1 s later -> none
    assert out["path_ecg"].tolist() == [
        str(root / "ecg/p1_1.dat"),
        str(root / "ecg/p1_1.dat"),
        str(root / "ecg/p2_before.dat"),
        None,
    ]
    assert out["mask_ecg"].tolist() == [True, True, True, False]
    # p1_a: the report of study S1 (4 days later); p2: report exactly 24 h later (edge included)
    assert out["path_report"].tolist() == [
        str(root / "rep/p1.txt"),
        None,
        str(root / "rep/p2.txt"),
        None,
    ]
    assert out["mask_report"].tolist() == [True, False, True, False]
    assert out["mask_cxr"].all()
    assert out["time"].iloc[3] == pd.Timestamp("2020-03-01")
    assert out["time_ecg"].iloc[2] == pd.Timestamp("2020-01-31T22:00:00")
    assert pd.isna(out["time_ecg"].iloc[3])
    assert out["study_id"].tolist() == ["S1", "S2", None, None]


def test_window_edges(manifest):
    root = manifest.parent
    wide = pair_cohort(manifest, window="24h 1s")
    assert wide["path_ecg"].iloc[3] == str(root / "ecg/p3.dat")
    narrow = pair_cohort(manifest, window="2h")
    assert narrow["mask_ecg"].tolist() == [False, False, True, False]
    assert narrow["mask_report"].tolist() == [True, False, False, False]  # study S1 still pairs
    unlimited = pair_cohort(manifest, window=None)
    assert unlimited["mask_ecg"].all() and unlimited["mask_report"].tolist() == [
        True,
        True,
        True,
        False,
    ]


def test_other_anchor_and_modalities(manifest):
    out = pair_cohort(manifest, anchor="ecg", modalities=("cxr", "pathology"))
    assert len(out) == 5
    assert [c for c in out.columns if c.startswith("mask_")] == [
        "mask_ecg",
        "mask_cxr",
        "mask_pathology",
    ]
    assert not out["mask_pathology"].any()  # the slide has no time: no time pairing


def test_parquet_and_dataframe_manifests(manifest, tmp_path):
    ref = pair_cohort(manifest)
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    pq = manifest.with_suffix(".parquet")
    df.to_parquet(pq)
    pd.testing.assert_frame_equal(pair_cohort(pq), ref)
    pd.testing.assert_frame_equal(pair_cohort(df, root=manifest.parent), ref)


def test_no_time_column_pairs_first_record_of_patient(tmp_path):
    rows = [r[:3] for r in ROWS]
    m = _write(tmp_path / "c", rows, header="patient_id,modality,path")
    out = pair_cohort(m)
    assert out["mask_ecg"].all()
    assert [p.rsplit("/", 1)[1] for p in out["path_ecg"]] == [
        "p1_1.dat",
        "p1_1.dat",
        "p2_before.dat",
        "p3.dat",
    ]


@pytest.mark.parametrize("bad", ["../outside.png", "img/../../outside.png"])
def test_path_escaping_root_is_refused(tmp_path, bad):
    (tmp_path / "outside.png").touch()
    rows = [*ROWS[:2], ("001", "cxr", bad, "2020-01-01", "")]
    m = _write(tmp_path / "cohort", rows)
    with pytest.raises(CohortError) as e:
        pair_cohort(m)
    msg = str(e.value)
    assert "manifest.csv: row 2 (line 4)" in msg and bad in msg and "outside the root" in msg


def test_absolute_and_symlinked_paths(tmp_path):
    outside = tmp_path / "elsewhere" / "x.png"
    outside.parent.mkdir()
    outside.touch()
    root = tmp_path / "cohort"
    inside = root / "img" / "ok.png"
    _write(root, ROWS[:1])
    inside.touch()
    m = _write(root, [("001", "cxr", str(inside), "2020-01-01", "")])
    assert pair_cohort(m)["path_cxr"].tolist() == [str(inside)]
    m = _write(root, [("001", "cxr", str(outside), "2020-01-01", "")])
    with pytest.raises(CohortError, match="row 0"):
        pair_cohort(m)
    os.symlink(outside, root / "img" / "link.png")
    m = _write(root, [("001", "cxr", "img/link.png", "2020-01-01", "")])
    with pytest.raises(CohortError, match="outside the root"):
        pair_cohort(m)


def test_validation_errors_name_file_column_and_fix(tmp_path):
    m = _write(tmp_path / "a", [r[:3] for r in ROWS[:2]], header="patient_id,kind,path")
    with pytest.raises(CohortError) as e:
        pair_cohort(m)
    msg = str(e.value)
    assert "manifest.csv" in msg and "missing column(s) modality" in msg and "kind" in msg
    rows = [*ROWS[:2], ("001", "ecg", "ecg/p1_2.dat", "2020-13-45T10:00", "")]
    m = _write(tmp_path / "b", rows)
    with pytest.raises(CohortError) as e:
        pair_cohort(m)
    msg = str(e.value)
    assert "column 'time'" in msg and "row 2 (line 4)" in msg and "'2020-13-45T10:00'" in msg
    rows = [*ROWS[:1], ("001", "ecg", "ecg/p1_1.dat", "2020-01-01T20:00:00+01:00", "")]
    m = _write(tmp_path / "c", rows)
    with pytest.raises(CohortError, match="mixes times with a UTC offset"):
        pair_cohort(m)
    with pytest.raises(ConfigError, match="window='one day'"):
        pair_cohort(_write(tmp_path / "d"), window="one day")
    m = _write(tmp_path / "e", ROWS[:2])
    (tmp_path / "e" / "ecg" / "p1_1.dat").unlink()
    with pytest.raises(FileNotFoundError, match="row 1"):
        pair_cohort(m)
    assert not pair_cohort(m, check_exists=False)["mask_report"].any()
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        read_manifest(tmp_path / "nothing.csv")


def test_times_with_offsets_are_compared_in_utc(tmp_path):
    rows = [
        ("001", "cxr", "a.png", "2020-01-01T10:00:00+01:00", ""),  # 09:00 UTC
        ("001", "ecg", "b.dat", "2020-01-02T09:00:00Z", ""),  # exactly 24 h later
    ]
    out = pair_cohort(_write(tmp_path / "tz", rows))
    assert out["mask_ecg"].tolist() == [True]
    assert out["time"].iloc[0] == pd.Timestamp("2020-01-01T09:00:00Z")
