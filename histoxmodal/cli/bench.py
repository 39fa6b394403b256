"""``histoxmodal bench``: the performance benchmarks of :mod:`histoxmodal.bench`, one
sub-command each, on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import EXIT_OK, add_data, add_src, positive_float, positive_int

NAME = "bench"


def _pools(text: str) -> tuple[tuple[float, str], ...]:
    """An argparse type: ``UM:SHAPE`` poolings, comma-separated (``55:square,100:disc``)."""
    out = []
    for part in text.split(","):
        um, _, shape = part.strip().partition(":")
        shape = shape or "square"
        if shape not in ("square", "disc"):
            raise argparse.ArgumentTypeError(f"{part!r}: the shape is square or disc")
        out.append((positive_float(um), shape))
    return tuple(out)


def _row_counts(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated integers >= 1 (``1000000,10000000``)."""
    out = []
    for part in text.split(","):
        out.append(positive_int(part.strip().replace("_", "")))
    return tuple(out)


def add_parser(subparsers) -> None:
    """Register ``histoxmodal bench`` and its benchmarks on the top-level sub-parsers."""
    p = subparsers.add_parser(NAME, help="performance benchmarks on this machine")
    # `histoxmodal bench` without a benchmark prints this help, as `bench --help` does
    p.set_defaults(_bench_parser=p)
    bsub = p.add_subparsers(dest="bench", metavar="BENCH")
    _add_features(bsub)
    _add_predict(bsub)
    _add_tiling(bsub)
    _add_hescape(bsub)
    _add_dataset(bsub)
    _add_retrieval(bsub)
    _add_train(bsub)
    _add_her2st(bsub)
    _add_xenium(bsub)
    _add_neighbours(bsub)
    _add_visium_hd(bsub)
    _add_tissue(bsub)


def _add_features(bsub) -> None:
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
    bf.set_defaults(_bench_run=_run_features)


def _add_predict(bsub) -> None:
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
    bp.set_defaults(_bench_run=_run_predict)


def _add_tiling(bsub) -> None:
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
    bt.set_defaults(_bench_run=_run_tiling)


def _add_hescape(bsub) -> None:
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
    bh.set_defaults(_bench_run=_run_hescape)


def _add_dataset(bsub) -> None:
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
    bds.set_defaults(_bench_run=_run_dataset)


