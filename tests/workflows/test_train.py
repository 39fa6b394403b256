"""Training on generated data whose images and expression share a signal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from histoxmodal.testing.paired import make_paired_dataset  # noqa: E402
from histoxmodal.training.config import config_from_dict  # noqa: E402
from histoxmodal.workflows.run import Run  # noqa: E402
from histoxmodal.workflows.train import train  # noqa: E402


def _state_retrieval(module, data):
    """Fraction of images whose nearest gene embedding is a spot of the same hidden state."""
    from histoxmodal.data.dataset import PairedDataset
    from histoxmodal.data.store import load_paired

    genes = module.gene.genes
    ds = PairedDataset(data, genes=genes)
    items = [ds[i] for i in range(len(ds))]
    module.eval()
    with torch.no_grad():
        za = module.embed_images(torch.stack([it["image"] for it in items]))
        zb = module.embed_genes(
            torch.stack([it["expression"] for it in items]),
            torch.stack([it["gene_mask"] for it in items]),
        )
    state = load_paired(data)[0].obs["state"].to_numpy()
    nearest = (za @ zb.T).argmax(dim=1).numpy()
    return float(np.mean(state[nearest] == state))


def test_training_reaches_retrieval_above_chance(tmp_path):
    data = make_paired_dataset(tmp_path / "data", spots_per_sample=96, n_states=4)
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {
                "image_encoder": "test_uni",
                "gene_encoder": "test_gene_mlp",
                "embed_dim": 16,
            },
            "optim": {"lr": 3e-3, "batch_size": 32, "max_epochs": 50, "num_workers": 0},
        }
    )
    module = train(cfg, tmp_path / "run", data=data, accelerator="cpu", devices=1).module
    accuracy = _state_retrieval(module, data)
    assert accuracy > 0.8, accuracy  # chance: 1 / 4 hidden states
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    metrics = (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics


def test_unknown_config_keys_are_rejected_with_suggestions():
    from histoxmodal.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean lr"):
        config_from_dict({"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match="did you mean model"):
        config_from_dict({"modle": {}})
    cfg = config_from_dict({"correction": {"sampler": "by_batch", "same_batch": "mask"}})
    assert cfg.correction.sampler == "by_batch"


def test_group_batch_sampler():
    from histoxmodal.training.sampler import GroupBatchSampler

    groups = np.array([0] * 10 + [1] * 7 + [2] * 5)
    by = list(GroupBatchSampler(groups, 4, mode="by_batch"))
    assert all(len(set(groups[b])) == 1 and len(b) == 4 for b in by)
    assert len(by) == 2 + 1 + 1
    bal = list(GroupBatchSampler(groups, 6, mode="balanced"))
    assert all(np.bincount(groups[b], minlength=3).tolist() == [2, 2, 2] for b in bal)
    assert len(bal) == 2


def test_cli_train_resume_and_embed(tmp_path, capsys):
    import anndata as ad

    from histoxmodal.cli.main import main

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=48)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "genes: 20\nmodel: {image_encoder: test_uni, gene_encoder: test_gene_mlp, "
        "embed_dim: 8}\noptim: {batch_size: 16, num_workers: 0}\n"
    )
    run = tmp_path / "run"
    args = [
        "train",
        str(cfg),
        "--data",
        str(data),
        "--out",
        str(run),
        "--accelerator",
        "cpu",
        "--devices",
        "1",
        "--max-epochs",
        "1",
        "--set",
        "optim.lr=0.002",
    ]
    assert main(args) == 0
    assert len((run / "genes.txt").read_text().split()) == 20
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    # a resume must be the same run: another config is refused, the same one continues
    assert main([*args[:-4], "--max-epochs", "2", "--resume"]) == 2
    assert "another config.optim" in capsys.readouterr().err
    assert main([*args[:-4], "--max-epochs", "2", "--set", "optim.lr=0.002", "--resume"]) == 0
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert any(r.startswith("1,") for r in rows)  # epoch 1 ran after resuming
    assert main(["embed", str(run), "--data", str(data), "--out", str(tmp_path / "emb.h5ad")]) == 0
    emb = ad.read_h5ad(tmp_path / "emb.h5ad")
    assert emb.obsm["X_image"].shape == (96, 8) and emb.obsm["X_gene"].shape == (96, 8)
    assert np.allclose(np.linalg.norm(emb.obsm["X_gene"], axis=1), 1, atol=1e-5)
    # --split/--fold choose the training rows: the held-out sample never enters training
    from histoxmodal.data.splits import make_split, write_split
    from histoxmodal.data.store import load_paired

    split = tmp_path / "sample.json"
    write_split(make_split(load_paired(data)[0].obs, "sample"), split)
    fold = json.loads(split.read_text())["folds"][1]["name"]
    run2 = tmp_path / "run_fold"
    argv = [*args[:5], str(run2), *args[6:], "--split", str(split), "--fold", fold]
    assert main(argv) == 0
    saved = json.loads((run2 / "run.json").read_text())
    assert saved["fold"] == fold and saved["split"] == str(split.resolve())
    assert Run.load(run2).training_fold().name == fold
    assert main(["train", "her2st_smal", "--out", "x"]) == 2
    assert "Did you mean her2st_small" in capsys.readouterr().err
    assert main(["train", "--list"]) == 0 and "her2st_small" in capsys.readouterr().out


def test_frozen_tower_features_are_cached_and_reused(tmp_path):
    from histoxmodal.data.store import load_paired
    from histoxmodal.training.cache import image_features

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=32)
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {
                "image_encoder": "test_uni",
                "image_mode": "frozen",
                "gene_encoder": "test_gene_mlp",
                "embed_dim": 8,
                "cache_views": 4,
            },
            "optim": {"batch_size": 16, "max_epochs": 2, "num_workers": 0},
        }
    )
    module = train(cfg, tmp_path / "run", data=data, accelerator="cpu", devices=1).module
    files = sorted((tmp_path / "run" / "cache").glob("image_features_*.npy"))
    assert len(files) == 1
    feats = np.load(files[0])
    assert feats.shape == (64, 4, module.image.embed_dim)
    _, patches = load_paired(data)
    x = torch.from_numpy(np.ascontiguousarray(patches[:3])).permute(0, 3, 1, 2)
    with torch.no_grad():
        direct = module.image_features(x).numpy()
        turned = module.image_features(torch.rot90(x, 1, dims=(-2, -1))).numpy()
    np.testing.assert_allclose(feats[:3, 0], direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats[:3, 2], turned, rtol=1e-4, atol=1e-5)  # (k=1, no flip)
    stamp = files[0].stat().st_mtime_ns
    again = image_features(module, data, n_views=4, cache_dir=tmp_path / "run" / "cache")
    assert files[0].stat().st_mtime_ns == stamp and again.shape == feats.shape
    # the frozen tower did not move
    for p in module.image.parameters():
        assert not p.requires_grad


def test_training_with_a_pretrained_scvi_tower(tmp_path):
    pytest.importorskip("scvi")
    data = make_paired_dataset(tmp_path / "data", spots_per_sample=48)
    cfg = config_from_dict(
        {
            "genes": 30,
            "model": {
                "image_encoder": "test_uni",
                "gene_encoder": "test_gene_scvi",
                "embed_dim": 8,
            },
            "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
        }
    )
    module = train(cfg, tmp_path / "run", data=data, accelerator="cpu", devices=1).module
    assert module.gene.embed_dim == 4 and len(module.gene.genes) == 30
    again = Run.load(tmp_path / "run").module
    for a, b in zip(module.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_precision_auto_is_fp32_on_cpu():
    from histoxmodal.training.trainer import resolve_precision

    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "auto") == "32-true"


def test_fit_on_a_named_fold(tmp_path):
    from histoxmodal.data.splits import make_split, write_split
    from histoxmodal.errors import ConfigError

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=32, n_samples=3)
    import anndata as ad

    obs = ad.read_h5ad(data / "adata.h5ad").obs
    write_split(make_split(obs, "sample"), data / "splits" / "sample.json")
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {"image_encoder": "test_uni", "gene_encoder": "test_gene_mlp", "embed_dim": 8},
            "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
        }
    )
    split = data / "splits" / "sample.json"
    with pytest.raises(ConfigError, match="sample=S0, sample=S1, sample=S2"):
        train(cfg, tmp_path / "bad", data=data, split=split, fold="sample=S9")
    assert not (tmp_path / "bad").exists()  # nothing is written before every check passed
    train(
        cfg,
        tmp_path / "run",
        data=data,
        split=split,
        fold="sample=S1",
        accelerator="cpu",
        devices=1,
    )
    import json

    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["fold"] == "sample=S1" and saved["split"] == str(split.resolve())
    assert saved["kind"] == "spatial" and saved["n_batches"] == 3


# ------------------------------------------------------------- run integrity and bad options

TINY = (
    "genes: 20\nmodel: {image_encoder: test_uni, gene_encoder: test_gene_mlp, "
    "embed_dim: 8}\noptim: {batch_size: 16, num_workers: 0}\n"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two datasets, a tiny config and a finished one-epoch run on the first dataset."""
    from histoxmodal.cli.main import main

    root = tmp_path_factory.mktemp("tiny")
    a = make_paired_dataset(root / "A", spots_per_sample=48, seed=0)
    b = make_paired_dataset(root / "B", spots_per_sample=48, seed=1)
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    run = root / "run"
    argv = ["train", str(cfg), "--data", str(a), "--out", str(run), "--accelerator", "cpu"]
    assert main([*argv, "--devices", "1", "--max-epochs", "1"]) == 0
    return {"root": root, "A": a, "B": b, "cfg": cfg, "run": run}


