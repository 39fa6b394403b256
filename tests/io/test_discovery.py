"""Finding slide files, naming their outputs and identifying them between runs."""

from __future__ import annotations

import os

from histoxmodal.io.discovery import find_slides, output_name, slide_identity


def test_folders_expand_to_sorted_slides_with_one_file_per_dicom_series(data_dir, tmp_path):
    fx = data_dir / "wsi" / "openslide-fixtures"
    slides, missing = find_slides([fx, fx / "boxes_1.dcm", tmp_path / "gone.svs"])
    assert [p.name for p in slides] == ["boxes.tiff", "boxes_0.dcm", "small.svs"]
    assert missing == [tmp_path / "gone.svs"]


def test_output_names_and_identity(tmp_path):
    assert output_name("x.ome.tif") == "x" and output_name("..svs") == "slide"
    f = tmp_path / "a.svs"
    f.write_bytes(b"12345")
    link = tmp_path / "b.svs"
    link.symlink_to(f)
    ident = slide_identity(link)
    assert ident["path"] == str(link) and ident["resolved"] == str(f.resolve())
    assert ident["size"] == 5 and ident["mtime_ns"] == os.stat(f).st_mtime_ns
