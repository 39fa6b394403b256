"""Whole-slide expression maps: pseudo-spots over the tissue, the run's saved head, outputs
scanpy reads, resume and failures; on a real held-out her2st section the slide path gives the
same per-gene Pearson as ``evaluate``."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("lightning")

from tests.workflows.tiny_runs import TINY, paired_data, train_tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("map")
    run, slide = train_tiny(tmp, paired_data(tmp))
    return tmp, run, slide


def test_training_saves_an_expression_head_for_the_whole_panel(tiny_run):
    _, run, _ = tiny_run
    assert run.heads == ["expression_ridge"]
    meta = json.loads((run.path / "heads" / "expression_ridge" / "head.json").read_text())
    assert meta["outputs"]["names"] == run.genes and meta["head"] == "ridge"
    assert not (run.path / "heads" / "expression_ridge" / "targets.json").exists()
    assert run.patch == {"patch_um": 16.0, "patch_px": 32}


def test_slide_map_pixels_grid_and_values(tiny_run):
    import anndata as ad
    import torch
    from PIL import Image

    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.tissue import detect_tissue
    from histoxmodal.workflows.expression_map import predict_slide

    tmp, run, slide = tiny_run
    out = tmp / "maps"
    r = predict_slide(run, slide, out, grid_um=40, genes=run.genes[:2])
    assert r.status == "ok", r.reason
    a = ad.read_h5ad(out / "new" / "prediction.h5ad")
    # the grid, computed with plain loops: 16 µm windows every 40 µm (0.25 µm/px: 64 px, 160 px)
    with open_slide(slide) as s:
        mask = detect_tissue(s)
        want, fracs = [], []
        for y in range(0, 1536 - 64 + 1, 160):
            for x in range(0, 2048 - 64 + 1, 160):
                f = mask.fraction(np.array([[x, y]]), 64)[0]
                if f >= 0.5:
                    want.append((x + 32.0, y + 32.0))
                    fracs.append(f)
        assert r.n_tiles == a.n_obs == len(want) > 10
        np.testing.assert_array_equal(a.obsm["spatial"], np.array(want))
        np.testing.assert_allclose(a.obs["tissue_fraction"], fracs, rtol=1e-6)
        # values: the saved head on the run's image embedding of the same window, read directly
        i = a.n_obs // 2
        x, y = (int(v) - 32 for v in a.obsm["spatial"][i])
        patch = s.read_region_at_mpp((x, y), 32, 0.5)
    with torch.no_grad():
        z = run.module.embed_images(torch.from_numpy(patch.transpose(2, 0, 1)[None].copy()))
    head = run.load_head("expression_ridge")
    np.testing.assert_allclose(a.X[i], head.predict(z.numpy())[0], rtol=1e-4, atol=1e-5)
    assert list(a.var_names) == run.genes
    # scanpy reads it as a Visium-like section
    lib = a.uns["spatial"]["new"]
    thumb = lib["images"]["hires"]
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(thumb.shape[1] / 2048)
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(64)
    assert a.uns["prediction"]["head"] == "expression_ridge"
    import scanpy as sc

    sc.pl.spatial(a, color=run.genes[0], library_id="new", show=False)
    # one heatmap per requested gene, a real PNG
    for g in run.genes[:2]:
        assert Image.open(out / "new" / f"{g}.png").size[0] > 300
    m = json.loads((out / "new" / "manifest.json").read_text())
    assert m["status"] == "ok" and m["n_spots"] == a.n_obs and m["maps"] == run.genes[:2]
    # a rerun skips it; other settings redo it
    assert predict_slide(run, slide, out, grid_um=40, genes=run.genes[:2]).status == "skipped"
    assert predict_slide(run, slide, out, grid_um=80, genes=run.genes[:2]).status == "ok"


def test_a_head_with_centring_and_context_reads_the_slide_as_one_section(tiny_run):
    import copy

    import anndata as ad

    from histoxmodal.workflows.predict import HeadInputs, fit_expression_head

    tmp, run, slide = tiny_run
    head = fit_expression_head(
        run, genes=run.genes, name="ctx", inputs=HeadInputs(context_um=100.0, centre=True)
    )
    out = tmp / "maps_ctx"
    assert predict_slide_ok(run, slide, out, head="ctx", grid_um=40, genes=run.genes[:1])
    a = ad.read_h5ad(out / "new" / "prediction.h5ad")
    assert a.uns["prediction"]["centre"] and a.uns["prediction"]["context_um"] == 100.0
    # by hand: the slide's embeddings minus their mean, beside the mean of the other
    # pseudo-spots within 100 µm (0.25 µm/px: 400 px; the grid is 40 µm = 160 px)
    z = np.asarray(a.obsm["X_image"], np.float64)
    c = z - z.mean(0)
    xy = np.asarray(a.obsm["spatial"]) * 0.25
    x = np.zeros((len(z), 2 * z.shape[1]))
    for i in range(len(z)):
        d = np.linalg.norm(xy - xy[i], axis=1)
        near = (d <= 100.0) & (np.arange(len(z)) != i)
        x[i] = np.r_[c[i], c[near].mean(0) if near.any() else c[i]]
    plain = copy.copy(head).reading(None)  # the same fitted head, reading what it is given
    np.testing.assert_allclose(a.X, plain.predict(x.astype(np.float32)), rtol=1e-4, atol=1e-4)
    # and the head applies its own inputs to the raw embeddings: the slide is one section
    np.testing.assert_allclose(a.X, head.predict(z, coords_um=xy), rtol=1e-4, atol=1e-4)


def predict_slide_ok(*args, **kwargs) -> bool:
    from histoxmodal.workflows.expression_map import predict_slide

    r = predict_slide(*args, **kwargs)
    assert r.status == "ok", r.reason
    return True


def test_cli_predict_records_a_gene_the_head_does_not_predict(tiny_run, capsys):
    from histoxmodal.cli.main import main

    tmp, run, slide = tiny_run
    out = tmp / "cli"
    # (bad slides, resume, locks and shards: tests/workflows/test_jobs.py, for every command)
    assert main(["predict", str(run.path), str(slide), "--out", str(out), "--genes", "NOPE"]) == 1
    assert "NOPE" in json.loads((out / "new" / "manifest.json").read_text())["reason"]


def test_a_run_without_a_head_says_how_to_fit_one(tiny_run, tmp_path, capsys):
    import shutil

    from histoxmodal.cli.main import main

    _, run, slide = tiny_run
    bare = tmp_path / "bare"
    shutil.copytree(run.path, bare)
    shutil.rmtree(bare / "heads")
    assert main(["predict", str(bare), str(slide), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no saved expression head" in err and f"histoxmodal fit-head {bare}" in err
    assert main(["fit-head", str(bare)]) == 0
    assert (bare / "heads" / "expression_ridge" / "head.json").exists()
    # the head's inputs from the command line, over the run config's
    assert main(["fit-head", str(bare), "--head", "mlp", "--centre", "--context-um", "80"]) == 0
    t = json.loads((bare / "heads" / "expression_mlp" / "head.json").read_text())["inputs"]
    assert (t["centre"], t["context_um"], t["smooth_um"]) == (True, 80.0, 0.0)
    assert "reads centre=True, context_um=80, smooth_um=0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit-head", str(bare), "--context-um", "-3"])
    assert "must be a finite number >= 0" in capsys.readouterr().err
    assert main(["predict", str(bare), str(slide), "--out", str(tmp_path / "o")]) == 0


@pytest.mark.parametrize("value", ["-1", "5", "1.5", "nan"])
def test_min_tissue_outside_0_1_is_a_usage_error(tiny_run, tmp_path, capsys, value):
    """``--min-tissue -1`` was accepted and ``5`` said "no pseudo-spot reaches 500 %"
    (issue 26, item 9): refused before anything is read or written."""
    from histoxmodal.cli.main import main

    _, run, slide = tiny_run
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        main(["predict", str(run.path), str(slide), "--out", str(out), "--min-tissue", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--min-tissue" in err and "[0, 1]" in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("value", [-1, 5, float("nan"), True])
def test_min_tissue_outside_0_1_is_refused_by_the_library(tiny_run, tmp_path, value):
    from histoxmodal.errors import ConfigError
    from histoxmodal.workflows.expression_map import predict_slide, predict_slides

    _, run, slide = tiny_run
    with pytest.raises(ConfigError, match=r"--min-tissue .*must be a fraction in \[0, 1\]"):
        predict_slides(run.path, [slide], tmp_path / "many", min_tissue=value)
    with pytest.raises(ConfigError, match=r"must be a fraction in \[0, 1\]"):
        predict_slide(run, slide, tmp_path / "one", min_tissue=value)
    assert not (tmp_path / "many").exists() and not (tmp_path / "one").exists()


def test_held_out_her2st_section_slide_path_matches_evaluate(her2st_paired, data_dir, tmp_path):
    """B4 never seen in training (patient split, fold B): its expression predicted from the H&E
    image alone at its spot centres scores as `evaluate` scores the paired dataset."""
    import anndata as ad

    from histoxmodal.data.normalize import expression_matrix
    from histoxmodal.data.splits import Split
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.evaluate import evaluate
    from histoxmodal.workflows.expression_map import predict_slide
    from histoxmodal.workflows.predict import fit_expression_head
    from histoxmodal.workflows.train import train

    data, manifest = her2st_paired
    split = data / manifest["splits"]["patient"]["file"]
    cfg = config_from_dict({**TINY, "genes": 64, "optim": {**TINY["optim"], "batch_size": 64}})
    run = train(cfg, tmp_path / "run", data=data, split=split, fold="patient=B",
                accelerator="cpu", devices=1)  # fmt: skip
    res = evaluate(run, data, tmp_path / "eval", split=split, fold="patient=B", n_genes=20)
    genes = res["protocol"]["genes"]
    fit_expression_head(run, genes=genes, name="eval20")
    adata = ad.read_h5ad(data / "adata.h5ad")
    rows = Split.load(split).fold("patient=B").test
    b4 = adata[rows]
    assert set(b4.obs["sample"]) == {"B4"}
    mpp = float(b4.obs["patch_source_mpp"].iloc[0])
    assert mpp == pytest.approx(0.6877, abs=1e-3)
    r = predict_slide(run, data_dir / "her2st" / "images" / "B4.jpg", tmp_path / "maps",
                      head="eval20", mpp=mpp, centres=b4.obsm["spatial"])  # fmt: skip
    assert r.status == "ok" and r.n_tiles == 283  # every B4 spot (min_counts=0)
    pred = ad.read_h5ad(tmp_path / "maps" / "B4" / "prediction.h5ad")
    measured = expression_matrix(adata, genes, rows=rows)
    p = np.asarray(pred[:, genes].X, np.float64)
    mine = np.array([np.corrcoef(measured[:, j], p[:, j])[0, 1] for j in range(len(genes))])
    theirs = np.array([res["per_gene_pearson"][g] for g in genes])
    np.testing.assert_allclose(mine, theirs, atol=0.03)
    assert np.abs(mine - theirs).max() < 1e-3  # in fact the same pixels, so the same numbers


def test_a_grid_far_finer_than_the_patch_is_refused_before_any_work(tiny_run, tmp_path, capsys):
    from histoxmodal.cli.main import main
    from histoxmodal.errors import ConfigError
    from histoxmodal.workflows.expression_map import check_grid, predict_slide

    _, run, slide = tiny_run  # 16 µm patches
    out = tmp_path / "maps"
    assert main(["predict", str(run.path), str(slide), "--out", str(out), "--grid-um", "1"]) == 2
    err = capsys.readouterr().err
    assert "--grid-um 1" in err and "--allow-dense-grid" in err and err.count("\n") == 1
    assert not out.exists()
    assert check_grid(4, 16) == 4.0
    with pytest.raises(ConfigError, match="allow-dense-grid"):
        check_grid(3.9, 16)
    assert check_grid(1, 16, allow_dense_grid=True) == 1.0
    # the window count is estimated from the slide's size before the tissue is detected
    from histoxmodal.workflows import expression_map

    r = predict_slide(run, slide, out, grid_um=4)
    assert r.status == "ok"
    orig = expression_map.MAX_GRID_WINDOWS
    try:
        expression_map.MAX_GRID_WINDOWS = (
            1000  # the 512 × 384 µm slide has 129 × 97 windows at 4 µm
        )
        r = predict_slide(run, slide, out, grid_um=4, overwrite=True)
        assert r.status == "failed" and "12,513 windows" in r.reason
    finally:
        expression_map.MAX_GRID_WINDOWS = orig


@pytest.mark.parametrize("damage", ["arrays", "outputs", "panel"])
def test_a_damaged_or_foreign_head_is_one_line(tiny_run, tmp_path, capsys, damage):
    import shutil

    from histoxmodal.cli.main import main

    _, run, slide = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    head = copy / "heads" / "expression_ridge"
    if damage == "arrays":
        data = (head / "arrays.safetensors").read_bytes()
        (head / "arrays.safetensors").write_bytes(data[: len(data) // 2])
        needle = "not a readable safetensors file"
    elif damage == "outputs":
        t = json.loads((head / "head.json").read_text())
        (head / "head.json").write_text(json.dumps({**t, "outputs": {"names": "CD3E"}}))
        needle = "unreadable inputs/outputs"
    else:  # the head of another panel: it names fewer genes than it predicts
        t = json.loads((head / "head.json").read_text())
        t["outputs"]["names"] = t["outputs"]["names"][:3]
        (head / "head.json").write_text(json.dumps(t))
        needle = "lists 3 genes in its head.json"
    rc = main(
        ["predict", str(copy), str(slide), "--out", str(tmp_path / "maps"), "--grid-um", "80"]
    )
    out, err = capsys.readouterr()
    text = out + err
    assert rc in (1, 2) and needle in text and "Traceback" not in text
    assert "fit-head" in text


def test_a_full_disk_stops_predict_with_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    import errno
    import shutil

    from histoxmodal.cli.main import main
    from histoxmodal.workflows import expression_map

    _, run, slide = tiny_run
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(slide, slides / f"{name}.tif")
    calls = []

    def full(*args, **kwargs):
        calls.append(args[2])
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "maps" / "x.png"))

    monkeypatch.setattr(expression_map, "_predict_into", full)
    out = tmp_path / "maps"
    assert main(["predict", str(run.path), str(slides), "--out", str(out), "--grid-um", "80"]) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and "Traceback" not in err
    assert len(calls) == 1  # stopped at the first slide, not one failure per slide
    assert not list(out.glob(".*partial*"))


def test_predict_never_replaces_a_folder_it_did_not_write(tiny_run, tmp_path):
    from histoxmodal.workflows.expression_map import predict_slide

    _, run, slide = tiny_run
    out = tmp_path / "maps"
    (out / "new").mkdir(parents=True)
    (out / "new" / "notes.txt").write_text("mine")
    r = predict_slide(run, slide, out, grid_um=80, overwrite=True)
    assert r.status == "failed" and "did not write" in r.reason
    assert (out / "new" / "notes.txt").read_text() == "mine"


def _seams(spot_px: float, pitch: int, scale: float) -> int:
    """Rows plus columns of background crossing a grid of value-1 squares drawn as predict
    draws them (110 dpi, tight box)."""
    import io

    from PIL import Image

    from histoxmodal.workflows.report import expression_map_figure

    W, H = 12000, 9000
    thumb = np.full((round(H * scale), round(W * scale), 3), 255, np.uint8)
    c = np.arange(0, W - pitch, pitch) + pitch / 2, np.arange(0, H - pitch, pitch) + pitch / 2
    xs, ys = np.meshgrid(*c)
    xy = np.column_stack([xs.ravel(), ys.ravel()]) * scale
    fig = expression_map_figure(thumb, xy, np.ones(len(xy)), spot_px * scale, title="",
                                um_per_px=None, colorbar=False, vmin=0, vmax=2)  # fmt: skip
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, bbox_inches="tight")
    img = np.asarray(Image.open(buf).convert("RGB")).astype(int)
    ys_, xs_ = np.nonzero(np.abs(img - 255).sum(-1) > 30)
    inner = img[ys_.min() + 3 : ys_.max() - 3, xs_.min() + 3 : xs_.max() - 3]
    dev = np.abs(inner - np.median(inner.reshape(-1, 3), axis=0)).sum(-1)
    return int((dev.mean(1) > 50).sum() + (dev.mean(0) > 50).sum())


def test_pseudo_spot_squares_tile_the_grid_without_seams():
    """112 µm windows at 0.688 µm/px are laid at 163 px (whole pixels); the maps draw them at
    that side. Drawn at 112 / 0.688 = 162.79 px they fell short and left 1-px seams."""
    from histoxmodal.tiling.spots import window_px

    assert window_px(112.0, 0.688) == 163 and window_px(16.0, 0.25) == 64
    assert window_px(0.1, 0.5) == 1
    scale = 1536 / 12000
    assert _seams(112.0 / 0.688, 163, scale) > 0  # the old drawing: the check sees seams
    assert _seams(window_px(112.0, 0.688), 163, scale) == 0


def test_squidpy_reads_a_prediction_and_its_morans_i(tiny_run):
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    squidpy = pytest.importorskip("squidpy")

    from histoxmodal.workflows.expression_map import predict_slide

    tmp, run, slide = tiny_run
    r = predict_slide(run, slide, tmp / "maps_sq", grid_um=40, genes=run.genes[:1])
    assert r.status == "ok", r.reason
    a = ad.read_h5ad(tmp / "maps_sq" / "new" / "prediction.h5ad")
    assert list(a.var_names) == run.genes and a.var["morans_i"].notna().all()
    # squidpy on the written file: its neighbours and Moran's I give the values stored
    squidpy.gr.spatial_neighbors(a, coord_type="generic", n_neighs=6)
    table = squidpy.gr.spatial_autocorr(
        a, mode="moran", genes=list(a.var_names), n_perms=None, copy=True
    )
    np.testing.assert_allclose(table.loc[a.var_names, "I"], a.var["morans_i"], rtol=1e-6)
    out = tmp / "scatter.png"
    squidpy.pl.spatial_scatter(a, color=a.var_names[0], library_id="new", save=None)
    matplotlib.pyplot.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_head_saved_with_targets_json_still_predicts(tiny_run, tmp_path):
    """Runs saved before heads kept their genes and inputs in ``head.json`` wrote them to
    ``targets.json`` beside it: the run still lists and loads the head with them."""
    import shutil

    from histoxmodal.workflows.run import Run

    _, run, _ = tiny_run
    copy = tmp_path / "old"
    shutil.copytree(run.path, copy)
    folder = copy / "heads" / "expression_ridge"
    meta = json.loads((folder / "head.json").read_text())
    genes = meta.pop("outputs")["names"]
    meta.pop("inputs")
    (folder / "head.json").write_text(json.dumps(meta))
    legacy = {"genes": genes, "normalization": "log1p_cp10k", "head": "ridge", "centre": True}
    (folder / "targets.json").write_text(json.dumps({**legacy, "context_um": 0.0}))
    old = Run.load(copy)
    assert "expression_ridge" in old.expression_heads
    head = old.load_head("expression_ridge")
    assert list(head.outputs) == genes and head.normalization == "log1p_cp10k"
    assert head.inputs.centre and head.inputs.context_um == 0.0
    (folder / "targets.json").unlink()
    assert "expression_ridge" not in Run.load(copy).expression_heads
    assert "expression_ridge" in Run.load(copy).heads