def _train_argv(tiny, out, data=None, *extra):
    return [
        "train",
        str(tiny["cfg"]),
        "--data",
        str(data or tiny["A"]),
        "--out",
        str(out),
        "--accelerator",
        "cpu",
        "--devices",
        "1",
        *extra,
    ]


def _snapshot(run):
    return {n: (run / n).read_bytes() for n in ("genes.txt", "config.json", "run.json")}


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("histoxmodal: error: "), err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_a_refused_train_or_resume_leaves_the_run_identity_byte_identical(tiny, capsys):
    from histoxmodal.cli.main import main

    run = tiny["run"]
    before = _snapshot(run)
    # another dataset into a folder that holds a run: refused, nothing rewritten
    assert main(_train_argv(tiny, run, tiny["B"], "--max-epochs", "1")) == 2
    _one_line_error(capsys, "already holds a run")
    assert _snapshot(run) == before
    # --resume on another dataset: refused (it would re-select the genes)
    assert main(_train_argv(tiny, run, tiny["B"], "--max-epochs", "2", "--resume")) == 2
    _one_line_error(capsys, "another data")
    assert _snapshot(run) == before
    # --resume with another config on a finished run: refused, config.json unchanged
    assert main(_train_argv(tiny, run, None, "--resume", "--set", "optim.lr=0.5")) == 2
    _one_line_error(capsys, "another config.optim")
    assert _snapshot(run) == before


