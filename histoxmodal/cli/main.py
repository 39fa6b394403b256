"""Entry point of the ``histoxmodal`` command.

Only argparse and the standard library are imported at start-up, so ``histoxmodal --help`` is
instant; each sub-command imports what it needs when it runs. Known errors (bad paths, bad
options, unreadable slides) print one line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from histoxmodal.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_data,
    add_src,
    check_aliases,
    fraction,
    learning_rate,
    non_negative_float,
    positive_float,
    positive_int,
    random_seed,
)
from histoxmodal.version import __version__


def _add_tile_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tile geometry")
    g.add_argument(
        "--mpp-target",
        type=positive_float,
        default=0.5,
        metavar="UM",
        help="µm per pixel of the tiles, > 0 (default 0.5, about 20x); more than 2x finer than "
        "a slide's own pixel size needs --allow-upsample",
    )
    g.add_argument(
        "--allow-upsample",
        action="store_true",
        help="tile at a --mpp-target more than 2x finer than a slide's own µm/px (interpolated "
        "pixels; refused per slide without this flag)",
    )
    g.add_argument(
        "--tile-px", type=int, default=224, metavar="PX", help="tile side in pixels (default 224)"
    )
    g.add_argument(
        "--tile-um",
        type=positive_float,
        default=None,
        metavar="UM",
        help="tile side in µm instead of --mpp-target (target = tile-um / tile-px)",
    )
    g.add_argument(
        "--overlap",
        type=int,
        default=0,
        metavar="PX",
        help="overlap between neighbouring tiles in tile pixels (default 0)",
    )
    g.add_argument(
        "--min-tissue",
        type=fraction,
        default=0.5,
        metavar="FRAC",
        help="minimum tissue fraction of a kept tile, in [0, 1] (default 0.5; 0 keeps all)",
    )
    g.add_argument(
        "--geojson-in",
        default=None,
        metavar="FILE",
        help="tile only inside these annotations instead of the detected tissue: a GeoJSON of "
        "Polygon/MultiPolygon features in level-0 pixels (QuPath's export, or an edited "
        "tissue.geojson); a tile is kept when its centre falls inside one",
    )
    s = p.add_argument_group("slide")
    s.add_argument(
        "--mpp",
        type=positive_float,
        default=None,
        metavar="UM",
        help="level-0 µm per pixel of slides without a pixel size in their metadata "
        "(JPEG/PNG, stripped TIFFs); slides with one keep it unless --mpp-override",
    )
    s.add_argument(
        "--mpp-override",
        action="store_true",
        help="--mpp replaces the metadata of every slide, not only of slides without one",
    )
    s.add_argument(
        "--mpp-csv",
        default=None,
        metavar="FILE",
        help="CSV with columns slide,mpp (file name, stem or path; as TRIDENT): the pixel "
        "size of the slides it lists, over their metadata and --mpp",
    )
    s.add_argument(
        "--allow-implausible-mpp",
        action="store_true",
        help="accept a pixel size outside 0.1-10 µm/px",
    )
    s.add_argument(
        "--reader",
        default=None,
        choices=["openslide", "tifffile", "pillow"],
        help="force a slide-reader backend (default: chosen per file)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole ``histoxmodal`` argument parser (cheap: nothing heavy is imported)."""
    parser = argparse.ArgumentParser(
        prog="histoxmodal",
        description="Spatial transcriptomics and medical multimodal learning toolkit.",
    )
    parser.add_argument("--version", action="version", version=f"histoxmodal {__version__}")
    _add_verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "tile",
        help="detect tissue and tile slides at a physical resolution",
        description="Detect tissue and tile whole-slide images. Writes OUT/<slide name>/ with "
        "coords.h5, manifest.json, overlay.png, tissue.geojson (and tiles.h5 with "
        "--save-tiles). Finished slides are skipped when the run is restarted.",
    )
    t.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or folders of slides")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_tile_options(t)
    r = t.add_argument_group("run")
    r.add_argument(
        "--save-tiles",
        action="store_true",
        help="also store tile pixels in tiles.h5 (readable by index)",
    )
    r.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="parallel workers: processes over slides, or threads within one slide",
    )
    r.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="process shard K of N (0-based) of the sorted slide list, or 'auto' "
        "from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT",
    )
    r.add_argument(
        "--overwrite", action="store_true", help="redo slides that already have finished output"
    )

    d = sub.add_parser(
        "demo",
        help="the whole path on generated data: slides, tiles, paired dataset, training, report",
        description="Generate slides with typed tissue regions and Visium-like spots whose "
        "expression follows the tissue, then tile, build the paired dataset, train a small "
        "contrastive model and evaluate it on a held-out sample, writing DIR/report/report.html "
        "(about a minute on 2 CPU cores; rerunning resumes). With --src PATH the same path runs "
        "on a "
        "her2st folder.",
    )
    d.add_argument(
        "--out",
        default="histoxmodal_demo",
        metavar="DIR",
        help="output folder (default ./histoxmodal_demo)",
    )
    add_src(d, "a her2st-layout folder instead of generated data")
    d.add_argument(
        "--medical",
        action="store_true",
        help="the medical path instead: a generated radiograph + ECG + report cohort, Symile "
        "vs pairwise CLIP, zero-shot accuracy (DIR/metrics.json, DIR/report.html)",
    )
    d.add_argument("--seed", type=int, default=0, help="seed of the generated data (default 0)")
    d.add_argument(
        "--patients", type=int, default=1000, metavar="N", help="--medical cohort size (1000)"
    )
    d.add_argument("--workers", type=int, default=1, metavar="N", help="tiling processes")
    d.add_argument(
        "--max-epochs", type=int, metavar="N", help="training epochs (default: the config's)"
    )

    bd = sub.add_parser(
        "build",
        help="build a paired dataset (spot patches + expression) from a recipe",
        description="Read spatial-omics samples with a recipe (--list; your own in "
        "$HISTOXMODAL_RECIPES or a .yaml path), cut one "
        "image patch per spot, harmonise gene panels, and write DIR/adata.h5ad, "
        "DIR/patches.h5, DIR/manifest.json and DIR/splits/. Restarting resumes.",
    )
    bd.add_argument("--recipe", metavar="NAME", help="recipe name or path to a recipe .yaml")
    bd.add_argument("--list", action="store_true", help="list the recipes and exit")
    bd.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="PATH",
        help="sample folder/file, or a folder of samples (repeatable)",
    )
    bd.add_argument("--out", metavar="DIR", help="output folder")
    bd.add_argument(
        "--manifest", metavar="FILE", help="cohort recipe: CSV/Parquet listing the records"
    )
    bd.add_argument(
        "--anchor", metavar="MODALITY", help="cohort recipe: modality defining the rows (cxr)"
    )
    bd.add_argument(
        "--patch-um",
        type=float,
        default=None,
        metavar="UM",
        help="field of view of each patch (recipe default, usually 112)",
    )
    bd.add_argument(
        "--patch-px",
        type=int,
        default=None,
        metavar="PX",
        help="patch size in pixels (recipe default, usually 224)",
    )
    bd.add_argument(
        "--genes",
        choices=["intersection", "union"],
        default=None,
        help="gene panel across samples (recipe default)",
    )
    bd.add_argument(
        "--min-counts",
        type=int,
        default=None,
        metavar="N",
        help="drop spots with fewer total counts (recipe default)",
    )
    bd.add_argument(
        "--all-spots", action="store_true", help="keep spots the source marks as outside tissue"
    )
    bd.add_argument(
        "--image",
        metavar="PATH",
        help="full-resolution image of a single --src (Visium, Xenium, h5ad)",
    )
    bd.add_argument(
        "--alignment",
        metavar="CSV",
        help="Xenium: 10x image-to-Xenium alignment matrix for --image",
    )
    bd.add_argument(
        "--mpp",
        type=positive_float,
        default=None,
        metavar="UM",
        help="µm per full-resolution pixel, > 0, overriding what the data says",
    )
    bd.add_argument(
        "--allow-lowres",
        action="store_true",
        help="cut patches even from coarse (hires/lowres) images",
    )
    bd.add_argument("--workers", type=int, default=1, metavar="N", help="reading threads")
    bd.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")

    ex = sub.add_parser(
        "export",
        help="export a paired dataset (Parquet for Hugging Face datasets, HEST h5, SpatialData)",
        description="Parquet: one row per spot with the patch as PNG, raw counts and metadata "
        "(load with datasets.load_dataset('parquet', data_dir='OUT/data')). "
        "hest: patches/<sample>.h5 (img, coords, barcode) and st/<sample>.h5ad. "
        "spatialdata: one OUT.zarr (images, spot circles, table) for spatialdata.read_zarr.",
    )
    add_data(ex)
    ex.add_argument(
        "--to",
        choices=["parquet", "hest", "spatialdata"],
        required=True,
        help="format: parquet (Hugging Face datasets), hest (HEST h5 + h5ad) or spatialdata (zarr)",
    )
    ex.add_argument(
        "--out", required=True, metavar="OUT", help="output folder (spatialdata: the .zarr store)"
    )
    ex.add_argument(
        "--no-full-res", dest="full_res", action="store_false",
        help="spatialdata: only the hires/lowres images, not the full-resolution H&E",
    )  # fmt: skip
    ex.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT when it holds an earlier export of this format (never another folder)",
    )

    tr = sub.add_parser(
        "train",
        help="contrastive training of image and gene towers",
        description="Train from a YAML config or a bundled example (--list). Writes OUT with "
        "config.json, genes.txt, csv/metrics.csv, tensorboard/, checkpoints/ and "
        "model.safetensors; --resume continues an interrupted or finished run.",
    )
    tr.add_argument("config", nargs="?", metavar="CONFIG", help="YAML file or example name")
    tr.add_argument("--list", action="store_true", help="list the bundled example configs")
    tr.add_argument("--data", metavar="DIR", help="paired dataset (histoxmodal build)")
    tr.add_argument("--out", metavar="RUN_DIR", help="run folder")
    tr.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        metavar="N",
        help="epochs to train, >= 1 (default: the config's optim.max_epochs)",
    )
    tr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    tr.add_argument(
        "--print-config", nargs="?", const="yaml", choices=("yaml", "json"), default=None,
        metavar="yaml|json",
        help="print the resolved config (CONFIG + --set, --data, --max-epochs) and exit",
    )  # fmt: skip
    tr.add_argument(
        "--split",
        default=None,
        metavar="FILE",
        help="split file choosing the training rows (default: the dataset's random)",
    )
    tr.add_argument(
        "--fold",
        default="0",
        metavar="K|NAME",
        help="fold index or name, e.g. sample=C5 (default 0)",
    )
    tr.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (Lightning)")
    tr.add_argument("--devices", default="auto", help="devices per node (Lightning)")
    tr.add_argument(
        "--num-nodes", type=positive_int, default=1, help="nodes (Lightning; SLURM detected)"
    )

    pr = sub.add_parser(
        "predict",
        help="whole-slide expression maps of new slides with a trained run",
        description="Detect tissue, lay pseudo-spots (the run's field of view every --grid-um) "
        "over it, embed them with the run's image tower and predict every gene of the run's "
        "saved expression head. Writes OUT/<slide>/prediction.h5ad (scanpy/squidpy-ready), a "
        "heatmap PNG per --genes gene and manifest.json; a rerun skips finished slides.",
    )
    pr.add_argument("run", metavar="RUN", help="run folder written by histoxmodal train")
    pr.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or folders")
    pr.add_argument("--out", required=True, metavar="DIR", help="output folder")
    pr.add_argument(
        "--grid-um", type=positive_float, default=None, metavar="UM",
        help="pseudo-spot pitch in µm, > 0 (default: the run's patch field of view); below a "
        "quarter of it needs --allow-dense-grid",
    )  # fmt: skip
    pr.add_argument(
        "--allow-dense-grid", action="store_true",
        help="allow a --grid-um below a quarter of the patch, or over 2 million grid windows "
        "on a slide",
    )  # fmt: skip
    pr.add_argument(
        "--genes", default=None, metavar="G1,G2", help="genes to draw as heatmaps (default: "
        "the 4 most variable predicted); every gene is predicted either way",
    )  # fmt: skip
    pr.add_argument("--mpp", type=positive_float, default=None, metavar="UM", help="level-0 µm/px")
    pr.add_argument("--head", default=None, help="saved head name (default expression_ridge)")
    pr.add_argument(
        "--min-tissue", type=fraction, default=0.5, metavar="FRAC",
        help="least tissue fraction of a pseudo-spot, in [0, 1] (default 0.5)",
    )  # fmt: skip
    pr.add_argument("--batch-size", type=positive_int, default=64, help="patches per pass")
    pr.add_argument("--overwrite", action="store_true", help="redo finished slides")

    fh = sub.add_parser(
        "fit-head",
        help="fit and save a run's expression head (for histoxmodal predict)",
        description="Fit an expression head on the run's training spots, for every gene of its "
        "panel, and save it in RUN/heads/expression_<head>.",
    )
    fh.add_argument("run", metavar="RUN", help="run folder written by histoxmodal train")
    fh.add_argument(
        "--head", default="ridge", choices=("ridge", "mlp", "retrieval"), help="head type"
    )
    fh.add_argument(
        "--centre",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read section-centred embeddings (default: the run config's head.centre)",
    )
    fh.add_argument(
        "--context-um",
        type=non_negative_float,
        default=None,
        metavar="UM",
        help="ridge/mlp: neighbour context radius in µm, 0 = off (default: head.context_um)",
    )
    fh.add_argument(
        "--smooth-um",
        type=non_negative_float,
        default=None,
        metavar="UM",
        help="retrieval: smoothing radius in µm, 0 = off (default: head.smooth_um)",
    )

    mi = sub.add_parser(
        "mil",
        help="slide-level mutation/clinical heads on tile features (train, predict)",
        description="Multiple-instance learning on histoxmodal features output: cross-validation "
        "grouped by patient and stratified by label (AUROC, balanced accuracy, 95 % CI over "
        "folds x seeds), a head fitted on every slide, attention maps; then calls on new slides.",
    )
    msub = mi.add_subparsers(dest="mil", required=True, metavar="ACTION")
    mt = msub.add_parser("train", help="cross-validate and fit a MIL head on labelled slides")
    mt.add_argument("features", metavar="FEATURES_DIR", help="histoxmodal features --out folder")
    mt.add_argument("--labels", required=True, metavar="CSV", help="CSV: slide, patient, targets")
    mt.add_argument("--target", required=True, help="the label column to learn, e.g. KRAS")
    mt.add_argument("--out", required=True, metavar="MIL_RUN", help="MIL run folder to create")
    mt.add_argument("--model", default="abmil", choices=("abmil", "mean"),
                    help="gated-attention MIL or mean pooling (default abmil)")  # fmt: skip
    mt.add_argument("--folds", type=positive_int, default=5, help="CV folds (default 5)")
    mt.add_argument("--seeds", type=random_seed, nargs="+", default=[0, 1, 2], metavar="S",
                    help="CV repeats, one per distinct seed in [0, 2**32-1] (default 0 1 2)",
                    )  # fmt: skip
    mt.add_argument("--epochs", type=positive_int, default=None, help="training epochs")
    mt.add_argument("--lr", type=learning_rate, default=None, help="learning rate, in (0, 1)")
    mt.add_argument("--overwrite", action="store_true", help="replace an existing MIL run")
    mp = msub.add_parser("predict", help="call new slides with a trained MIL run")
    mp.add_argument("run", metavar="MIL_RUN", help="folder written by histoxmodal mil train")
    mp.add_argument("features", metavar="FEATURES_DIR", help="features of the slides to call")
    mp.add_argument("--out", required=True, metavar="CSV",
                    help="calls CSV (attention maps in <stem>_attention/)")  # fmt: skip

    pg = sub.add_parser(
        "pretrain-genes",
        help="pretrain a gene model (scVI, DRVI) on every section with counts",
        description="Train scVI or DRVI on every section of --src that has counts, paired with "
        "an image or not (her2st: all 35 sections, 30 of them without an image), with "
        "--batch-key as the batch its decoder corrects. Writes OUT/model.pt in the library's "
        "own format, OUT/genes.txt and OUT/gene_model.json (sections, source hashes, "
        "versions). A training config uses it with model.gene_encoder=gene_drvi (or gene_scvi) "
        "and model.gene_weights=OUT.",
    )
    add_src(pg, "the sections: a her2st-layout folder, or .h5ad file(s) with --recipe h5ad",
             required=True)  # fmt: skip
    pg.add_argument("--recipe", choices=["her2st", "h5ad"], default="her2st",
                    help="how --src is read (default her2st)")  # fmt: skip
    pg.add_argument("--model", choices=["drvi", "scvi"], default="drvi",
                    help="the gene model (default drvi; needs histoxmodal[drvi])")  # fmt: skip
    pg.add_argument("--batch-key", default="patient", metavar="COLUMN",
                    help="obs column of the batches (default patient)")  # fmt: skip
    pg.add_argument("--genes", type=positive_int, default=2000, metavar="N",
                    help="highly variable genes to model (default 2000)")  # fmt: skip
    pg.add_argument("--max-epochs", type=positive_int, default=None, metavar="N",
                    help="epochs (default: drvi 60, scvi 100; measured to finish her2st in "
                    "under 15 minutes on 2 cores)")  # fmt: skip
    pg.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    pg.add_argument("--out", required=True, metavar="DIR", help="the gene model folder")
    pg.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from its last epoch")  # fmt: skip
    pg.add_argument("--overwrite", action="store_true", help="replace an earlier gene model")

    em = sub.add_parser("embed", help="image and gene embeddings of a dataset with a trained run")
    em.add_argument("run", metavar="RUN", help="run folder written by histoxmodal train")
    add_data(em)
    em.add_argument("--out", required=True, metavar="FILE", help="output .h5ad (+ .npy beside)")
    em.add_argument(
        "--batch-size", type=positive_int, default=128, help="spots per forward pass (default 128)"
    )

    ev = sub.add_parser(
        "evaluate",
        help="metrics.json and an HTML report of a trained run on a dataset",
        description="Retrieval (whole test set and in-batch), expression prediction with a "
        "ridge head on the image embeddings, and batch mixing. Without --split the "
        "whole dataset is the test set and the head is fitted on the run's "
        "training spots. On a cohort dataset (radiograph/ECG/report): zero-shot accuracy "
        "of each modality given the others and Recall@k per pair, on the held-out patients.",
    )
    ev.add_argument("run", metavar="RUN", help="run folder written by histoxmodal train")
    add_data(ev)
    ev.add_argument("--split", default=None, metavar="FILE", help="split file with the test rows")
    ev.add_argument(
        "--fold",
        default=None,
        metavar="K|NAME",
        help="fold of --split (default: the run's own fold when it trained on that split, else 0)",
    )
    ev.add_argument(
        "--allow-overlap",
        action="store_true",
        help="score test spots the run trained on (refused by default: inflated scores); the "
        "count is stamped in metrics.json and the report",
    )
    ev.add_argument(
        "--out", required=True, metavar="DIR", help="output folder: metrics.json and report.html"
    )
    ev.add_argument(
        "--in-batch-size",
        type=positive_int,
        default=128,
        metavar="B",
        help="batch size of the in-batch retrieval metrics (default 128)",
    )

    from histoxmodal.cli.features import add_features_parser

    add_features_parser(sub)

    b = sub.add_parser("bench", help="performance benchmarks on this machine")
    bsub = b.add_subparsers(dest="bench", metavar="BENCH")
    bf = bsub.add_parser(
        "features",
        help="tiles/s of histoxmodal features against the encoder's forward pass alone",
        description="Tiles/s of the whole features command on a generated slide (open, tissue, "
        "grid, decode, resize, encode, write) against the encoder's forward pass alone on the "
        "same number of pre-decoded tiles, in the same process, and their ratio.",
    )
    bf.add_argument("--encoder", default="timm:resnet18", help="encoder (default timm:resnet18)")
    bf.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    bf.add_argument("--precision", default="auto", help="auto, 32, bf16 or 16 (default auto)")
    bf.add_argument(
        "--batch-size", type=positive_int, default=32, help="tiles per forward pass (default 32)"
    )
    bf.add_argument("--workers", type=positive_int, default=2, help="decoding threads")
    bf.add_argument("--side", type=positive_int, default=32768, help="slide side in px (32768)")
    bf.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds (3)")
    bf.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    bp = bsub.add_parser(
        "predict",
        help="seconds and peak memory of a whole-slide expression map (100k x 100k px)",
        description="histoxmodal predict with a tiny trained run on a generated slide, timed, "
        "with its peak resident memory, against the run's image tower alone on the same "
        "number of pseudo-spots, in the same process.",
    )
    bp.add_argument("--side", type=positive_int, default=100_000, help="slide side in px")
    bp.add_argument("--slide", default=None, metavar="SLIDE", help="an existing slide instead")
    bp.add_argument("--grid-um", type=float, default=100.0, help="pseudo-spot pitch (100 µm)")
    bp.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        help="pseudo-spots per forward pass (default 64)",
    )
    bp.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    bp.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    bt = bsub.add_parser(
        "tiling",
        help="tile extraction and the whole tile command vs a plain OpenSlide loop; tissue "
        "detection",
        description="Tile extraction throughput against a plain OpenSlide read_region loop over "
        "the same tiles in the same process (1 and 2 workers); the whole 'tile --save-tiles' "
        "command against a plain OpenSlide loop, each in a fresh process; and tissue detection "
        "plus grid time and peak memory on generated slides of growing size.",
    )
    bt.add_argument(
        "slide",
        nargs="?",
        default=None,
        metavar="SLIDE",
        help="slide to measure extraction on (default: a generated slide)",
    )
    bt.add_argument("--repeats", type=int, default=5, help="measurement rounds (default 5)")
    bt.add_argument(
        "--min-seconds",
        type=float,
        default=1.0,
        help="minimum duration of one measurement (default 1.0)",
    )
    bt.add_argument(
        "--large",
        type=int,
        default=100_000,
        metavar="PX",
        help="side of the large generated slide for tissue detection (default 100000; 0 skips)",
    )
    bt.add_argument(
        "--max-tiles",
        type=int,
        default=2000,
        help="tiles used for the extraction measurement (default 2000)",
    )
    bt.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    bh = bsub.add_parser(
        "hescape",
        help="HESCAPE's grid: image tower x gene tower on one dataset and split",
        description="Train every image tower x gene tower pair with one recipe on the "
        "training fold and measure it on the test fold as HESCAPE does: Recall@1/5/10 both "
        "ways in-batch at B=64 and over the full gallery, HEST's expression probe (PCA 256, "
        "ridge alpha=100/(d*n_genes), top-50 HVGs; Pearson pooled and per sample) and "
        "scib-metrics batch mixing beside kNN purity. Writes OUT/hescape_bench.json, "
        "OUT/hescape_table.md and OUT/report.html; finished cells are kept on a rerun.",
    )
    add_data(bh, positional=False)
    bh.add_argument("--image-encoders", required=True, metavar="A,B",
                    help="image towers, comma-separated (histoxmodal models)")  # fmt: skip
    bh.add_argument("--gene-encoders", required=True, metavar="A,B",
                    help="gene towers, comma-separated, e.g. gene_mlp,gene_drvi")  # fmt: skip
    bh.add_argument("--weights", nargs="+", default=None, metavar="NAME=PATH",
                    help="local weights per tower: uni=uni.bin gene_drvi=DIR")  # fmt: skip
    bh.add_argument("--random-weights", action="store_true",
                    help="foundation image towers from random weights (tests)")  # fmt: skip
    bh.add_argument("--loss", choices=["clip", "siglip"], default=None,
                    help="contrastive loss (default the config's)")  # fmt: skip
    bh.add_argument("--config", default="her2st", metavar="NAME|YAML",
                    help="the training recipe of every cell (default her2st)")  # fmt: skip
    bh.add_argument("--split", default=None, metavar="FILE",
                    help="split file (default the dataset's patient split)")  # fmt: skip
    bh.add_argument("--fold", default=None, help="fold of --split (default its first)")
    bh.add_argument("--epochs", type=positive_int, default=None, help="epochs per cell")
    bh.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    bh.add_argument("--out", required=True, metavar="DIR", help="output folder")
    bds = bsub.add_parser(
        "dataset",
        help="training-loader throughput of a paired dataset",
        description="Samples/s of the PairedDataset DataLoader (flips + rotations, with stain "
        "jitter, with float normalization) against raw reads of the same store.",
    )
    add_data(bds)
    bds.add_argument(
        "--workers", type=int, default=2, help="DataLoader worker processes (default 2)"
    )
    bds.add_argument("--batch-size", type=int, default=64, help="samples per batch (default 64)")
    bds.add_argument(
        "--min-seconds",
        type=float,
        default=5.0,
        help="minimum duration of one measurement (default 5.0)",
    )
    bds.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    brt = bsub.add_parser(
        "retrieval",
        help="tiled whole-test-set retrieval vs a full N x N argsort",
        description="Ranks of 100,000 x 100,000 embeddings in tiles (time and memory), and "
        "against the full similarity matrix + argsort at a size where it fits.",
    )
    brt.add_argument("--n", type=int, default=100_000, help="embeddings per side (default 100000)")
    brt.add_argument("--dim", type=int, default=128, help="embedding dimension (default 128)")
    brt.add_argument(
        "--baseline-n",
        type=int,
        default=10_000,
        help="size of the full N x N argsort comparison (default 10000)",
    )
    brt.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    btr = bsub.add_parser(
        "train",
        help="training steps/s: frozen tower end to end vs cached features",
        description="Steps/s and pairs/s of contrastive training with a frozen image tower run "
        "every step, against the same model training from cached tower features, "
        "and the time of one epoch from the cache.",
    )
    add_data(btr)
    btr.add_argument(
        "--encoder", default="timm:resnet18", help="frozen image tower (default timm:resnet18)"
    )
    btr.add_argument(
        "--input-size", type=int, default=112, help="tower input side in px (default 112)"
    )
    btr.add_argument("--batch-size", type=int, default=64, help="pairs per step (default 64)")
    btr.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    btr.add_argument(
        "--workers", type=int, default=2, help="DataLoader worker processes (default 2)"
    )
    btr.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    bh = bsub.add_parser(
        "her2st",
        help="the her2st benchmark: baselines vs contrastive training and batch corrections",
        description="Leave-one-section-out over patient C and cross-patient (C -> B4): "
        "hand-crafted features + ridge, a random tower, contrastive training without and with "
        "each batch correction; Recall@5 both ways, Pearson top-50, batch purity. Writes "
        "OUT/her2st_bench.{json,md}; a killed run resumes.",
    )
    add_src(bh, "a her2st-layout folder, e.g. ../shared/data/her2st", required=True)
    bh.add_argument(
        "--out",
        default="bench_her2st",
        metavar="DIR",
        help="output folder (default ./bench_her2st)",
    )
    bh.add_argument(
        "--epochs",
        type=int,
        default=6,
        help="training epochs of each contrastive model (default 6)",
    )
    bh.add_argument("--seed", type=int, default=0, help="seed of splits and training (default 0)")
    bh.add_argument(
        "--config",
        default=None,
        metavar="NAME|YAML",
        help="also run this training config through the protocol, as one more row "
        "(e.g. her2st_small or my.yaml); its own epochs",
    )
    bh.add_argument(
        "--folds",
        default=None,
        metavar="LIST",
        help="only these folds, comma-separated (default all: patient=B and sample=C2..C5), "
        "e.g. --folds sample=C3,patient=B",
    )
    bh.add_argument(
        "--only-config",
        action="store_true",
        help="train only the --config rows (the config; without its batch correction, on "
        "cross_patient; by direct regression, no contrastive loss) beside the two baselines, "
        "not the built-in rows",
    )
    bh.add_argument(
        "--patch-um",
        type=float,
        default=112.0,
        metavar="UM",
        help="µm of tissue in each patch, for every row (hand-crafted included; default 112)",
    )
    bh.add_argument(
        "--patch-px",
        type=int,
        default=64,
        metavar="PX",
        help="pixels per patch side (default 64); the her2st config wants --patch-um 224 "
        "--patch-px 128",
    )
    bti = bsub.add_parser(
        "tissue",
        help="tissue detection recall/specificity against real spot tables",
        description="Recall (share of on-tissue spot centres inside the mask) and specificity "
        "(share of off-tissue spots outside it) of each tissue method on the her2st sections "
        "with an image and the Visium heart of the shared data.",
    )
    add_src(bti, "the shared data folder (her2st/, visium/ ...)", required=True)
    bti.add_argument("--methods", default=None, metavar="M1,M2", help="tissue methods to compare")
    bti.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    from histoxmodal.cli.examples import add_examples

    add_examples(parser, "")
    for p in _subparsers(parser):
        _add_verbosity(p, top=False)
        add_examples(p, p.prog.removeprefix(parser.prog).strip())
    return parser


