"""``histoxmodal build``: the paired dataset from a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoxmodal.cli.main import EXIT_OK, EXIT_USAGE, format_table


def run_build(args: argparse.Namespace) -> int:
    from histoxmodal._deps import require_extra
    from histoxmodal.data.paired import PairedConfig, build_paired
    from histoxmodal.data.recipes import find_samples, list_recipes, load_recipe
    from histoxmodal.errors import ConfigError

    if args.list:
        for name, path in list_recipes().items():
            r = load_recipe(str(path))
            print(f"{name:<8} {r.format:<7} {r.summary}")
        return EXIT_OK
    if args.recipe and load_recipe(args.recipe).format == "cohort":
        return _build_cohort(args, load_recipe(args.recipe))
    if not args.recipe or not args.src or not args.out:
        raise ConfigError(
            "histoxmodal build needs --recipe, --src and --out "
            "(see histoxmodal build --list for the recipes)"
        )
    require_extra("spatial", "histoxmodal build")
    recipe = load_recipe(args.recipe)
    d = recipe.defaults

    def pick(flag, key, default):
        return flag if flag is not None else d.get(key, default)

    cfg = PairedConfig(
        patch_um=float(pick(args.patch_um, "patch_um", 112.0)),
        patch_px=int(pick(args.patch_px, "patch_px", 224)),
        genes=str(pick(args.genes, "genes", "intersection")),
        min_counts=int(pick(args.min_counts, "min_counts", 0)),
        in_tissue_only=not args.all_spots,
        allow_lowres=args.allow_lowres,
    )
    refs = find_samples(recipe, args.src, image=args.image, alignment=args.alignment, mpp=args.mpp)
    m = build_paired(
        refs, args.out, cfg, recipe=recipe.name, workers=args.workers, overwrite=args.overwrite
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
    by_reason: dict[str, list[str]] = {}
    for s, why in m["skipped"].items():
        by_reason.setdefault(why, []).append(s)
    for why, names in by_reason.items():
        print(f"skipped {len(names)}: {', '.join(names)}: {why}")
    state = "up to date" if m.get("up_to_date") else "built"
    print(
        f"{state}: {m['n_spots']} spots x {m['n_genes']} genes ({cfg.genes}) in "
        f"{Path(args.out).resolve()}"
    )
    return EXIT_OK if m["samples"] else EXIT_USAGE


def _build_cohort(args: argparse.Namespace, recipe) -> int:
    """``histoxmodal build --recipe cohort --manifest FILE --out DIR``."""
    from histoxmodal._deps import require_extra
    from histoxmodal.data.cohort import build_cohort
    from histoxmodal.errors import ConfigError

    if not args.manifest or not args.out:
        raise ConfigError("histoxmodal build --recipe cohort needs --manifest FILE and --out DIR")
    require_extra("medical", "histoxmodal build --recipe cohort")
    d = recipe.defaults
    m = build_cohort(
        args.manifest,
        args.out,
        anchor=args.anchor or d.get("anchor", "cxr"),
        window=d.get("window", "24h"),
        image_px=int(args.patch_px or d.get("image_px", 224)),
        fs=float(d.get("fs", 100)),
        length_s=float(d.get("length_s", 10)),
    )
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
