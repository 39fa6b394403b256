"""``histoxmodal pretrain-genes``: a gene model on every section with counts, saved in the
library's folder format, loaded by the gene towers; one log line per epoch off a terminal;
resume after kill -9; clear errors; her2st's 35 sections (30 without an image)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("scvi")


def _sections(folder, n_sections=3, spots=120, n_genes=60, seed=0):
    """One .h5ad of raw counts per section, two patients, a shared gene programme."""
    import anndata as ad
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    base = rng.gamma(1.0, 2.0, n_genes)
    for s in range(n_sections):
        state = rng.integers(0, 3, spots)
        rate = base * (1 + 2.0 * (np.arange(n_genes)[None] % 3 == state[:, None]))
        a = ad.AnnData(rng.poisson(rate).astype(np.float32))
        a.var_names = genes
        a.obs_names = [f"spot{i}" for i in range(spots)]
        a.obs["patient"] = pd.Categorical(["P1" if s < 2 else "P2"] * spots)
        a.write_h5ad(folder / f"S{s}.h5ad")
    return folder


@pytest.mark.parametrize("model", ["scvi", "drvi"])
def test_pretrain_writes_a_model_the_tower_loads(model, tmp_path, caplog):
    if model == "drvi":
        pytest.importorskip("drvi")
    from histoxmodal.cli.main import main
    from histoxmodal.encoders import create_encoder

    src = _sections(tmp_path / "src")
    out = tmp_path / "gm"
    with caplog.at_level("INFO", logger="histoxmodal.progress"):
        code = main(["pretrain-genes", "--src", str(src), "--recipe", "h5ad", "--model", model,
                     "--genes", "40", "--max-epochs", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    # off a terminal, one line per epoch with the ELBO
    epochs = [r.getMessage() for r in caplog.records if r.name == "histoxmodal.progress"]
    assert [m.split(":")[0] for m in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("elbo_train" in m for m in epochs)
    assert sorted(p.name for p in out.iterdir()) == ["gene_model.json", "genes.txt", "model.pt"]
    genes = (out / "genes.txt").read_text().split()
    manifest = json.loads((out / "gene_model.json").read_text())
    assert len(genes) == manifest["n_genes"] == 40
    assert manifest["sections"] == {"S0": 120, "S1": 120, "S2": 120} and manifest["n_spots"] == 360
    assert manifest["batches"] == ["P1", "P2"] and manifest["params"]["batch_key"] == "patient"
    sources = manifest["params"]["sources"]
    assert len(sources) == 3 and all(len(h) == 64 for h in sources.values())
    import hashlib

    first = src / "S0.h5ad"
    assert sources[str(first)] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert manifest["use"]["model.gene_encoder"] == f"gene_{model}"
    assert "scvi-tools" in manifest["versions"] and not list(tmp_path.glob(".gm.partial*"))
    tower = create_encoder(f"gene_{model}", weights=str(out), genes=genes)
    assert tower.missing_genes == 0
    with torch.no_grad():
        z = tower.eval()(torch.from_numpy(np.random.default_rng(1).poisson(2, (5, 40)) * 1.0))
    assert z.shape == (5, tower.embed_dim) and torch.isfinite(z).all()


def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, capsys):
    import anndata as ad

    from histoxmodal.cli.main import main

    src = _sections(tmp_path / "src", n_sections=1)
    base = ["pretrain-genes", "--src", str(src), "--recipe", "h5ad", "--model", "scvi"]
    assert main([*base, "--batch-key", "donor", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--batch-key 'donor': not a column" in err and "patient" in err
    assert not (tmp_path / "a").exists()
    a = ad.read_h5ad(src / "S0.h5ad")
    a.X = np.log1p(a.X)
    a.write_h5ad(tmp_path / "log.h5ad")
    assert (
        main([*base[:2], str(tmp_path / "log.h5ad"), *base[3:], "--out", str(tmp_path / "b")]) == 1
    )
    assert "not raw counts" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main([*base, "--out", str(tmp_path / "mine")]) == 2
    assert "not gene model" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as exc:  # argparse's usage error
        main([*base, "--genes", "0", "--out", str(tmp_path / "c")])
    assert exc.value.code == 2 and "--genes: must be >= 1" in capsys.readouterr().err


_CHILD = r"""
import sys
from histoxmodal.workflows.pretrain_genes import pretrain_genes
pretrain_genes(sys.argv[1], sys.argv[2], recipe="h5ad", model="scvi", n_genes=40,
               max_epochs=int(sys.argv[3]), resume=sys.argv[4] == "1")
"""


def test_a_killed_run_resumes_from_its_last_epoch(tmp_path):
    """kill -9 during training; --resume continues from last.ckpt (not from epoch 1) and
    publishes the finished model; nothing is published before."""
    src = _sections(tmp_path / "src", n_sections=4, spots=3000)
    out = tmp_path / "gm"
    ckpt = tmp_path / ".gm.partial" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(src), str(out), "40", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            time.sleep(0.3)  # another epoch or so
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and ckpt.is_file()
    from histoxmodal.training.trainer import checkpoint_position

    done = checkpoint_position(ckpt)[0] + 1
    assert 1 <= done < 40
    subprocess.run([sys.executable, "-c", _CHILD, str(src), str(out), "40", "1"], check=True,
                   capture_output=True)  # fmt: skip
    manifest = json.loads((out / "gene_model.json").read_text())
    assert manifest["resumed_from_epoch"] == done and manifest["params"]["max_epochs"] == 40
    assert (out / "model.pt").is_file() and not ckpt.exists()


def test_her2st_all_35_sections_images_or_not(data_dir, tmp_path):
    """The her2st recipe reads every section with counts: 35 sections, 30 without an image,
    13,442 spots of 8 patients."""
    from histoxmodal.workflows.pretrain_genes import pretrain_genes

    r = pretrain_genes(data_dir / "her2st", tmp_path / "gm", model="scvi", n_genes=50,
                       max_epochs=1)  # fmt: skip
    manifest = json.loads((tmp_path / "gm" / "gene_model.json").read_text())
    images = {p.stem for p in (data_dir / "her2st" / "images").glob("*.jpg")}
    assert r.n_sections == len(manifest["sections"]) == 35
    assert len(set(manifest["sections"]) - images) == 30
    assert r.n_spots == manifest["n_spots"] == 13442
    assert manifest["batches"] == list("ABCDEFGH") and len(r.genes) == 50


def test_sigterm_exits_143_publishes_nothing_and_keeps_the_checkpoint(tmp_path):
    src = _sections(tmp_path / "src", n_sections=4, spots=3000)
    out = tmp_path / "gm"
    ckpt = tmp_path / ".gm.partial" / "checkpoints" / "last.ckpt"
    argv = [sys.executable, "-m", "histoxmodal.cli.main", "pretrain-genes", "--src", str(src),
            "--recipe", "h5ad", "--model", "scvi", "--genes", "40", "--max-epochs", "200",
            "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "interrupted (SIGTERM)" in err
    assert not out.exists() and ckpt.is_file()
