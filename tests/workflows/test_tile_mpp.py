"""``tile --mpp`` fills in slides without a pixel size; ``--mpp-override``; ``--mpp-csv``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoxmodal.cli.main import main


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory):
    """A pyramidal TIFF at 0.25 µm/px (metadata) and a PNG without a pixel size."""
    pytest.importorskip("tifffile")
    from PIL import Image

    from histoxmodal.io.slide import open_slide
    from histoxmodal.testing import make_synthetic_slide

    root = tmp_path_factory.mktemp("mpp")
    tif = make_synthetic_slide(
        root / "with_meta.tif", width=1536, height=1024, mpp=0.25, level_downsample=2,
        min_level_size=256, n_sections=1, seed=1,
    ).path  # fmt: skip
    with open_slide(tif) as s:
        assert s.mpp_info.source == "metadata"
        pixels = s.read_region((0, 0), 0, (1536, 1024))
    png = root / "no_meta.png"
    Image.fromarray(np.asarray(pixels)).save(png)
    return root, tif, png


def _manifest(out, name):
    return json.loads((out / name / "manifest.json").read_text())


def _tile(slides, out, *flags):
    argv = ["tile", *map(str, slides), "--out", str(out), "--min-tissue", "0", "--tile-px", "64"]
    return main([*argv, *flags])


def test_mpp_fills_in_only_slides_without_metadata(two_slides, tmp_path, capsys):
    _, tif, png = two_slides
    assert _tile([tif, png], tmp_path / "fill", "--mpp", "0.5") == 0
    meta, plain = _manifest(tmp_path / "fill", "with_meta"), _manifest(tmp_path / "fill", "no_meta")
    assert meta["mpp"] == pytest.approx(0.25) and meta["mpp_source"] == "metadata"
    assert plain["mpp"] == 0.5 and plain["mpp_source"] == "user"
    assert plain["mpp_detail"] == "--mpp (the file has no pixel size)"
    assert plain["params"]["mpp"] == {"default": 0.5, "override": False}
    # --mpp-override: every slide, metadata still recorded beside
    assert _tile([tif, png], tmp_path / "over", "--mpp", "0.5", "--mpp-override") == 0
    meta = _manifest(tmp_path / "over", "with_meta")
    assert meta["mpp"] == 0.5 and meta["mpp_source"] == "user"
    assert meta["mpp_detail"] == "--mpp with --mpp-override"
    assert meta["metadata_mpp"] == pytest.approx(0.25)
    assert _tile([png], tmp_path / "x", "--mpp-override") == 2
    assert "--mpp-override needs --mpp" in capsys.readouterr().err


def test_mpp_csv_names_slides_over_their_metadata(two_slides, tmp_path, capsys):
    _, tif, png = two_slides
    table = tmp_path / "mpp.csv"
    table.write_text("slide,mpp,comment\nwith_meta.tif,0.3,rescanned\n")
    assert _tile([tif, png], tmp_path / "csv", "--mpp-csv", str(table), "--mpp", "0.5") == 0
    meta, plain = _manifest(tmp_path / "csv", "with_meta"), _manifest(tmp_path / "csv", "no_meta")
    assert meta["mpp"] == 0.3 and meta["mpp_source"] == "user"
    assert meta["mpp_detail"] == f"--mpp-csv {table} line 2"
    assert meta["params"]["mpp"]["csv"]["path"] == str(table)
    assert plain["mpp"] == 0.5  # not in the CSV: the --mpp fallback
    # a stem works too, and without --mpp a slide missing from the CSV keeps failing clearly
    table.write_text("slide,mpp\nno_meta,1.0\n")
    assert _tile([png], tmp_path / "stem", "--mpp-csv", str(table)) == 0
    assert _manifest(tmp_path / "stem", "no_meta")["mpp"] == 1.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name,mpp\na.svs,0.25\n", "line 1: no column slide"),
        ("slide,mpp\na.svs,0.25\nb.svs,abc\n", "line 3: mpp 'abc' of b.svs is not a positive"),
        ("slide,mpp\na.svs,-1\n", "line 2: mpp '-1' of a.svs"),
        ("slide,mpp\na.svs,0.25\na.svs,0.5\n", "line 3: a.svs is listed twice (first on line 2)"),
        ("slide,mpp\n,0.25\n", "line 2: the slide column is empty"),
        ("slide,mpp\n", "no rows under the header"),
    ],
)
def test_a_bad_mpp_csv_is_one_line_naming_the_file_and_line(
    two_slides, tmp_path, capsys, text, needle
):
    _, _, png = two_slides
    table = tmp_path / "bad.csv"
    table.write_text(text)
    assert _tile([png], tmp_path / "o", "--mpp-csv", str(table)) == 1  # bad data
    err = capsys.readouterr().err
    assert err.startswith(f"histoxmodal: error: --mpp-csv {table.resolve()}") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "no_meta").exists()


def test_a_missing_mpp_csv(tmp_path, capsys, two_slides):
    _, _, png = two_slides
    assert _tile([png], tmp_path / "o", "--mpp-csv", str(tmp_path / "nope.csv")) == 2
    assert "nope.csv: file not found" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["0", "-0.5", "nan", "inf", "abc"])
def test_a_non_positive_mpp_target_is_a_usage_error(two_slides, tmp_path, capsys, target):
    _, tif, _ = two_slides
    with pytest.raises(SystemExit) as e:
        _tile([tif], tmp_path / "o", "--mpp-target", target)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--mpp-target" in err and "> 0" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_upsampling_beyond_the_slide_needs_allow_upsample(two_slides, tmp_path, capsys):
    """``--mpp-target 0.0001`` on a 0.25 µm/px slide wrote millions of one-pixel tiles with
    exit 0 (issue 26, item 9); more than 2x finer than the slide now fails the slide."""
    _, tif, _ = two_slides
    # 0.1 µm/px is 2.5x finer than 0.25: refused; exactly 2x (0.125) is still plain tiling
    assert _tile([tif], tmp_path / "fine", "--mpp-target", "0.1") == 1
    assert "2.5x finer" in capsys.readouterr().out
    assert _tile([tif], tmp_path / "ok", "--mpp-target", "0.125") == 0
    capsys.readouterr()
    assert _tile([tif], tmp_path / "tiny", "--mpp-target", "0.0001") == 1
    out = capsys.readouterr().out
    assert "failed: with_meta: tiles at 0.0001 µm/px" in out
    assert "--mpp-target >= 0.125" in out and "--allow-upsample" in out
    m = _manifest(tmp_path / "tiny", "with_meta")
    assert m["status"] == "failed" and not (tmp_path / "tiny" / "with_meta" / "coords.h5").exists()
    # the flag lets a user upsample on purpose
    assert _tile([tif], tmp_path / "fine", "--mpp-target", "0.1", "--allow-upsample") == 0
    m = _manifest(tmp_path / "fine", "with_meta")
    assert m["status"] == "ok" and m["target_mpp"] == 0.1


def test_upsampling_check_in_the_library(two_slides, tmp_path):
    from histoxmodal.tiling.spec import TileSpec
    from histoxmodal.workflows.tile import tile_slide

    _, tif, _ = two_slides
    spec = TileSpec(tile_px=64, target_mpp=0.05, min_tissue=0.0)
    r = tile_slide(tif, tmp_path, spec)
    assert r.failed and "5x finer than the slide's own 0.25 µm/px" in r.reason
