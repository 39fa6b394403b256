"""The batch-job protocol every slide command shares (:mod:`histoxmodal.workflows.jobs`): resume,
``kill -9`` then resume, shards, locks and bad slides, run against ``tile``, ``features`` and
``predict`` through the command line, one fixture per command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from histoxmodal.cli.main import main
from histoxmodal.errors import ConfigError
from histoxmodal.testing import make_synthetic_slide
from histoxmodal.workflows.jobs import parse_shard

ENV = {**os.environ, "HISTOXMODAL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


@dataclass
class Command:
    """How one command is called and where it leaves one slide's output and record."""

    name: str
    head: list[str]  # the arguments before the slides
    tail: list[str]  # the options after them
    suffix: str = ""  # the output's suffix: "" for a folder per slide
    lock_suffix: str = ""

    def argv(self, slides, out: Path, *extra: str) -> list[str]:
        return [*self.head, *map(str, slides), "--out", str(out), *self.tail, *extra]

    def output(self, out: Path, name: str) -> Path:
        return out / f"{name}{self.suffix}"

    def record(self, out: Path, name: str) -> dict | None:
        path = out / f"{name}.json" if self.suffix else out / name / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None

    def staging(self, out: Path, name: str) -> list[Path]:
        return list(out.glob(f".{name}{self.suffix}.partial-*"))


TINY_RUN = {
    "genes": None,
    "model": {"image_encoder": "test_image_resnet", "gene_encoder": "test_gene_mlp"},
    "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A spatial run with a saved expression head (16 µm patches of 32 px), for ``predict``."""
    pytest.importorskip("lightning")
    from histoxmodal.testing.paired import make_paired_dataset
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.train import train

    tmp = tmp_path_factory.mktemp("run")
    data = make_paired_dataset(tmp / "data", spots_per_sample=32, n_states=3)
    return train(config_from_dict(TINY_RUN), tmp / "run", data=data, accelerator="cpu", devices=1)


@pytest.fixture(params=["tile", "features", "predict"])
def command(request) -> Command:
    if request.param == "tile":
        tail = ["--tile-px", "32", "--mpp-target", "0.5", "--min-tissue", "0", "--save-tiles"]
        return Command("tile", ["tile"], tail)
    pytest.importorskip("torch")
    if request.param == "features":
        tail = ["--encoder", "test_uni", "--workers", "1", "--min-tissue", "0"]
        return Command("features", ["features"], tail, ".h5", ".features")
    run = request.getfixturevalue("tiny_run")
    return Command(
        "predict",
        ["predict", str(run.path)],
        ["--grid-um", "16", "--min-tissue", "0"],
        "",
        ".predict",
    )


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    """Four small synthetic slides (1024 x 768 px at 0.25 µm/px)."""
    d = tmp_path_factory.mktemp("slides")
    return [
        make_synthetic_slide(d / f"s{i}.tif", width=1024, height=768, seed=i,
                             min_level_size=256).path
        for i in range(4)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory) -> Path:
    """A slide large enough that a run can be killed while it works on it."""
    d = tmp_path_factory.mktemp("big")
    return make_synthetic_slide(d / "big.tif", width=4096, height=3072, seed=5).path


def test_a_rerun_skips_finished_slides_and_overwrite_redoes_them(command, slides, tmp_path, capsys):
    out = tmp_path / "out"
    argv = command.argv(slides[:2], out)
    assert main(argv) == 0
    first = command.record(out, "s0")
    assert first["status"] == "ok"
    stamp = command.output(out, "s0").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("skipped") >= 2 and "2 skipped" in text
    assert command.output(out, "s0").stat().st_mtime_ns == stamp
    assert command.record(out, "s0") == first
    # a killed run's staging folder is cleaned when the slide is next worked on
    stale = out / f".s0{command.suffix}.partial-999-deadbeef"
    stale.mkdir()
    (stale / "half").write_bytes(b"half")
    assert main([*argv, "--overwrite"]) == 0
    assert not stale.exists() and command.record(out, "s0")["created"] >= first["created"]
    assert not list(out.glob(".*partial*"))


def test_kill_9_mid_run_leaves_nothing_that_looks_finished_and_a_rerun_resumes(
    command, big_slide, tmp_path
):
    out = tmp_path / "out"
    argv = command.argv([big_slide], out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "histoxmodal.cli.main", *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not command.staging(out, "big") and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    time.sleep(0.3)  # let it write part of the output
    proc.kill()
    proc.wait()
    record = command.record(out, "big")
    if record is not None:  # only if the run beat the kill: then it must be complete
        assert record["status"] == "ok" and command.output(out, "big").exists()
    else:
        assert not command.output(out, "big").exists()
    assert main(argv) == 0
    assert command.record(out, "big")["status"] == "ok"
    assert not list(out.glob(".*partial*"))  # the killed run's staging folder is gone


def test_shards_split_the_sorted_slides(command, slides, tmp_path, capsys):
    out = tmp_path / "out"
    done = []
    for k in range(2):
        assert main(command.argv(slides, out, "--shard", f"{k}/2")) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines()]
        done.append({r[0] for r in rows if len(r) > 1 and r[1] == "ok"})
    # shard K takes slides K, K+2 of the sorted list
    assert done == [{"s0", "s2"}, {"s1", "s3"}]
    for i in range(4):
        assert command.record(out, f"s{i}")["status"] == "ok"
    capsys.readouterr()
    assert main(command.argv(slides, out, "--shard", "2/2")) == 2  # a usage error, one line
    err = capsys.readouterr().err.strip()
    assert "--shard '2/2'" in err and err.count("\n") == 0


def test_a_locked_slide_is_left_to_the_other_process(command, slides, tmp_path, capsys):
    out = tmp_path / "out"
    (out / ".locks").mkdir(parents=True)
    theirs = out / f".s0{command.suffix}.partial-999-abcdef01"  # the other process's staging
    theirs.mkdir()
    with FileLock(out / ".locks" / f"s0{command.lock_suffix}.lock"):
        assert main(command.argv(slides[:1], out)) == 1  # its output is not finished
        printed = capsys.readouterr().out
        assert "busy: s0: in progress in another process" in printed
        assert theirs.exists() and command.record(out, "s0") is None
    assert main(command.argv(slides[:1], out)) == 0  # the lock is free: stale staging cleaned
    assert not theirs.exists() and command.record(out, "s0")["status"] == "ok"


def test_a_bad_slide_is_recorded_and_the_others_go_on(command, slides, tmp_path, capsys):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    out = tmp_path / "out"
    argv = command.argv([bad, slides[0], tmp_path / "missing.tif"], out)
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "failed: broken:" in text and "failed: missing: file not found" in text
    assert "1 ok" in text and "2 failed" in text
    record = command.record(out, "broken")
    assert record["status"] == "failed" and "broken.tif" in record["reason"]
    assert "traceback" not in record  # a known error needs no traceback
    if command.suffix:
        assert not command.output(out, "broken").exists()
    else:  # the failed slide's folder holds its manifest only
        assert [p.name for p in (out / "broken").iterdir()] == ["manifest.json"]
    assert command.record(out, "s0")["status"] == "ok"
    assert not list(out.glob(".*partial*"))
    assert main(argv) == 1  # the failure is retried, the finished slide skipped
    text = capsys.readouterr().out
    assert "s0" in text and "1 skipped" in text and "failed: broken:" in text


def test_parse_shard(monkeypatch):
    assert parse_shard("2/8") == (2, 8) and parse_shard(None) is None
    for bad in ("8/8", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "10")
    assert parse_shard("auto") == (4, 10)