def test_resume_appends_to_the_metrics_of_the_earlier_epochs(tiny, tmp_path):
    import csv
    import shutil

    from histoxmodal.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    metrics = run / "csv" / "metrics.csv"
    first = list(csv.DictReader(metrics.open()))
    assert {r["epoch"] for r in first} == {"0"}
    assert main(_train_argv(tiny, run, None, "--max-epochs", "2", "--resume")) == 0
    rows = list(csv.DictReader(metrics.open()))
    assert {r["epoch"] for r in rows} == {"0", "1"}
    assert [r for r in rows if r["epoch"] == "0"] == [
        {k: r.get(k, "") for k in rows[0]} for r in first
    ]
    assert sum(bool(r.get("val/loss")) for r in rows) == 2  # one validation per epoch


def test_max_epochs_zero_or_negative_is_a_usage_error(tiny, tmp_path, capsys):
    from histoxmodal.cli.main import main
    from histoxmodal.errors import ConfigError
    from histoxmodal.workflows.config_files import load_config

    for n in ("0", "-1"):
        out = tmp_path / f"r{n}"
        assert main(_train_argv(tiny, out, None, "--max-epochs", n)) == 2
        _one_line_error(capsys, "--max-epochs must be >= 1")
        assert not out.exists()
    cfg = load_config(str(tiny["cfg"]))
    with pytest.raises(ConfigError, match="max_epochs=0: expected an integer >= 1"):
        train(cfg, tmp_path / "lib", data=tiny["A"], max_epochs=0, accelerator="cpu")
    assert not (tmp_path / "lib").exists()


