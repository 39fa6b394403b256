"""``model.ensemble``: members trained as runs of their own, joined into one run that embeds,
saves, reloads and resumes like a single one."""

from __future__ import annotations

import numpy as np
import pytest

from histoxmodal.testing.paired import make_paired_dataset

TINY = (
    "genes: 20\nmodel: {image_encoder: test_uni, gene_encoder: test_gene_mlp, "
    "embed_dim: 8}\noptim: {batch_size: 16, num_workers: 0, seed: 3}\n"
)


def _argv(cfg, data, out, *extra):
    return ["train", str(cfg), "--data", str(data), "--out", str(out), "--accelerator", "cpu",
            "--devices", "1", "--max-epochs", "1", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def ens(tmp_path_factory):
    """A two-member ensemble and a single run trained with the second member's seed."""
    from histoxmodal.cli.main import main

    root = tmp_path_factory.mktemp("ens")
    data = make_paired_dataset(root / "A", spots_per_sample=48, seed=0)
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    assert main(_argv(cfg, data, root / "ens", "--set", "model.ensemble=2")) == 0
    assert main(_argv(cfg, data, root / "seed4", "--set", "optim.seed=4")) == 0
    return {"root": root, "data": data, "cfg": cfg, "run": root / "ens"}


def test_each_member_is_the_single_run_of_its_seed(ens):
    from safetensors.numpy import load_file

    from histoxmodal.workflows.run import Run

    run = Run.load(ens["run"])
    assert run.config.model.ensemble == 2
    members = [Run.load(ens["run"] / "members" / str(i)) for i in range(2)]
    assert [m.config.optim.seed for m in members] == [3, 4]
    assert all(m.config.model.ensemble == 1 for m in members)
    # member 1 trained exactly what a lone run with seed 4 trains
    a = load_file(ens["run"] / "members" / "1" / "model.safetensors")
    b = load_file(ens["root"] / "seed4" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the ensemble's weights file holds both members under members.<i>.
    joined = load_file(ens["run"] / "model.safetensors")
    assert len(joined) == 2 * len(a)
    for k in a:
        np.testing.assert_array_equal(joined[f"members.1.{k}"], a[k])


def test_the_embedding_is_the_members_concatenated_over_sqrt_n(ens):
    from histoxmodal.workflows.run import Run

    z = Run.load(ens["run"]).embed(ens["data"])
    parts = [Run.load(ens["run"] / "members" / str(i)).embed(ens["data"]) for i in range(2)]
    for m in ("image", "gene"):
        want = np.hstack([p[m] for p in parts]) / np.sqrt(2)
        assert z[m].shape == (96, 16)
        np.testing.assert_allclose(z[m], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(z[m], axis=1), 1.0, rtol=1e-5)
    # a batch of images only (patches of a slide, as `predict` embeds them) gives the same
    import torch

    from histoxmodal import keys
    from histoxmodal.data.store import load_paired

    _, patches = load_paired(ens["data"])
    imgs = torch.as_tensor(np.asarray(patches[:10])).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        only = Run.load(ens["run"]).module.embed_batch({keys.BATCH_IMAGE: imgs})
    assert set(only) == {"image"}
    np.testing.assert_allclose(only["image"].numpy(), z["image"][:10], rtol=1e-4, atol=1e-5)
    # an inner product in the joint space is the members' mean cosine similarity
    sim = z["image"] @ z["gene"].T
    mean = np.mean([p["image"] @ p["gene"].T for p in parts], axis=0)
    np.testing.assert_allclose(sim, mean, rtol=1e-4, atol=1e-6)


def test_the_expression_head_reads_the_joined_embedding(ens):
    from histoxmodal.data.normalize import expression_matrix
    from histoxmodal.data.store import load_paired
    from histoxmodal.heads.expression import RidgeHead
    from histoxmodal.workflows.run import Run

    run = Run.load(ens["run"])
    head = run.load_head("expression_ridge")
    adata, _ = load_paired(ens["data"])
    tr = run.training_fold().train(adata.n_obs)
    z = run.embed(ens["data"])["image"]
    y = expression_matrix(adata, list(head.outputs), rows=tr)
    groups = np.asarray(adata.obs["sample"].astype(str))[tr]
    by_hand = RidgeHead().fit(z[tr], y, groups=groups)
    assert head.coef_.shape == (16, len(head.outputs)) == by_hand.coef_.shape
    np.testing.assert_allclose(head.predict(z), by_hand.predict(z), rtol=1e-4, atol=1e-5)


def test_a_killed_ensemble_resumes_at_its_member(ens, tmp_path, capsys):
    import shutil

    from safetensors.numpy import load_file

    from histoxmodal.cli.main import main

    run = tmp_path / "ens"
    shutil.copytree(ens["run"], run)
    first = (run / "members" / "0" / "model.safetensors").stat().st_mtime_ns
    # as if killed while training member 1: no member 1 weights, no joined weights
    shutil.rmtree(run / "members" / "1")
    (run / "model.safetensors").unlink()
    argv = _argv(ens["cfg"], ens["data"], run, "--set", "model.ensemble=2")
    capsys.readouterr()
    assert main(argv) == 2  # without --resume a started ensemble is refused
    err = capsys.readouterr().err
    assert "already holds a run; pass --resume" in err and err.count("\n") == 1, err
    assert main([*argv, "--resume"]) == 0
    assert (run / "members" / "0" / "model.safetensors").stat().st_mtime_ns == first
    a, b = load_file(ens["run"] / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_bad_ensemble_sizes_and_tile_features_of_an_ensemble_are_one_line(ens, tmp_path, capsys):
    from histoxmodal.cli.main import main
    from histoxmodal.errors import ConfigError
    from histoxmodal.workflows.extractor import load_extractor

    capsys.readouterr()
    assert main(_argv(ens["cfg"], ens["data"], tmp_path / "r", "--set", "model.ensemble=0")) == 2
    err = capsys.readouterr().err
    assert "model.ensemble=0: expected an integer >= 1" in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match=r"an ensemble of 2 models .* --run .*members/0"):
        load_extractor(run=ens["run"])
    assert load_extractor(run=ens["run"] / "members" / "0").dim > 0


def test_evaluate_scores_the_ensemble_on_its_held_out_spots(ens, tmp_path):
    import json

    from histoxmodal.cli.main import main
    from histoxmodal.evaluation.retrieval import cross_modal_retrieval
    from histoxmodal.workflows.run import Run

    run = Run.load(ens["run"])
    split = ens["data"] / "splits" / "random.json"
    assert main(["evaluate", str(ens["run"]), "--data", str(ens["data"]), "--split",
                 str(split), "--out", str(tmp_path / "ev")]) == 0  # fmt: skip
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    te = run.training_fold().test
    z = run.embed(ens["data"], te)  # the joined embedding of the held-out spots
    want = cross_modal_retrieval(z["image"], z["gene"])
    assert len(te) == 19
    for short, name in (("i2g", "image_to_gene"), ("g2i", "gene_to_image")):
        for k in ("recall@1", "recall@5", "recall@10", "mean_rank", "median_rank"):
            key = k.replace("recall@", "R@")
            assert got[f"retrieval.full.{short}.{k}"] == pytest.approx(want[name][key]), k


def test_off_a_terminal_each_member_is_announced_before_its_epochs(ens, tmp_path, capsys):
    from histoxmodal.cli.main import main

    capsys.readouterr()
    out = tmp_path / "ens3"
    assert main(_argv(ens["cfg"], ens["data"], out, "--set", "model.ensemble=3")) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "ensemble member" in ln
             or "epoch 1/1" in ln]  # fmt: skip
    assert len(lines) == 6, lines
    for i in range(3):
        assert (
            f"ensemble member {i + 1}/3 (seed {3 + i}): {out / 'members' / str(i)}" in lines[2 * i]
        )
        assert "epoch 1/1" in lines[2 * i + 1]
