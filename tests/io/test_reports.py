"""Indiana University chest X-ray reports read from their archive; plain-text section splitting."""

from __future__ import annotations

import tarfile

import pytest

from histoxmodal.io.reports import COLUMNS, ReportReadError, read_reports, split_sections

pytest.importorskip("pandas")

FINDINGS_10 = (
    "The cardiomediastinal silhouette is within normal limits for size and contour. The lungs "
    "are normally inflated without evidence of focal airspace disease, pleural effusion, or "
    "pneumothorax. Stable calcified granuloma within the right upper lung. No acute bone "
    "abnormality.."
)


@pytest.fixture(scope="module")
def archive(data_dir):
    return data_dir / "cxr" / "NLMCXR_reports.tgz"


@pytest.fixture(scope="module")
def reports(archive):
    return read_reports(archive)


def test_all_reports_from_the_archive(reports):
    assert len(reports) == 3955
    assert tuple(reports.columns[: len(COLUMNS)]) == COLUMNS
    assert reports["report_id"].is_unique
    assert reports["report_id"].iloc[:3].tolist() == ["CXR1", "CXR2", "CXR3"]  # number order
    assert reports["patient_id"].isna().all()
    assert reports["findings"].isna().sum() == 530  # <AbstractText Label="FINDINGS"/>
    assert reports["impression"].notna().sum() == 3921


def test_known_reports_equal_their_xml(reports):
    r = reports.set_index("report_id")
    one = r.loc["CXR10"]
    assert one["comparison"] == "Chest radiographs XXXX."
    assert one["indication"] == "XXXX-year-old male, chest pain."
    assert one["findings"] == FINDINGS_10
    assert one["impression"] == "No acute cardiopulmonary process."
    assert one["image_ids"] == ["CXR10_IM-0002-1001", "CXR10_IM-0002-2001"]
    assert one["source"] == "10.xml"
    assert one["text"] == (
        "COMPARISON: Chest radiographs XXXX.\nINDICATION: XXXX-year-old male, chest pain.\n"
        f"FINDINGS: {FINDINGS_10}\nIMPRESSION: No acute cardiopulmonary process."
    )
    last = r.loc["CXR3955"]
    assert last["findings"] is None
    assert last["impression"] == (
        "1. Chest. No visible active cardiopulmonary disease. 2. Left hip. Advanced "
        "posttraumatic osteoarthritis."
    )
    assert last["image_ids"] == [
        "CXR3955_IM-2021-1001",
        "CXR3955_IM-2021-1002",
        "CXR3955_IM-2021-1003",
    ]
    assert r.loc["CXR1", "mesh"] == ["normal"]


def test_folder_of_xml_matches_the_archive(archive, reports, tmp_path):
    with tarfile.open(archive) as tf:
        for n in ("1", "10", "3955"):
            data = tf.extractfile(f"ecgen-radiology/{n}.xml").read()
            (tmp_path / f"{n}.xml").write_bytes(data)
    folder = read_reports(tmp_path)
    assert folder["report_id"].tolist() == ["CXR1", "CXR10", "CXR3955"]
    ref = reports.set_index("report_id").loc[folder["report_id"]]
    for col in ("findings", "impression", "indication", "comparison", "text"):
        assert folder[col].tolist() == ref[col].tolist()
    single = read_reports(tmp_path / "10.xml")
    assert len(single) == 1 and single["findings"].iloc[0] == FINDINGS_10


PLAIN = """EXAMINATION: Chest PA and lateral.
Indication: 60-year-old woman with cough.
Comparison: None.
TECHNIQUE: Two views.
FINDINGS: The heart is normal in size. No focal consolidation.
No pleural effusion. IMPRESSION: No acute cardiopulmonary abnormality.
"""


def test_split_sections_plain_text():
    s = split_sections(PLAIN)
    assert s == {
        "preamble": "EXAMINATION: Chest PA and lateral.",
        "indication": "60-year-old woman with cough.",
        "comparison": "None.",
        "technique": "Two views.",
        "findings": "The heart is normal in size. No focal consolidation.\nNo pleural effusion.",
        "impression": "No acute cardiopulmonary abnormality.",
    }
    assert split_sections("clinical history: fever\nhistory: more") == {"history": "fever\nmore"}
    # a heading word inside a sentence is not a heading
    assert split_sections("There are no findings: stable.") == {
        "preamble": "There are no findings: stable."
    }


def test_plain_text_report_file(tmp_path):
    (tmp_path / "r1.txt").write_text(PLAIN)
    df = read_reports(tmp_path / "r1.txt")
    row = df.iloc[0]
    assert row["report_id"] == "r1" and row["image_ids"] == []
    assert row["impression"] == "No acute cardiopulmonary abnormality."
    assert row["technique"] == "Two views." and row["text"] == PLAIN.strip()


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.tgz"):
        read_reports(tmp_path / "nothing.tgz")
    (tmp_path / "broken.xml").write_text("<eCitation><uId id='x'></eCitation")
    with pytest.raises(ReportReadError, match="broken.xml"):
        read_reports(tmp_path / "broken.xml")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportReadError, match="no reports found"):
        read_reports(empty)
    (tmp_path / "junk.tgz").write_bytes(b"not an archive")
    with pytest.raises(ReportReadError, match="junk.tgz"):
        read_reports(tmp_path / "junk.tgz")
