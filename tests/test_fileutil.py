"""Outputs follow the user's umask: lab mates sharing a folder can read them."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from histoxmodal.fileutil import current_umask, default_file_mode, write_json_atomic

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture
def umask():
    """Set the process umask for a test, restoring it after."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask):
        os.umask(mask)

    yield set_
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_json_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask and default_file_mode() == mode
    write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    assert _mode(tmp_path / "metrics.json") == mode
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left


def test_tile_and_train_outputs_are_0644_under_umask_022(tmp_path, umask):
    pytest.importorskip("lightning")
    from PIL import Image

    from histoxmodal.cli.main import main
    from histoxmodal.testing.paired import make_paired_dataset

    umask(0o022)
    rng = np.random.default_rng(0)
    img = np.full((512, 512, 3), 235, np.uint8)
    img[100:400, 100:400] = rng.integers(90, 180, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "s.png")
    argv = ["tile", str(tmp_path / "s.png"), "--out", str(tmp_path / "tiles"), "--mpp", "0.5"]
    assert main([*argv, "--tile-px", "64", "--min-tissue", "0"]) == 0
    tiles = tmp_path / "tiles" / "s"
    data = make_paired_dataset(tmp_path / "data", spots_per_sample=24)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "genes: 20\nmodel: {image_encoder: test_uni, gene_encoder: test_gene_mlp, "
        "embed_dim: 8}\noptim: {batch_size: 16, num_workers: 0}\n"
    )
    run = tmp_path / "run"
    argv = ["train", str(cfg), "--data", str(data), "--out", str(run), "--accelerator", "cpu"]
    assert main([*argv, "--devices", "1", "--max-epochs", "1"]) == 0
    outputs = [
        tiles / "manifest.json", tiles / "coords.h5", tiles / "overlay.png",
        data / "manifest.json", run / "config.json", run / "run.json", run / "model.safetensors",
    ]  # fmt: skip
    modes = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in outputs}
    assert set(modes.values()) == {"0o644"}, modes
    # every file the run wrote, including checkpoints and heads
    written = [p for p in run.rglob("*") if p.is_file()]
    assert written and {oct(_mode(p)) for p in written} == {"0o644"}