def _add_verbosity(p: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v``/``-q`` on ``p``; a sub-command's own counts are added to the top-level ones."""
    prefix = "" if top else "sub_"
    default = 0 if top else argparse.SUPPRESS
    p.add_argument(
        "-v", "--verbose", action="count", default=default, dest=f"{prefix}verbose",
        help="more logging: -v info and library tips, -vv debug",
    )  # fmt: skip
    p.add_argument(
        "-q", "--quiet", action="count", default=default, dest=f"{prefix}quiet",
        help="less logging: -q errors only, -qq nothing but critical errors",
    )  # fmt: skip


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every sub-command parser below ``parser``, depth first, each once (aliases share one)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found.extend(_subparsers(child))
    return found


def verbosity(args: argparse.Namespace) -> int:
    """The net ``-v`` count minus the ``-q`` count, wherever on the line they were given."""
    v = getattr(args, "verbose", 0) + getattr(args, "sub_verbose", 0)
    return v - getattr(args, "quiet", 0) - getattr(args, "sub_quiet", 0)


def log_level(verbosity: int) -> int:
    """Root logging level of a net verbosity: 0 WARNING, 1 INFO, 2+ DEBUG, -1 ERROR, -2 CRITICAL."""
    if verbosity >= 2:
        return logging.DEBUG
    return {1: logging.INFO, 0: logging.WARNING, -1: logging.ERROR}.get(verbosity, logging.CRITICAL)


def _setup_logging(verbosity: int) -> None:
    from histoxmodal.cli.logs import setup_logging

    setup_logging(verbosity, log_level(verbosity))


def _run_bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``histoxmodal bench NAME``: the typed benchmark function with the parsed options."""
    if args.bench == "retrieval":
        from histoxmodal.bench.retrieval import run_retrieval_bench

        return run_retrieval_bench(
            n=args.n, dim=args.dim, baseline_n=args.baseline_n, json_path=args.json
        )
    if args.bench == "train":
        from histoxmodal.bench.train import run_train_bench

        return run_train_bench(
            args.data,
            encoder=args.encoder,
            input_size=args.input_size,
            batch_size=args.batch_size,
            steps=args.steps,
            workers=args.workers,
            json_path=args.json,
        )
    if args.bench == "hescape":
        from histoxmodal.bench.hescape import format_table, parse_weights, run_hescape_bench

        result = run_hescape_bench(
            args.data,
            args.out,
            image_encoders=[e.strip() for e in args.image_encoders.split(",") if e.strip()],
            gene_encoders=[e.strip() for e in args.gene_encoders.split(",") if e.strip()],
            weights=parse_weights(args.weights),
            loss=args.loss,
            config=args.config,
            split=args.split,
            fold=args.fold,
            epochs=args.epochs,
            seed=args.seed,
            random_weights=args.random_weights,
        )
        print(format_table(result))
        print(f"report: {Path(args.out) / 'report.html'}")
        return EXIT_OK
    if args.bench == "her2st":
        from histoxmodal.bench.her2st import run_her2st_bench

        return run_her2st_bench(
            args.src,
            out=args.out,
            epochs=args.epochs,
            seed=args.seed,
            config=args.config,
            folds=[f.strip() for f in args.folds.split(",") if f.strip()] if args.folds else None,
            only_config=args.only_config,
            patch_um=args.patch_um,
            patch_px=args.patch_px,
        )
    if args.bench == "tissue":
        from histoxmodal.bench.tissue import BENCH_METHODS, run_tissue_bench

        methods = args.methods.split(",") if args.methods else BENCH_METHODS
        return run_tissue_bench(args.src, methods=methods, json_path=args.json)
    if args.bench == "features":
        from histoxmodal.bench.features import run_features_bench

        return run_features_bench(
            encoder=args.encoder,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            workers=args.workers,
            side=args.side,
            repeats=args.repeats,
            json_path=args.json,
        )
    if args.bench == "predict":
        from histoxmodal.bench.predict import run_predict_bench

        return run_predict_bench(
            side=args.side, grid_um=args.grid_um, batch_size=args.batch_size,
            device=args.device, slide=args.slide, json_path=args.json,
        )  # fmt: skip
    if args.bench == "dataset":
        from histoxmodal.bench.dataset import run_dataset_bench

        return run_dataset_bench(
            args.data,
            workers=args.workers,
            batch_size=args.batch_size,
            min_seconds=args.min_seconds,
            json_path=args.json,
        )
    if args.bench != "tiling":
        parser.parse_args(["bench", "--help"])
    from histoxmodal.bench.tiling import run_tiling_bench

    return run_tiling_bench(
        args.slide,
        repeats=args.repeats,
        min_seconds=args.min_seconds,
        large=args.large,
        max_tiles=args.max_tiles,
        json_path=args.json,
    )


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands directly below ``parser``, by name."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs[0].choices) if subs else {}


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, extras) -> None:
    """Report unknown options with the usage of the (sub-)command they were given to and the
    closest option names, not the top-level usage."""
    target = parser
    for name in ("command", "bench", "mil"):
        value = getattr(args, name, None)
        choices = _commands(target)
        if value is None or value not in choices:
            break
        target = choices[value]
    _report_unknown(target, extras)


def _report_unknown(target: argparse.ArgumentParser, extras) -> None:
    import difflib

    options = [o for a in target._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for e in extras:
        if e.startswith("-"):
            close = difflib.get_close_matches(e.split("=")[0], options, n=2, cutoff=0.75)
            if close:
                hints.append(f"{e}: did you mean {' or '.join(close)}?")
    target.error(
        f"unrecognized arguments: {' '.join(extras)}"
        + (f" ({'; '.join(hints)})" if hints else f"; see {target.prog} --help")
    )


def _unknown_first(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Name an unknown ``--option`` before argparse complains about missing arguments:
    ``histoxmodal tile --bogus`` says ``--bogus`` is unknown (with close matches), not only
    that SLIDE and --out are missing."""
    target, i = parser, 0
    while i < len(argv) and argv[i] in _commands(target):  # the (nested) command
        target, i = _commands(target)[argv[i]], i + 1
    if target is parser:
        return
    options = [o for a in target._actions for o in a.option_strings]
    unknown = []
    for token in argv[i:]:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if name.startswith("--") and not any(o.startswith(name) for o in options):
            unknown.append(token)
    if unknown:
        _report_unknown(target, unknown)


def _printable_streams() -> None:
    """Never fail on a character the terminal's encoding lacks (µ under ``PYTHONIOENCODING=
    ascii``, or a C locale): it is printed escaped instead of ending the run."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.errors or "strict") == "strict":
            with contextlib.suppress(ValueError, OSError):  # closed, or cannot change
                stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 some work failed, 2 bad usage).

    With ``-q`` only errors are printed: tables and metric dumps are dropped, and the lines
    naming a failed or busy item go to stderr.
    """
    stdout = sys.stdout
    try:
        return _main(argv)
    finally:
        sys.stdout = stdout


class _ErrorsOnly:
    """A stdout for ``-q``: passes only the lines that report a failed or busy item, to
    stderr."""

    def __init__(self, err) -> None:
        self.err, self.buf = err, ""

    def write(self, text: str) -> int:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if line.startswith(("failed: ", "busy: ")):
                self.err.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.err.flush()


def _main(argv: Sequence[str] | None) -> int:
    _printable_streams()
    parser = build_parser()
    _unknown_first(parser, list(sys.argv[1:] if argv is None else argv))
    args, extras = parser.parse_known_args(argv)
    if extras:
        _unrecognized(parser, args, extras)  # exits 2 with the command's usage
    _setup_logging(verbosity(args))
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    usage_error = check_aliases(args)
    if usage_error:
        print(usage_error, file=sys.stderr)
        return EXIT_USAGE
    from histoxmodal.errors import HistoxmodalError

    if verbosity(args) < 0:
        sys.stdout = _ErrorsOnly(sys.stderr)  # type: ignore[assignment]
    try:
        if args.command == "tile":
            from histoxmodal.cli.tile import run_tile

            return run_tile(args)
        if args.command == "build":
            from histoxmodal.cli.build import run_build

            return run_build(args)
        if args.command == "train":
            from histoxmodal.cli.train import run_train

            return run_train(args)
        if args.command in ("predict", "fit-head"):
            from histoxmodal.cli.predict import run_fit_head, run_predict

            return run_predict(args) if args.command == "predict" else run_fit_head(args)
        if args.command in ("features", "models"):
            from histoxmodal.cli.features import run_features, run_models

            return run_features(args) if args.command == "features" else run_models(args)
        if args.command == "mil":
            from histoxmodal.cli.mil import run_mil

            return run_mil(args)
        if args.command == "pretrain-genes":
            from histoxmodal.cli.pretrain_genes import run_pretrain_genes

            return run_pretrain_genes(args)
        if args.command == "embed":
            from histoxmodal.workflows.embed import embed

            a = embed(args.run, args.data, args.out, batch_size=args.batch_size)
            print(f"wrote {a.n_obs} image and gene embeddings to {args.out}")
            return EXIT_OK
        if args.command == "evaluate":
            from histoxmodal.workflows.evaluate import evaluate

            r = evaluate(
                args.run,
                args.data,
                args.out,
                split=args.split,
                fold=args.fold,
                in_batch_size=args.in_batch_size,
                allow_overlap=args.allow_overlap,
            )
            for k, v in r["metrics"].items():
                print(f"{k:<52} {v:.4f}" if isinstance(v, float) else f"{k:<52} {v}")
            print(f"report: {Path(args.out) / 'report.html'}")
            return EXIT_OK
        if args.command == "export":
            from histoxmodal.workflows.export import export_hest, export_parquet

            if args.to == "spatialdata":
                from histoxmodal.workflows.export import export_spatialdata

                files = export_spatialdata(
                    args.data, args.out, full_res=args.full_res, overwrite=args.overwrite
                )
            else:
                exp = export_parquet if args.to == "parquet" else export_hest
                files = exp(args.data, args.out, overwrite=args.overwrite)
            print(f"wrote {len(files)} files to {args.out}")
            return EXIT_OK
        if args.command == "demo":
            from histoxmodal.cli.demo import run_demo

            return run_demo(args)
        if args.command == "bench":
            return _run_bench(parser, args)
    except (HistoxmodalError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"histoxmodal: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # `histoxmodal models | head`: the reader left
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
            return EXIT_OK
        from histoxmodal.fileutil import DISK_ERRNOS

        if exc.errno not in DISK_ERRNOS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"histoxmodal: error: cannot write{where}: {exc.strerror or exc} "
            f"({DISK_ERRNOS[exc.errno]}); nothing partial is kept as finished output, rerun "
            "once there is room (or with a writable --out)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during tiling (SLURM preemption)
        signum = getattr(exc, "signum", 2)
        print(
            f"histoxmodal: interrupted ({signal.Signals(signum).name}); finished work is kept, "
            "rerun to resume",
            file=sys.stderr,
        )
        return 128 + signum
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