def test_bad_lightning_options_are_one_line_and_write_nothing(tiny, tmp_path, capsys):
    from histoxmodal.cli.main import main

    out = tmp_path / "r"
    argv = _train_argv(tiny, out, None, "--max-epochs", "1")
    assert main([*argv, "--devices", "abc"]) == 2
    _one_line_error(capsys, "--devices='abc'", "expected auto")
    assert main([*argv[:-4], "--accelerator", "cpu", "--devices", "0"]) == 2
    _one_line_error(capsys, "devices=0")
    if not torch.cuda.is_available():
        for acc in ("gpu", "cuda"):
            assert main([*argv, "--accelerator", acc]) == 2
            _one_line_error(capsys, f"accelerator={acc!r}", "no usable GPU")
    assert main([*argv, "--set", "optim.precision=fp7"]) == 2
    _one_line_error(capsys, "optim.precision='fp7'")
    assert not out.exists()


def test_more_cpu_devices_than_cores_is_refused_before_anything(
    tiny, tmp_path, capsys, monkeypatch
):
    """``train --devices 99`` on CPU started 98 training processes (issue 26, item 11)."""
    import os

    import lightning

    from histoxmodal.cli.main import main
    from histoxmodal.errors import ConfigError
    from histoxmodal.workflows.config_files import load_config

    def no_trainer(*args, **kwargs):
        raise AssertionError("a Trainer was made: Lightning would start one process per device")

    monkeypatch.setattr(lightning, "Trainer", no_trainer)
    cores = os.cpu_count() or 1
    out = tmp_path / "r"
    argv = _train_argv(tiny, out, None, "--max-epochs", "1")
    argv[argv.index("--devices") + 1] = str(cores + 1)
    assert main(argv) == 2
    _one_line_error(capsys, f"--devices={cores + 1}", f"{cores} CPU cores")
    assert not out.exists()
    cfg = load_config(str(tiny["cfg"]))
    with pytest.raises(ConfigError, match=f"devices={cores + 1}: training on the CPU"):
        train(cfg, tmp_path / "lib", data=tiny["A"], accelerator="cpu", devices=cores + 1)
    assert not (tmp_path / "lib").exists()


def test_bad_split_or_fold_is_one_line(tiny, tmp_path, capsys):
    from histoxmodal.cli.main import main
    from histoxmodal.data.splits import make_split, write_split
    from histoxmodal.data.store import load_paired

    out = tmp_path / "r"
    argv = _train_argv(tiny, out, None, "--max-epochs", "1")
    split = tmp_path / "sample.json"
    write_split(make_split(load_paired(tiny["A"])[0].obs, "sample"), split)
    assert main([*argv, "--split", str(split), "--fold", "7"]) == 2
    _one_line_error(capsys, "fold 7 out of range", "2 folds")
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    assert main([*argv, "--split", str(text)]) == 2
    _one_line_error(capsys, str(text), "not a split file")
    obj = tmp_path / "obj.json"
    obj.write_text('{"kind": "random"}')
    assert main([*argv, "--split", str(obj)]) == 2
    _one_line_error(capsys, str(obj), "no list of folds")
    assert not out.exists()


