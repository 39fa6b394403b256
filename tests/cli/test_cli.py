"""The command line: exit codes, summaries, clean one-line errors, fast start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from histoxmodal.cli.main import main


def test_tile_ok_and_summary(cmu_svs, tmp_path, capsys):
    rc = main(
        [
            "tile",
            str(cmu_svs),
            "--out",
            str(tmp_path),
            "--tile-px",
            "256",
            "--mpp-target",
            "1.0",
            "--min-tissue",
            "0.25",
            "--save-tiles",
        ]
    )
    cap = capsys.readouterr()
    out = cap.out
    assert rc == 0, cap.err
    assert "CMU-1-Small-Region" in out and "ok" in out and "1 slides: 1 ok" in out
    m = json.loads((tmp_path / "CMU-1-Small-Region" / "manifest.json").read_text())
    assert m["tile_px"] == 256 and m["target_mpp"] == 1.0 and m["min_tissue"] == 0.25
    assert m["tile_px_level0"] == round(256 * 1.0 / 0.499)
    assert (tmp_path / "CMU-1-Small-Region" / "tiles.h5").exists()
    rc = main(
        [
            "tile",
            str(cmu_svs),
            "--out",
            str(tmp_path),
            "--tile-px",
            "256",
            "--mpp-target",
            "1.0",
            "--min-tissue",
            "0.25",
            "--save-tiles",
        ]
    )
    assert rc == 0 and "1 skipped" in capsys.readouterr().out


def test_failed_slide_gives_exit_1_without_traceback(cmu_svs, tmp_path, capsys):
    bad = tmp_path / "bad.svs"
    bad.write_text("hello")
    rc = main(["tile", str(bad), str(cmu_svs), "--out", str(tmp_path / "o")])
    cap = capsys.readouterr()
    assert rc == 1
    assert "failed: bad:" in cap.out and "1 ok" in cap.out
    assert "Traceback" not in cap.out + cap.err


def test_mpp_flags(data_dir, tmp_path, capsys):
    jpeg = data_dir / "her2st" / "images" / "C3.jpg"
    assert main(["tile", str(jpeg), "--out", str(tmp_path)]) == 1
    assert "--mpp" in capsys.readouterr().out
    boxes = data_dir / "wsi" / "openslide-fixtures" / "boxes.tiff"
    assert main(["tile", str(boxes), "--out", str(tmp_path), "--min-tissue", "0"]) == 1
    assert "implausible" in capsys.readouterr().out
    rc = main(
        [
            "tile",
            str(boxes),
            "--out",
            str(tmp_path),
            "--allow-implausible-mpp",
            "--mpp-target",
            "400",
            "--tile-px",
            "16",
            "--min-tissue",
            "0",
        ]
    )
    assert rc == 0
    m = json.loads((tmp_path / "boxes" / "manifest.json").read_text())
    assert m["status"] in ("ok", "empty") and m["mpp"] == pytest.approx(352.78, rel=1e-3)


def test_usage_errors_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["tile", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no slides found" in err and "Traceback" not in err
    assert main(["tile", str(empty), "--out", "o", "--shard", "3/2"]) == 2
    assert "K counts from 0" in capsys.readouterr().err
    assert main(["tile", str(empty), "--out", "o", "--overlap", "300"]) == 2
    assert "overlap_px=300" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["tile", "--out", "o"])
    assert e.value.code == 2


def test_import_and_help_are_light():
    code = (
        "import sys, histoxmodal, histoxmodal.cli.main as m;"
        "heavy = [k for k in ('openslide', 'cv2', 'h5py', 'tifffile', 'torch', 'PIL')"
        " if k in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    res = subprocess.run(
        [sys.executable, "-m", "histoxmodal.cli.main", "tile", "--help"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and "--mpp-target" in res.stdout and "--shard" in res.stdout


def test_lazy_public_api():
    import histoxmodal
    from histoxmodal.data.store import load_paired
    from histoxmodal.io.spatial import read_spatial

    assert histoxmodal.TileSpec().tile_px == 224
    assert histoxmodal.read_spatial is read_spatial and histoxmodal.load_paired is load_paired
    assert set(histoxmodal.__all__) <= set(dir(histoxmodal))
    with pytest.raises(AttributeError):
        histoxmodal.not_a_name  # noqa: B018


def test_build_her2st_from_the_command_line(data_dir, tmp_path, capsys):
    out = tmp_path / "ds"
    args = [
        "build",
        "--recipe",
        "her2st",
        "--src",
        str(data_dir / "her2st"),
        "--out",
        str(out),
        "--patch-px",
        "32",
        "--min-counts",
        "0",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "skipped 30" in text and "built: 1015 spots" in text
    assert main(args) == 0 and "up to date" in capsys.readouterr().out
    assert main(["build", "--recipe", "visum", "--src", "x", "--out", "y"]) == 2
    assert "Did you mean 'visium'" in capsys.readouterr().err
    assert main(["build", "--list"]) == 0
    assert "her2st" in capsys.readouterr().out


def test_batch_sizes_and_node_counts_must_be_positive(capsys):
    for argv in (
        ["embed", "run", "data", "--out", "e.h5ad", "--batch-size", "0"],
        ["evaluate", "run", "data", "--out", "ev", "--in-batch-size", "-3"],
        ["train", "cfg", "--out", "r", "--num-nodes", "abc"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert ">= 1" in err and "Traceback" not in err


BUILD = ["build", "--recipe", "her2st", "--src", "s", "--out", "o"]
PREDICT = ["predict", "run", "s.svs", "--out", "o"]
MIL = ["mil", "train", "f", "--labels", "l", "--target", "t", "--out", "o"]


@pytest.mark.parametrize(
    ("argv", "option", "needle"),
    [
        ([*BUILD, "--mpp", "0"], "--mpp", "> 0"),
        ([*BUILD, "--mpp", "-1"], "--mpp", "> 0"),
        ([*BUILD, "--mpp", "nan"], "--mpp", "> 0"),
        (["tile", "s.svs", "--out", "o", "--mpp-target", "0"], "--mpp-target", "> 0"),
        (["tile", "s.svs", "--out", "o", "--mpp-target", "-0.5"], "--mpp-target", "> 0"),
        (["tile", "s.svs", "--out", "o", "--tile-um", "0"], "--tile-um", "> 0"),
        (["tile", "s.svs", "--out", "o", "--mpp", "0"], "--mpp", "> 0"),
        (["tile", "s.svs", "--out", "o", "--min-tissue", "2"], "--min-tissue", "[0, 1]"),
        ([*PREDICT, "--mpp", "0"], "--mpp", "> 0"),
        ([*PREDICT, "--grid-um", "-5"], "--grid-um", "> 0"),
        ([*PREDICT, "--min-tissue", "-1"], "--min-tissue", "[0, 1]"),
        ([*PREDICT, "--min-tissue", "5"], "--min-tissue", "[0, 1]"),
        ([*MIL, "--lr", "0"], "--lr", "(0, 1)"),
        ([*MIL, "--lr", "1e9"], "--lr", "(0, 1)"),
        ([*MIL, "--seeds", "-1"], "--seeds", "[0, 4294967295]"),
        ([*MIL, "--seeds", "4294967296"], "--seeds", "[0, 4294967295]"),
    ],
)
def test_numbers_that_make_no_sense_are_usage_errors(
    tmp_path, monkeypatch, capsys, argv, option, needle
):
    """``build --mpp 0`` was silently ignored, ``tile --mpp-target 0`` and ``predict
    --min-tissue 5`` were accepted (issue 26, item 9): argparse refuses them, naming the option
    and the allowed range, before anything runs."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {option}" in err and needle in err, err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