def _add_retrieval(bsub) -> None:
    brt = bsub.add_parser(
        "retrieval",
        help="tiled whole-test-set retrieval vs a full N x N argsort",
        description="Ranks of 100,000 x 100,000 embeddings in tiles (time and memory), by "
        "inner product and by CSLS, and against the full similarity matrix + argsort (and the "
        "dense CSLS formula) at a size where it fits.",
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
    brt.set_defaults(_bench_run=_run_retrieval)


def _add_train(bsub) -> None:
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
    btr.set_defaults(_bench_run=_run_train)


def _add_her2st(bsub) -> None:
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
    bh.set_defaults(_bench_run=_run_her2st)


def _add_xenium(bsub) -> None:
    bx = bsub.add_parser(
        "xenium",
        help="peak memory of pooling Xenium transcripts into pseudo-spots, by file length",
        description="Writes transcripts.parquet tables of growing length (XOA 3's schema, rows "
        "in random order) and measures, each in a fresh process, the peak resident memory and "
        "time of the streaming pooling (read_xenium(source='transcripts')) and, up to "
        "--naive-max-rows, of pandas reading the columns whole and grouping.",
    )
    bx.add_argument(
        "--rows",
        type=_row_counts,
        default=(1_000_000, 10_000_000, 40_000_000),
        metavar="N1,N2",
        help="transcripts per table, comma-separated (default 1000000,10000000,40000000)",
    )
    bx.add_argument(
        "--naive-max-rows",
        type=int,
        default=10_000_000,
        metavar="N",
        help="run the pandas baseline up to this length (default 10000000; 0 skips it)",
    )
    bx.add_argument(
        "--bin-um", type=positive_float, default=55.0, help="pseudo-spot side in µm (55)"
    )
    bx.add_argument(
        "--workdir",
        default=None,
        metavar="DIR",
        help="where the tables are written (default a temporary folder, removed afterwards)",
    )
    bx.add_argument(
        "--keep-files", action="store_true", help="keep the generated tables in --workdir"
    )
    bx.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    bx.set_defaults(_bench_run=_run_xenium)


def _add_neighbours(bsub) -> None:
    bn = bsub.add_parser(
        "neighbours",
        help="the spatial neighbour graph: histoxmodal's k-d tree vs squidpy, same spots",
        description="Builds the radius graph behind the heads' neighbour context on a "
        "Visium-like hexagonal grid with histoxmodal (data.neighbours.radius_neighbours) and "
        "with squidpy.gr.spatial_neighbors, in this process; prints the seconds of each, the "
        "ratio, and whether they link the same spots.",
    )
    bn.add_argument("--spots", type=positive_int, default=100_000, help="spots (100000)")
    bn.add_argument("--sections", type=positive_int, default=1, help="sections (1)")
    bn.add_argument(
        "--radius-um", type=positive_float, default=250.0, help="neighbour radius in µm (250)"
    )
    bn.set_defaults(_bench_run=_run_neighbours)


def _add_visium_hd(bsub) -> None:
    bhd = bsub.add_parser(
        "visium-hd",
        help="peak memory of pooling a full-size Visium HD 2 µm matrix into spots",
        description="Writes a Visium HD 2 µm bin layout (default the full 3350 x 3350 grid of "
        "a 6.5 mm capture area) and measures, each in a fresh process, the peak resident "
        "memory and time of read_visium_hd pooling it into squares and discs, and of scanpy "
        "reading the whole 2 µm matrix then summing it with one sparse product.",
    )
    bhd.add_argument("--rows", type=positive_int, default=3350, help="grid rows (3350)")
    bhd.add_argument("--cols", type=positive_int, default=3350, help="grid columns (3350)")
    bhd.add_argument(
        "--umis-per-bin",
        type=positive_float,
        default=4.0,
        metavar="N",
        help="mean UMIs of a 2 µm bin under tissue (4)",
    )
    bhd.add_argument(
        "--pools",
        type=_pools,
        default=((55.0, "square"), (100.0, "disc"), (8.0, "square")),
        metavar="UM:SHAPE,...",
        help="poolings measured (default 55:square,100:disc,8:square)",
    )
    bhd.add_argument("--no-scanpy", action="store_true", help="skip the whole-matrix baseline")
    bhd.add_argument(
        "--workdir",
        default=None,
        metavar="DIR",
        help="where the layout is written, and reused when there (default a temporary folder)",
    )
    bhd.add_argument("--keep-files", action="store_true", help="keep the layout in --workdir")
    bhd.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    bhd.set_defaults(_bench_run=_run_visium_hd)


def _add_tissue(bsub) -> None:
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
    bti.set_defaults(_bench_run=_run_tissue)


def run(args: argparse.Namespace) -> int:
    """``histoxmodal bench NAME``: the typed benchmark function with the parsed options (each
    benchmark's parser names its runner); without a NAME, the list of benchmarks."""
    runner = getattr(args, "_bench_run", None)
    if runner is None:
        args._bench_parser.print_help()
        args._bench_parser.exit()
    return runner(args)


def _run_retrieval(args: argparse.Namespace) -> int:
    from histoxmodal.bench.retrieval import run_retrieval_bench

    return run_retrieval_bench(
        n=args.n, dim=args.dim, baseline_n=args.baseline_n, json_path=args.json
    )


def _run_train(args: argparse.Namespace) -> int:
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


def _run_hescape(args: argparse.Namespace) -> int:
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


def _run_her2st(args: argparse.Namespace) -> int:
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


def _run_neighbours(args: argparse.Namespace) -> int:
    from histoxmodal.bench.neighbours import bench_neighbours

    r = bench_neighbours(args.spots, n_sections=args.sections, radius_um=args.radius_um)
    print(
        f"{r['n_spots']} spots, {r['n_sections']} section(s), {r['radius_um']:g} µm: "
        f"histoxmodal {r['histoxmodal_s']:.3f} s, squidpy {r['squidpy_s']:.3f} s "
        f"(x{r['ratio_squidpy']:.2f}); edges {r['edges_histoxmodal']} / "
        f"{r['edges_squidpy']}, differing {r['edges_differing']}"
    )
    return 0 if r["edges_differing"] == 0 else 1


def _run_tissue(args: argparse.Namespace) -> int:
    from histoxmodal.bench.tissue import BENCH_METHODS, run_tissue_bench

    methods = args.methods.split(",") if args.methods else BENCH_METHODS
    return run_tissue_bench(args.src, methods=methods, json_path=args.json)


def _run_features(args: argparse.Namespace) -> int:
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


def _run_predict(args: argparse.Namespace) -> int:
    from histoxmodal.bench.predict import run_predict_bench

    return run_predict_bench(
        side=args.side, grid_um=args.grid_um, batch_size=args.batch_size,
        device=args.device, slide=args.slide, json_path=args.json,
    )  # fmt: skip


def _run_dataset(args: argparse.Namespace) -> int:
    from histoxmodal.bench.dataset import run_dataset_bench

    return run_dataset_bench(
        args.data,
        workers=args.workers,
        batch_size=args.batch_size,
        min_seconds=args.min_seconds,
        json_path=args.json,
    )


def _run_tiling(args: argparse.Namespace) -> int:
    from histoxmodal.bench.tiling import run_tiling_bench

    return run_tiling_bench(
        args.slide,
        repeats=args.repeats,
        min_seconds=args.min_seconds,
        large=args.large,
        max_tiles=args.max_tiles,
        json_path=args.json,
    )


def _run_xenium(args: argparse.Namespace) -> int:
    """``histoxmodal bench xenium``: :func:`~histoxmodal.bench.xenium.bench_xenium_pooling` in
    ``--workdir`` (or a temporary folder), its table, and the JSON when asked."""
    from histoxmodal.bench.xenium import bench_xenium_pooling, format_pooling_table

    def measure(workdir: str) -> dict:
        return bench_xenium_pooling(
            workdir,
            rows=args.rows,
            naive_max_rows=args.naive_max_rows,
            bin_um=args.bin_um,
            keep_files=args.keep_files,
        )

    return _in_workdir(args, measure, format_pooling_table, "hx_xenium_bench_")


def _run_visium_hd(args: argparse.Namespace) -> int:
    """``histoxmodal bench visium-hd``: :func:`~histoxmodal.bench.visium_hd.bench_visium_hd_pooling`
    in ``--workdir`` (or a temporary folder), its table, and the JSON when asked."""
    from histoxmodal.bench.visium_hd import bench_visium_hd_pooling, format_hd_table

    def measure(workdir: str) -> dict:
        return bench_visium_hd_pooling(
            workdir,
            n_rows=args.rows,
            n_cols=args.cols,
            umis_per_bin=args.umis_per_bin,
            pools=args.pools,
            naive=not args.no_scanpy,
            keep_files=args.keep_files,
        )

    return _in_workdir(args, measure, format_hd_table, "hx_visium_hd_bench_")


def _in_workdir(args: argparse.Namespace, measure, table, prefix: str) -> int:
    """Run a generated-data benchmark ``measure(workdir)`` in ``--workdir`` (or a temporary
    folder, refused with ``--keep-files``), print ``table(result)`` and write ``--json``."""
    import tempfile

    if args.workdir is None:
        if args.keep_files:
            from histoxmodal.errors import ConfigError

            raise ConfigError("--keep-files needs --workdir DIR, the folder to keep them in")
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            result = measure(tmp)
    else:
        result = measure(args.workdir)
    print(table(result))
    if args.json:
        from histoxmodal.fileutil import write_json_atomic

        write_json_atomic(Path(args.json), result)
    return EXIT_OK
