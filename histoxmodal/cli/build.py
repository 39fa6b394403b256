"""``histoxmodal build``: the paired dataset from a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_stain_options,
    format_stain_summary,
    format_table,
    non_negative_float,
    positive_float,
)

NAME = "build"


def add_parser(subparsers) -> None:
    """Register ``histoxmodal build`` on the top-level sub-parsers."""
    p = subparsers.add_parser(
        NAME,
        help="build a paired dataset (spot patches + expression) from a recipe",
        description="Read spatial-omics samples with a recipe (--list; your own in "
        "$HISTOXMODAL_RECIPES or a .yaml path), cut one "
        "image patch per spot, harmonise gene panels, and write DIR/adata.h5ad, "
        "DIR/patches.h5, DIR/manifest.json and DIR/splits/. Restarting resumes.",
    )
    p.add_argument("--recipe", metavar="NAME", help="recipe name or path to a recipe .yaml")
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="PATH",
        help="sample folder/file, or a folder of samples (repeatable)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder")
    p.add_argument(
        "--manifest", metavar="FILE", help="cohort recipe: CSV/Parquet listing the records"
    )
    p.add_argument(
        "--anchor", metavar="MODALITY", help="cohort recipe: modality defining the rows (cxr)"
    )
    p.add_argument(
        "--patch-um",
        type=float,
        default=None,
        metavar="UM",
        help="field of view of each patch (recipe default, usually 112)",
    )
    p.add_argument(
        "--patch-px",
        type=int,
        default=None,
        metavar="PX",
        help="patch size in pixels (recipe default, usually 224)",
    )
    p.add_argument(
        "--genes",
        choices=["intersection", "union"],
        default=None,
        help="gene panel across samples (recipe default)",
    )
    p.add_argument(
        "--min-counts",
        type=int,
        default=None,
        metavar="N",
        help="drop spots with fewer total counts (recipe default)",
    )
    p.add_argument(
        "--all-spots", action="store_true", help="keep spots the source marks as outside tissue"
    )
    p.add_argument(
        "--image",
        metavar="PATH",
        help="full-resolution image of a single --src (Visium, Visium HD, Xenium, h5ad)",
    )
    p.add_argument(
        "--alignment",
        metavar="CSV",
        help="Xenium: the H&E's registration for --image: 10x's alignment matrix CSV "
        "(*_he_imagealignment.csv) or Xenium Explorer's keypoints (*_keypoints.csv), told "
        "apart by content",
    )
    x = p.add_argument_group(
        "Xenium reader options", "override the recipe's reader section (xenium, xenium-transcripts)"
    )
    x.add_argument(
        "--from-transcripts",
        action="store_true",
        help="pool transcripts.parquet into pseudo-spots instead of reading cells "
        "(what --recipe xenium-transcripts does)",
    )
    x.add_argument(
        "--pseudo-spot-um",
        type=positive_float,
        default=None,
        metavar="UM",
        help="side of the square pseudo-spots in µm, > 0 (55 as HESCAPE, 100 like legacy ST)",
    )
    x.add_argument(
        "--min-qv",
        type=non_negative_float,
        default=None,
        metavar="Q",
        help="transcripts: keep those with qv >= Q, >= 0 (Xenium's own threshold is 20)",
    )
    x.add_argument(
        "--max-residual-um",
        type=positive_float,
        default=None,
        metavar="UM",
        help="refuse a keypoint alignment whose RMS residual exceeds UM µm, > 0 (default 5)",
    )
    x.add_argument(
        "--keypoint-units",
        choices=["um", "px"],
        default=None,
        help="units of the keypoints' Xenium side: um (Xenium Explorer) or px (morphology "
        "pixels, 0.2125 µm)",
    )
    hd = p.add_argument_group(
        "Visium HD reader options", "override the visium_hd recipe's reader section"
    )
    hd.add_argument(
        "--bin-um",
        type=positive_float,
        default=None,
        metavar="UM",
        help="the bins read: 2, 8, 16 (or a custom size the output holds); alone, the bins are "
        "read as they are; with --pool-um, the bins pooled (default 2)",
    )
    hd.add_argument(
        "--pool-um",
        type=positive_float,
        default=None,
        metavar="UM",
        help="pool the bins into spots of UM µm, > 0 (a square's side or a disc's diameter; "
        "55 as HESCAPE, 100 like legacy ST; the recipe's default is 55)",
    )
    hd.add_argument(
        "--pool-shape",
        choices=["square", "disc"],
        default=None,
        help="pooled spots' shape (default square)",
    )
    hd.add_argument(
        "--pool-pitch-um",
        type=positive_float,
        default=None,
        metavar="UM",
        help="distance between pooled spots, >= --pool-um (default --pool-um: squares tile, "
        "discs touch; 100 with --pool-um 55 --pool-shape disc mimics Visium)",
    )
    p.add_argument(
        "--mpp",
        type=positive_float,
        default=None,
        metavar="UM",
        help="µm per full-resolution pixel, > 0, overriding what the data says",
    )
    p.add_argument(
        "--allow-lowres",
        action="store_true",
        help="cut patches even from coarse (hires/lowres) images",
    )
    add_stain_options(p, "every spot patch")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="reading threads")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")


def run(args: argparse.Namespace) -> int:
    """``histoxmodal build``: the recipe's workflow, then a table of its samples; exit 1 when a
    sample failed, 2 when none was built."""
    from histoxmodal.data.recipes import list_recipes, load_recipe
    from histoxmodal.deps import require_extra
    from histoxmodal.errors import ConfigError
    from histoxmodal.workflows.build import build

    if args.list:
        recipes = list_recipes()
        width = max((len(n) for n in recipes), default=0)
        for name, path in recipes.items():
            r = load_recipe(str(path))
            print(f"{name:<{width}}  {r.format:<11} {r.summary}")
        return EXIT_OK
    if not args.recipe or not args.out:
        raise ConfigError(
            "histoxmodal build needs --recipe, --src (or --manifest for the cohort recipe) and "
            "--out (see histoxmodal build --list for the recipes)"
        )
    recipe = load_recipe(args.recipe)
    if recipe.format == "cohort":
        require_extra("medical", "histoxmodal build --recipe cohort")
        return _print_cohort(
            build(
                args.recipe,
                args.out,
                manifest=args.manifest,
                anchor=args.anchor,
                patch_px=args.patch_px,
            )
        )
    if not args.src:
        raise ConfigError(
            "histoxmodal build needs --recipe, --src and --out "
            "(see histoxmodal build --list for the recipes)"
        )
    reader = reader_options(args, recipe)
    require_extra("spatial", "histoxmodal build")
    m = build(
        args.recipe,
        args.out,
        src=args.src,
        image=args.image,
        alignment=args.alignment,
        mpp=args.mpp,
        patch_um=args.patch_um,
        patch_px=args.patch_px,
        genes=args.genes,
        min_counts=args.min_counts,
        in_tissue_only=not args.all_spots,
        allow_lowres=args.allow_lowres,
        reader=reader or None,
        workers=args.workers,
        overwrite=args.overwrite,
        stain_normalize=args.stain_normalize,
        stain_target=args.stain_target,
    )
    rows = [("sample", "patient", "spots", "at border", "image µm/px")]
    for s, c in m["samples"].items():
        rows.append(
            (
                s,
                str(c["patient"]),
                str(c["n_spots"]),
                str(c["n_border"]),
                f"{c['patch_source_mpp']:.3g} ({c['patch_source']})",
            )
        )
    print(format_table(rows))
    stain = _stain_total(m)
    if stain:
        print(format_stain_summary(stain))
    failed = m.get("failed") or {}
    by_reason: dict[str, list[str]] = {}
    for s, why in m["skipped"].items():
        if s not in failed:
            by_reason.setdefault(why, []).append(s)
    for why, names in by_reason.items():
        print(f"skipped {len(names)}: {', '.join(names)}: {why}")
    for s, why in failed.items():
        print(f"failed {s}: {why}")
    state = "up to date" if m.get("up_to_date") else "built"
    print(
        f"{state}: {m['n_spots']} spots x {m['n_genes']} genes ({m['params']['genes']}) in "
        f"{Path(args.out).resolve()}"
    )
    if not m["samples"]:
        return EXIT_USAGE
    if failed:
        # the dataset is usable, but lacks samples that were meant to be in it
        print(
            f"{len(failed)} sample(s) failed and are not in the dataset; fix the files named "
            f"above and rebuild with --overwrite"
        )
        return EXIT_FAILED
    return EXIT_OK


#: the Xenium reader options and the flags that set them
XENIUM_FLAGS = {
    "source": "--from-transcripts",
    "pseudo_spot_um": "--pseudo-spot-um",
    "min_qv": "--min-qv",
    "max_residual_um": "--max-residual-um",
    "keypoint_units": "--keypoint-units",
}
#: the Visium HD reader options and the flags that set them
VISIUM_HD_FLAGS = {
    "bin_um": "--bin-um",
    "pool_um": "--pool-um",
    "pool_shape": "--pool-shape",
    "pool_pitch_um": "--pool-pitch-um",
}


def reader_options(args: argparse.Namespace, recipe) -> dict:
    """The reader options the flags give, checked against the recipe's format: each flag names
    itself in the error when it does not apply."""
    from histoxmodal.errors import ConfigError

    xenium = {
        "source": "transcripts" if args.from_transcripts else None,
        "pseudo_spot_um": args.pseudo_spot_um,
        "min_qv": args.min_qv,
        "max_residual_um": args.max_residual_um,
        "keypoint_units": args.keypoint_units,
    }
    hd = {
        "bin_um": args.bin_um,
        "pool_um": args.pool_um,
        "pool_shape": args.pool_shape,
        "pool_pitch_um": args.pool_pitch_um,
    }
    for given, fmt, flags, recipes in (
        (xenium, "xenium", XENIUM_FLAGS, "xenium or xenium-transcripts"),
        (hd, "visium_hd", VISIUM_HD_FLAGS, "visium_hd"),
    ):
        used = [k for k, v in given.items() if v is not None]
        if used and recipe.format != fmt:
            names = ", ".join(flags[k] for k in used)
            raise ConfigError(
                f"{names}: {'Xenium' if fmt == 'xenium' else 'Visium HD'} reader options, but "
                f"recipe {recipe.name!r} reads {recipe.format}; use --recipe {recipes}, or "
                f"leave them out"
            )
    if recipe.format == "visium_hd":
        reader = {k: v for k, v in hd.items() if v is not None}
        if "bin_um" in reader and "pool_um" not in reader:
            reader["pool_um"] = None  # --bin-um alone: the bins as they are
        if reader.get("pool_um") is None and (args.pool_shape or args.pool_pitch_um):
            raise ConfigError(
                "--pool-shape/--pool-pitch-um shape pooled spots: add --pool-um UM (or leave "
                "--bin-um out to pool the 2 µm bins into the recipe's 55 µm squares)"
            )
        return reader
    reader = {k: v for k, v in xenium.items() if v is not None}
    source = reader.get("source", recipe.reader.get("source", "cells"))
    if "min_qv" in reader and source != "transcripts":
        raise ConfigError(
            f"--min-qv {args.min_qv:g}: the quality threshold filters transcripts, but recipe "
            f"{recipe.name!r} reads cells; add --from-transcripts or use --recipe "
            f"xenium-transcripts"
        )
    return reader


def _stain_total(m: dict) -> dict | None:
    """The samples' stain normalisation counts, summed (``None`` without normalisation)."""
    counts = [c["stain"] for c in m["samples"].values() if c.get("stain")]
    if not counts:
        return None
    reasons: dict[str, int] = {}
    for c in counts:
        for k, v in c["fallback_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    return {
        "method": counts[0]["method"],
        "applied": sum(c["applied"] for c in counts),
        "fallback": sum(c["fallback"] for c in counts),
        "fallback_reasons": reasons,
    }


def _print_cohort(m: dict) -> int:
    """The summary table of a cohort build."""
    rows = [("rows", "patients", *(f"with {k}" for k in m["present"]), "unreadable")]
    rows.append(
        (
            str(m["n_rows"]),
            str(m["n_patients"]),
            *(str(v) for v in m["present"].values()),
            str(len(m["failures"])),
        )
    )
    print(format_table(rows))
    for f in m["failures"][:10]:
        print(f"  row {f['row']} {f['modality']}: {f['error']}")
    return EXIT_OK
