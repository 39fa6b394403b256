"""A tiling run killed with SIGKILL leaves nothing that looks finished, and a rerun completes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from histoxmodal.cli.main import main
from histoxmodal.testing import make_synthetic_slide


def test_sigkill_mid_run_then_resume(tmp_path):
    slide = make_synthetic_slide(tmp_path / "s.tif", width=4096, height=3072, seed=5)
    out = tmp_path / "out"
    args = [
        "tile",
        str(slide.path),
        "--out",
        str(out),
        "--tile-px",
        "32",
        "--mpp-target",
        "0.25",
        "--min-tissue",
        "0",
        "--save-tiles",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "histoxmodal.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not list(out.glob(".s.partial-*")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    time.sleep(0.3)  # let it write some tiles
    proc.kill()
    proc.wait()
    manifest = out / "s" / "manifest.json"
    if manifest.exists():  # only if the run beat the kill: then it must be complete
        assert json.loads(manifest.read_text())["status"] == "ok"
    else:
        assert not (out / "s").exists()
    assert main(args) == 0
    m = json.loads(manifest.read_text())
    assert m["status"] == "ok" and m["n_tiles"] == (4096 // 32) * (3072 // 32)
    assert [p.name for p in out.iterdir()] == ["s"]  # staging folders cleaned up
