"""``histoxmodal export``: a paired dataset as Parquet, HEST files or a SpatialData store."""

from __future__ import annotations

import argparse

from histoxmodal.cli.common import EXIT_OK, add_data

NAME = "export"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal export`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="export a paired dataset (Parquet for Hugging Face datasets, HEST h5, SpatialData)",
        description="Parquet: one row per spot with the patch as PNG, raw counts and metadata "
        "(load with datasets.load_dataset('parquet', data_dir='OUT/data')). "
        "hest: patches/<sample>.h5 (img, coords, barcode) and st/<sample>.h5ad. "
        "spatialdata: one OUT.zarr (images, spot circles, table) for spatialdata.read_zarr.",
    )
    add_data(p)
    p.add_argument(
        "--to",
        choices=["parquet", "hest", "spatialdata"],
        required=True,
        help="format: parquet (Hugging Face datasets), hest (HEST h5 + h5ad) or spatialdata (zarr)",
    )
    p.add_argument(
        "--out", required=True, metavar="OUT", help="output folder (spatialdata: the .zarr store)"
    )
    p.add_argument(
        "--no-full-res", dest="full_res", action="store_false",
        help="spatialdata: only the hires/lowres images, not the full-resolution H&E",
    )  # fmt: skip
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT when it holds an earlier export of this format (never another folder)",
    )


def run(args: argparse.Namespace) -> int:
    """``histoxmodal export``: the writer of ``--to``, then how many files it wrote."""
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