def test_a_truncated_weights_file_is_one_line_for_embed_and_evaluate(tiny, tmp_path, capsys):
    import shutil

    from histoxmodal.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert (
        main(["embed", str(run), "--data", str(tiny["A"]), "--out", str(tmp_path / "e.h5ad")]) == 1
    )
    _one_line_error(capsys, str(weights), "incomplete or corrupt")
    split = str(tiny["A"] / "splits" / "random.json")  # the run's own split: no overlap
    argv = ["evaluate", str(run), "--data", str(tiny["A"]), "--split", split]
    assert main([*argv, "--out", str(tmp_path / "ev")]) == 1
    _one_line_error(capsys, str(weights), "incomplete or corrupt")
    (run / "config.json").write_text("{not json")  # a corrupt run folder: bad data, exit 1
    assert (
        main(["embed", str(run), "--data", str(tiny["A"]), "--out", str(tmp_path / "e.h5ad")]) == 1
    )
    _one_line_error(capsys, "config.json", "not valid JSON")


def test_resume_refits_the_head_and_a_head_on_other_weights_is_refused(tiny, tmp_path, capsys):
    import shutil

    from histoxmodal.cli.main import main
    from histoxmodal.errors import StaleHeadError
    from histoxmodal.heads.base import read_head_json
    from histoxmodal.workflows.predict import predict_expression

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    head = run / "heads" / "expression_ridge"
    meta, _ = read_head_json(head)
    assert meta["provenance"]["weights_sha256"] == Run.load(run).weights_sha256()
    before = (head / "arrays.safetensors").read_bytes()
    assert main(_train_argv(tiny, run, None, "--max-epochs", "2", "--resume")) == 0
    r = Run.load(run)
    # the weights changed, so the head was refitted on them
    assert r.weights_sha256() != Run.load(tiny["run"]).weights_sha256()
    assert r.head_is_current("expression_ridge")
    assert (head / "arrays.safetensors").read_bytes() != before
    predict_expression(r, tiny["A"], head="expression_ridge")
    resumed = tmp_path / "resumed.safetensors"
    shutil.copy(run / "model.safetensors", resumed)
    # weights copied in from another run (here the one-epoch original): the head is refused
    shutil.copy(tiny["run"] / "model.safetensors", run / "model.safetensors")
    with pytest.raises(StaleHeadError, match="fit-head"):
        predict_expression(Run.load(run), tiny["A"], head="expression_ridge")
    # and a head copied in from another run beside this run's own weights
    shutil.copy(resumed, run / "model.safetensors")
    shutil.copytree(tiny["run"] / "heads" / "expression_ridge", run / "heads" / "copied")
    Run.load(run).load_head("expression_ridge")
    with pytest.raises(StaleHeadError, match=f"fit-head {run}"):
        Run.load(run).load_head("copied")
    # the command line: one line naming the fix
    assert main(["fit-head", str(run)]) == 0
    assert Run.load(run).head_is_current("expression_ridge")
    capsys.readouterr()


def test_fit_head_refuses_a_dataset_rebuilt_in_place(tiny, tmp_path, capsys):
    import shutil

    from histoxmodal.cli.main import main
    from histoxmodal.errors import DatasetChangedError

    data, run = tmp_path / "A", tmp_path / "run"
    shutil.copytree(tiny["A"], data)
    shutil.copytree(tiny["run"], run)
    ident = json.loads((run / "run.json").read_text())
    ident["data"] = str(data)
    ident["split"] = str(data / Path(ident["split"]).relative_to(tiny["A"]))
    (run / "run.json").write_text(json.dumps(ident))
    assert main(["fit-head", str(run)]) == 0
    capsys.readouterr()
    # a rebuild in place with other parameters: same path, another dataset
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["created"] = "a later build"
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetChangedError, match="not the dataset"):
        Run.load(run).training_fold()
    assert main(["fit-head", str(run)]) != 0
    _one_line_error(capsys, "not the dataset", str(run))
    assert main(["evaluate", str(run), "--data", str(data), "--out", str(tmp_path / "ev")]) != 0
    _one_line_error(capsys, "not the dataset")
    # the dataset moved away: said so, not "split file not found"
    shutil.rmtree(data)
    assert main(["fit-head", str(run)]) != 0
    _one_line_error(capsys, "moved or deleted")


