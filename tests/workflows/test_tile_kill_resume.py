"""A tiling run killed (SIGKILL, SIGTERM, Ctrl-C) leaves nothing that looks finished and no
process behind, and a rerun completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from histoxmodal.cli.main import main
from histoxmodal.testing import make_synthetic_slide


def _tile_args(slides, out, *extra):
    return ["tile", *map(str, slides), "--out", str(out), "--tile-px", "32", "--mpp-target",
            "0.25", "--min-tissue", "0", "--save-tiles", *extra]  # fmt: skip


def _start(args):
    return subprocess.Popen(
        [sys.executable, "-m", "histoxmodal.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(pred, proc, seconds=90):
    deadline = time.monotonic() + seconds
    while not pred():
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def three_slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("three")
    return [
        make_synthetic_slide(d / f"s{i}.tif", width=4096, height=3072, seed=i).path
        for i in range(3)
    ]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_pool_workers_die_with_the_parent_and_a_rerun_resumes(three_slides, tmp_path, sig):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "out"
    args = _tile_args(three_slides, out, "--workers", "2")
    proc = _start(args)
    parent = psutil.Process(proc.pid)
    _wait_for(lambda: len(list(out.glob(".s*.partial-*"))) >= 2, proc)
    children = parent.children(recursive=True)
    assert len(children) >= 2  # the pool's workers (and multiprocessing's resource tracker)
    os.kill(proc.pid, sig)
    rc = proc.wait(timeout=60)
    _, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [], f"workers left running after {sig.name}: {alive}"
    if sig == signal.SIGTERM:
        assert rc == 128 + signal.SIGTERM  # stopped as an interruption, not a crash
        assert "interrupted (SIGTERM)" in proc.stderr.read()
        # the parent removed the staging folders of the slides in progress
        assert not list(out.glob(".s*.partial-*"))
    for folder in out.glob("s*"):  # whatever is there looks finished and is finished
        assert json.loads((folder / "manifest.json").read_text())["status"] == "ok"
    assert main(args) == 0
    for i in range(3):
        m = json.loads((out / f"s{i}" / "manifest.json").read_text())
        assert m["status"] == "ok" and m["n_tiles"] == (4096 // 32) * (3072 // 32)
    assert sorted(p.name for p in out.iterdir()) == [".locks", "s0", "s1", "s2"]


def test_ctrl_c_stops_the_run_with_exit_130_and_keeps_finished_slides(three_slides, tmp_path):
    out = tmp_path / "out"
    proc = _start(_tile_args(three_slides, out))
    _wait_for(lambda: (out / "s0" / "manifest.json").exists() and list(out.glob(".s1.part*")), proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "interrupted (SIGINT)" in proc.stderr.read()
    # s0 finished and is kept; s1 was in progress and left nothing (not 'failed'); s2 never began
    assert sorted(p.name for p in out.iterdir()) == [".locks", "s0"]
    assert json.loads((out / "s0" / "manifest.json").read_text())["status"] == "ok"
