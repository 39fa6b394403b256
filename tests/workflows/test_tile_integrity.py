"""Tiling never keeps another slide's tiles, never writes outside a slide's folder, leaves only
a manifest when a slide fails, and refuses bad outputs and oversized tiles in one line."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from histoxmodal.cli.main import main
from histoxmodal.errors import ConfigError
from histoxmodal.io.discovery import output_name
from histoxmodal.testing import make_synthetic_slide
from histoxmodal.tiling.spec import TileSpec
from histoxmodal.workflows import job_control
from histoxmodal.workflows.tile import tile_slide, tile_slides

SPEC = TileSpec(tile_px=64, target_mpp=1.0, min_tissue=0.0)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Two different small slides (different sizes, so different tile counts)."""
    d = tmp_path_factory.mktemp("slides")
    a = make_synthetic_slide(d / "a.tif", width=2048, height=1536, seed=1, min_level_size=256)
    b = make_synthetic_slide(d / "b.tif", width=1536, height=1024, seed=2, min_level_size=256)
    return a.path, b.path


def _tiles(n_w: int, n_h: int) -> int:
    return n_w * n_h


def test_a_different_slide_under_the_same_name_is_refused_not_skipped(slides, tmp_path):
    a, b = slides
    first, second = tmp_path / "run1" / "s.tif", tmp_path / "run2" / "s.tif"
    first.parent.mkdir()
    second.parent.mkdir()
    shutil.copy(a, first)
    shutil.copy(b, second)
    out = tmp_path / "out"
    r = tile_slide(first, out, SPEC)
    assert r.status == "ok" and r.n_tiles == _tiles(2048 // 256, 1536 // 256)
    m = json.loads((out / "s" / "manifest.json").read_text())
    assert m["source"]["path"] == str(first) and m["source"]["size"] == first.stat().st_size
    # the same file again: skipped
    assert tile_slide(first, out, SPEC).status == "skipped"
    # another file of the same name: refused, the first slide's tiles kept
    r = tile_slide(second, out, SPEC)
    assert r.status == "failed" and "another slide" in r.reason and "--overwrite" in r.reason
    assert json.loads((out / "s" / "manifest.json").read_text())["n_tiles"] == 48
    # the first file, changed since (same path, new mtime): refused too
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    assert tile_slide(first, out, SPEC).status == "failed"
    # through the CLI: exit 1, and --overwrite replaces it with the new slide's tiles
    args = ["tile", str(second), "--out", str(out), "--tile-px", "64", "--mpp-target", "1"]
    args += ["--min-tissue", "0"]
    assert main(args) == 1
    assert main([*args, "--overwrite"]) == 0
    m = json.loads((out / "s" / "manifest.json").read_text())
    assert m["n_tiles"] == _tiles(1536 // 256, 1024 // 256) and m["source"]["path"] == str(second)


def test_output_names_are_safe_and_stay_inside_out(slides, tmp_path):
    assert output_name("..svs") == "slide"
    assert output_name("/x/.hidden.svs") == "hidden"
    assert output_name("a\nb.ome.tif") == "a_b"
    assert output_name("case 1.svs") == "case 1"
    a, _ = slides
    out = tmp_path / "out"
    assert tile_slide(a, out, SPEC).status == "ok"
    dots = tmp_path / "..tif"
    shutil.copy(a, dots)
    r = tile_slide(dots, out, SPEC)
    assert r.status == "ok" and r.name == "slide"
    # the earlier slide's output is untouched; nothing was written beside out
    assert sorted(p.name for p in out.iterdir()) == [".locks", "a", "slide"]
    assert json.loads((out / "a" / "manifest.json").read_text())["status"] == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["..tif", "out"]
    # a name given explicitly is made safe the same way
    assert tile_slide(a, out, SPEC, name="../escape").name == "_escape"
    assert not (tmp_path / "escape").exists()


def test_symlinks_are_named_after_the_path_given(slides, tmp_path):
    a, _ = slides
    links = tmp_path / "links"
    links.mkdir()
    for i in range(3):
        (links / f"case{i}.tif").symlink_to(a)
    results = tile_slides([links], tmp_path / "out", SPEC)
    assert [r.name for r in results] == ["case0", "case1", "case2"]
    assert all(r.status == "ok" and r.n_tiles == 48 for r in results)
    m = json.loads((tmp_path / "out" / "case1" / "manifest.json").read_text())
    assert m["source"]["path"] == str(links / "case1.tif")
    assert m["source"]["resolved"] == str(a.resolve())


def test_a_failed_slide_leaves_only_its_manifest(slides, tmp_path, monkeypatch):
    from histoxmodal.tiling import outputs

    real = outputs.write_tiles

    def full_disk(path, *args, **kwargs):
        path.write_bytes(b"\0" * 1000)  # a partly written file, as a full disk leaves it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(outputs, "write_tiles", full_disk)
    a, b = slides
    results = tile_slides([a, b], tmp_path / "out", SPEC, save_tiles=True)
    assert [r.status for r in results] == ["failed", "failed"]
    assert "No space left on device" in results[0].reason
    for name in ("a", "b"):
        folder = tmp_path / "out" / name
        assert [p.name for p in folder.iterdir()] == ["manifest.json"]
        m = json.loads((folder / "manifest.json").read_text())
        assert m["status"] == "failed" and "tiles.h5" in m["reason"]
    monkeypatch.setattr(outputs, "write_tiles", real)
    # the rerun redoes the failed slides
    results = tile_slides([a, b], tmp_path / "out", SPEC, save_tiles=True)
    assert [r.status for r in results] == ["ok", "ok"]
    assert (tmp_path / "out" / "a" / "tiles.h5").exists()


def test_out_must_be_a_writable_folder(slides, tmp_path, monkeypatch, capsys):
    a, _ = slides
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["tile", str(a), "--out", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a file; give a folder" in err
    with pytest.raises(ConfigError, match="cannot write there"):
        tile_slides([a], f / "sub", SPEC)

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(job_control.tempfile, "mkstemp", read_only)
    assert main(["tile", str(a), "--out", str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err
    assert "cannot write there (Permission denied); choose a writable folder" in err


def test_a_tile_larger_than_the_slide_says_so(slides, tmp_path, capsys):
    a, _ = slides
    args = ["tile", str(a), "--out", str(tmp_path / "out"), "--tile-px", "100000"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "larger than the slide (2048 x 1536 px)" in out and "no tissue" not in out


def test_a_swallowed_interrupt_stops_the_run(slides, tmp_path, monkeypatch):
    """A library that turns the KeyboardInterrupt into another error must not make the slide
    'failed' and the run go on."""
    import signal

    from histoxmodal.tiling import outputs

    def interrupted_in_a_library(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt as exc:
            raise OSError("HDF5: interrupted") from exc

    monkeypatch.setattr(outputs, "write_overlay", interrupted_in_a_library)
    a, b = slides
    with pytest.raises(KeyboardInterrupt):
        tile_slides([a, b], tmp_path / "out", SPEC)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".locks"]
    # the handlers are restored afterwards
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_bench_tiling_checks_the_slide_before_generating(tmp_path, monkeypatch, capsys):
    from histoxmodal.bench import tiling

    def no_generation(*args, **kwargs):
        raise AssertionError("slides were generated before the input was checked")

    monkeypatch.setattr(tiling, "_generate", no_generation)
    text = tmp_path / "text.svs"
    text.write_text("not a slide\n")
    assert main(["bench", "tiling", str(text)]) == 1  # not a slide: bad data
    err = capsys.readouterr().err.strip()
    assert err.startswith("histoxmodal: error: bench tiling:") and "text.svs" in err
    assert err.count("\n") == 0


def test_a_folder_named_like_the_slide_that_is_not_ours_is_never_replaced(slides, tmp_path):
    a, _ = slides
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        r = tile_slide(a, out, SPEC, overwrite=overwrite)
        assert r.status == "failed" and "did not write" in r.reason
        assert (out / "a" / "notes.txt").read_text() == "mine"
    (out / "a" / "notes.txt").unlink()  # an empty folder is free to use
    assert tile_slide(a, out, SPEC).status == "ok"