def test_a_fold_smaller_than_one_batch_is_refused_before_the_run_exists(tiny, tmp_path, capsys):
    from histoxmodal.cli.main import main

    run = tmp_path / "run"
    # 96 spots, about 3/4 of them in the training fold: no full batch of 1000
    assert main(_train_argv(tiny, run, None, "--set", "optim.batch_size=1000")) == 2
    _one_line_error(capsys, "optim.batch_size=1000", "not one full training batch")
    assert not run.exists()


KILL_IN_EPOCH_1 = """
import os, signal, sys
import histoxmodal.training.trainer as T
from lightning.pytorch.callbacks import Callback

class Kill(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.current_epoch == 1 and trainer.global_step >= 6:
            trainer.loggers[0].save()  # what was logged so far reaches metrics.csv
            os.kill(os.getpid(), signal.SIGKILL)

make = T.make_trainer
def make_and_kill(*a, **k):
    t = make(*a, **k)
    t.callbacks.append(Kill())
    return t
T.make_trainer = make_and_kill
from histoxmodal.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_moved_run_killed_mid_epoch_resumes_to_the_uninterrupted_model(tiny, tmp_path, capsys):
    import csv
    import shutil
    import signal
    import subprocess
    import sys

    from safetensors.numpy import load_file

    from histoxmodal.cli.main import main

    whole = tmp_path / "whole"
    assert main(_train_argv(tiny, whole, None, "--max-epochs", "2")) == 0
    # the same run killed (SIGKILL) during its second epoch, then moved elsewhere
    killed = tmp_path / "killed"
    argv = _train_argv(tiny, killed, None, "--max-epochs", "2")
    p = subprocess.run([sys.executable, "-c", KILL_IN_EPOCH_1, *argv], capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    assert not (killed / "model.safetensors").exists()
    metrics = killed / "csv" / "metrics.csv"
    assert any(r["epoch"] == "1" for r in csv.DictReader(metrics.open()))  # a partial epoch
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(killed, moved)
    metrics = moved / "csv" / "metrics.csv"
    assert main(_train_argv(tiny, moved, None, "--max-epochs", "2", "--resume")) == 0
    names = {p.name for p in (moved / "checkpoints").iterdir()}
    assert {"last.ckpt", "epoch=1-step=8.ckpt"} <= names and not any("-v" in n for n in names)
    a, b = load_file(whole / "model.safetensors"), load_file(moved / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    got = list(csv.DictReader(metrics.open()))
    ref = list(csv.DictReader((whole / "csv" / "metrics.csv").open()))
    # the same rows (epoch, step) and losses to the weights' tolerance: the killed process and
    # the uninterrupted one may sum in another order (their last digits differed once)
    rows = [(r["epoch"], r["step"], float(r["train/loss"])) for r in got if r.get("train/loss")]
    want = [(r["epoch"], r["step"], float(r["train/loss"])) for r in ref if r.get("train/loss")]
    assert [r[:2] for r in rows] == [r[:2] for r in want]
    np.testing.assert_allclose([r[2] for r in rows], [r[2] for r in want], rtol=1e-5)
    # a truncated or foreign checkpoint is one line
    capsys.readouterr()
    (moved / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert main(_train_argv(tiny, moved, None, "--max-epochs", "3", "--resume")) == 1
    _one_line_error(capsys, "not a readable checkpoint")


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("model.image_kwargs.input_size=-5", "unexpected keyword argument 'input_size'"),
        ("model.image_kwargs.bogus=3", "unexpected keyword argument 'bogus'"),
        ("model.image_encoder=timm:resnet18", None),
    ],
)
def test_a_config_the_towers_refuse_writes_nothing(tiny, tmp_path, capsys, setting, needle):
    from histoxmodal.cli.main import main

    run = tmp_path / "run"
    extra = ["--set", setting]
    if needle is None:  # a timm tower takes input_size, and checks it
        extra += ["--set", "model.image_kwargs.input_size=0"]
        needle = "input_size=0"
    assert main(_train_argv(tiny, run, None, *extra)) == 2
    _one_line_error(capsys, needle)
    assert not run.exists()


def test_embed_out_that_is_a_folder_is_one_line(tiny, tmp_path, capsys):
    from histoxmodal.cli.main import main

    (tmp_path / "existing").mkdir()
    argv = ["embed", str(tiny["run"]), "--data", str(tiny["A"]), "--out"]
    assert main([*argv, str(tmp_path / "existing")]) == 2
    _one_line_error(capsys, "is a folder", "embeddings.h5ad")
    assert list((tmp_path / "existing").iterdir()) == []
    assert main([*argv, str(tmp_path / "nope" / "e.h5ad")]) == 2
    _one_line_error(capsys, "does not exist")


def test_off_a_terminal_training_logs_one_line_per_epoch(tiny, tmp_path, capsys, monkeypatch):
    import re

    from histoxmodal.cli.main import main

    monkeypatch.setenv("HISTOXMODAL_PROGRESS", "0")  # as under SLURM, nohup or a pipe
    assert main(_train_argv(tiny, tmp_path / "run", None, "--max-epochs", "2")) == 0
    err = capsys.readouterr().err
    lines = re.findall(r"epoch (\d)/2: train/loss [0-9.]+, val/loss [0-9.]+ \(", err)
    assert lines == ["1", "2"], err


def test_embed_on_a_nearly_full_disk_is_one_line_before_writing(
    tiny, tmp_path, capsys, monkeypatch
):
    import shutil
    from collections import namedtuple

    from histoxmodal.cli.main import main

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "e.h5ad"
    assert main(["embed", str(tiny["run"]), "--data", str(tiny["A"]), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and "MB are free" in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_a_checkpoint_write_that_fails_leaves_the_previous_one_whole(
    tiny, tmp_path, monkeypatch, capsys
):
    import errno
    import io
    import shutil

    import lightning.fabric.plugins.io.torch_io as torch_io
    import torch

    from histoxmodal.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    real = torch_io._atomic_save

    def disk_fills(checkpoint, path):  # half of last.ckpt reaches the disk, then it is full
        if "last" not in Path(path).name:
            return real(checkpoint, path)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        with open(path, "wb") as f:
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch_io, "_atomic_save", disk_fills)
    assert main(_train_argv(tiny, run, None, "--max-epochs", "2", "--resume")) == 1
    assert "the disk is full" in capsys.readouterr().err
    assert last.read_bytes() == before  # the epoch-1 checkpoint, whole
    assert not list((run / "checkpoints").glob(".*partial"))
    monkeypatch.setattr(torch_io, "_atomic_save", real)
    assert main(_train_argv(tiny, run, None, "--max-epochs", "2", "--resume")) == 0


def test_sigterm_stops_training_with_exit_143_and_resume_continues(tiny, tmp_path):
    """SLURM preemption or `kill`: Lightning stops the fit with a SystemExit without a code, so
    `histoxmodal train` used to exit 0 as if it had finished. It now says it was interrupted,
    exits 143 and keeps last.ckpt; --resume finishes the run."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    argv = [sys.executable, "-m", "histoxmodal.cli.main", *_train_argv(tiny, run), "--max-epochs",
            "200"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted (SIGTERM)" in err and last.exists()
    assert not (run / "model.safetensors").exists()
