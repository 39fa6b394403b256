"""Data recipes (``histoxmodal/recipes/*.yaml``, plus ``$HISTOXMODAL_RECIPES``) and the samples
they find under a source path."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from histoxmodal.errors import ConfigError

log = logging.getLogger(__name__)


def recipe_dirs() -> list[Path]:
    """Folders searched for recipes: ``$HISTOXMODAL_RECIPES`` (``:``-separated; earlier folders
    win over later ones and over the bundled recipes), then the recipes shipped inside the
    package (``histoxmodal/recipes/``)."""
    extra = [Path(p) for p in os.environ.get("HISTOXMODAL_RECIPES", "").split(os.pathsep) if p]
    # Package data, not a path relative to the source checkout, so a wheel has its recipes. An
    # installed wheel is a folder on disk, so the Traversable is a real Path.
    return [*extra, Path(str(resources.files("histoxmodal") / "recipes"))]


def list_recipes() -> dict[str, Path]:
    """Recipe name -> file."""
    found: dict[str, Path] = {}
    for d in reversed(recipe_dirs()):
        for p in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            found[p.stem] = p
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: reader ``format``, build ``defaults``, extra ``reader`` arguments."""

    name: str
    format: str
    summary: str
    source: dict[str, str]
    defaults: dict[str, Any]
    reader: dict[str, Any]
    path: Path


def load_recipe(name_or_path: str) -> Recipe:
    """Load a recipe by name (see :func:`list_recipes`) or from a YAML file path."""
    import yaml

    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") and p.exists()):
        recipes = list_recipes()
        if name_or_path not in recipes:
            import difflib

            close = difflib.get_close_matches(name_or_path, recipes, n=2)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown recipe {name_or_path!r}.{hint} Available: "
                f"{', '.join(recipes)} (or give a path to a .yaml recipe)"
            )
        p = recipes[name_or_path]
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    from histoxmodal.io.spatial import FORMATS

    fmt = data.get("format")
    if fmt not in (*FORMATS, "cohort", "hescape"):
        raise ConfigError(
            f"{p}: format: {fmt!r} must be one of {', '.join(FORMATS)}, cohort, hescape"
        )
    return Recipe(
        name=data.get("name", p.stem),
        format=fmt,
        summary=data.get("summary", ""),
        source=data.get("source", {}) or {},
        defaults=data.get("defaults", {}) or {},
        reader=data.get("reader", {}) or {},
        path=p,
    )


@dataclass
class SampleRef:
    """One sample found under a source: how to read it, from which files, or why it is skipped.

    Attributes
    ----------
    sample
        Sample (library) id, unique within the dataset.
    load
        Reads the sample's AnnData (contract of :mod:`histoxmodal.keys`).
    inputs
        The files it is read from (hashed into the manifest).
    skip_reason
        Set when the sample cannot enter the paired dataset (e.g. no image).
    options
        The reader options ``load`` applies (a recipe's ``reader`` section and its overrides):
        recorded with the inputs, so that changing one rebuilds the sample.
    """

    sample: str
    load: Callable[[], Any]
    inputs: list[Path] = field(default_factory=list)
    skip_reason: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def check_reader_options(reader: Callable[..., Any], options: dict[str, Any], where: str) -> None:
    """Refuse reader options that ``reader`` does not take, naming the ones it does.

    ``image``, ``alignment``, ``mpp`` and ``sample`` are refused too: they are given per build
    (``--image``, ``--alignment``, ``--mpp``) or per sample, not in a recipe's ``reader``
    section.
    """
    import inspect

    taken = [
        n
        for n, p in inspect.signature(reader).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and n not in ("image", "alignment", "mpp", "sample")
    ]
    bad = sorted(k for k in options if k not in taken)
    if bad:
        import difflib

        close = {k: difflib.get_close_matches(k, taken, n=1) for k in bad}
        hint = "".join(f"; {k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
        raise ConfigError(
            f"{where}: unknown reader option(s) {', '.join(map(repr, bad))}{hint}; "
            f"{reader.__name__} takes {', '.join(taken)}"
        )


def _visium_samples(src: Path) -> list[tuple[str, Path, str]]:
    """``(sample, outs folder, why)`` for each Space Ranger output at or one level below ``src``.

    ``src`` may be ``outs/``, the run folder above it, or a folder of runs (each given at its
    run folder or its ``outs/``). A sample is named after its run folder, never ``outs``.
    """
    from histoxmodal.io.spatial import MissingSpatialFileError, find_visium_outs

    def name_of(outs: Path) -> str:
        return outs.parent.name if outs.name == "outs" else outs.name

    try:
        outs, why = find_visium_outs(src)
        return [(name_of(outs), outs, why)]
    except MissingSpatialFileError:
        pass
    found = []
    for p in sorted(q for q in src.iterdir() if q.is_dir()) if src.is_dir() else []:
        try:
            outs, why = find_visium_outs(p)
        except MissingSpatialFileError:
            continue
        found.append((name_of(outs), outs, why))
    if not found:
        raise ConfigError(
            f"--src {src}: no Space Ranger output here or one level down (a folder with "
            f"spatial/ and a count matrix, given at outs/ or at the run folder above it)"
        )
    return found


def name_of_run(outs: Path) -> str:
    """A Space Ranger output's sample name: its run folder's (the folder above ``outs/``)."""
    return outs.parent.name if outs.name == "outs" else outs.name


def _visium_hd_samples(src: Path) -> list[tuple[str, Path]]:
    """``(sample, outs folder)`` for each Visium HD output at or one level below ``src`` (given
    at ``outs/`` or at the run folder above it); a sample is named after its run folder."""
    from histoxmodal.io.spatial import MissingSpatialFileError, find_visium_hd_outs

    name_of = name_of_run
    try:
        outs = find_visium_hd_outs(src)
        return [(name_of(outs), outs)]
    except MissingSpatialFileError:
        pass
    found = []
    for p in sorted(q for q in src.iterdir() if q.is_dir()) if src.is_dir() else []:
        try:
            outs = find_visium_hd_outs(p)
        except MissingSpatialFileError:
            continue
        found.append((name_of(outs), outs))
    if not found:
        raise ConfigError(
            f"--src {src}: no Visium HD output here or one level down (Space Ranger's outs/ "
            f"holding binned_outputs/square_002um/, or the run folder above it)"
        )
    return found


def find_samples(
    recipe: Recipe,
    sources: list[str | Path],
    *,
    image: str | Path | None = None,
    alignment: str | Path | None = None,
    mpp: float | None = None,
) -> list[SampleRef]:
    """The samples under ``sources`` for ``recipe``'s format, in a stable order.

    ``image`` and ``alignment`` apply to a single source only. A Xenium folder given without
    ``image`` is searched for 10x's post-Xenium H&E and its alignment by name
    (:func:`~histoxmodal.io.spatial.xenium_he_files`: ``*he_image.ome.tif`` with
    ``*he_imagealignment.csv``, or Xenium Explorer's ``*he_image_matrix.csv`` /
    ``*he_image_keypoints.csv``).
    """
    from histoxmodal.io.spatial import (
        read_h5ad,
        read_her2st,
        read_visium,
        read_visium_hd,
        read_xenium,
        resolve_bin_um,
        st_sections,
        visium_hd_image,
        visium_hd_input_files,
        visium_input_files,
        xenium_he_files,
        xenium_input_files,
    )

    if (image or alignment) and len(sources) != 1:
        raise ConfigError(
            "--image/--alignment apply to one --src; build samples with different "
            "images separately or use a recipe file per sample"
        )
    # Absolute paths, so that the readers' metadata and the manifest name the same files from
    # any working folder (and a source given as "." is named after its folder). Symlinks are
    # kept: a linked folder's name is the sample's name.
    image = Path(os.path.abspath(image)) if image else None
    alignment = Path(os.path.abspath(alignment)) if alignment else None
    refs: list[SampleRef] = []
    kw = dict(recipe.reader)
    reader_of = {
        "visium": read_visium,
        "visium_hd": read_visium_hd,
        "xenium": read_xenium,
        "h5ad": read_h5ad,
    }
    if kw and recipe.format in reader_of:
        check_reader_options(reader_of[recipe.format], kw, f"recipe {recipe.name!r}")
    for src in (Path(os.path.abspath(s)) for s in sources):
        if not src.exists():
            raise FileNotFoundError(f"--src {src}: not found")
        if recipe.format == "her2st":
            if not (src / "counts").is_dir():
                raise ConfigError(f"--src {src}: not a her2st-layout folder (no counts/ inside)")
            for s in st_sections(src):
                img = src / "images" / f"{s}.jpg"
                inputs = [
                    *sorted((src / "counts").glob(f"{s}.tsv*")),
                    src / "spots" / f"{s}_selection.tsv",
                ]
                skip = (
                    None
                    if img.exists()
                    else ("no H&E image (counts only: read it with read_her2st for the gene side)")
                )
                refs.append(
                    SampleRef(
                        s,
                        (lambda src=src, s=s: read_her2st(src, s, mpp=mpp)),
                        [*inputs, img] if img.exists() else inputs,
                        skip,
                    )
                )
        elif recipe.format == "visium":
            for name, outs, why in _visium_samples(src):
                log.info("--src %s: sample %s reads %s (%s)", src, name, outs, why)
                refs.append(
                    SampleRef(
                        name,
                        (lambda f=outs: read_visium(f, image=image, mpp=mpp, **kw)),
                        [*visium_input_files(outs), *([Path(image)] if image else [])],
                        options=kw,
                    )
                )
        elif recipe.format == "visium_hd":
            bin_um = resolve_bin_um(kw.get("bin_um"), kw.get("pool_um"))
            for name, outs in _visium_hd_samples(src):
                img = image or visium_hd_image(outs)
                if img is None:
                    log.info("%s: no full-resolution image (pass --image); hires only", name)
                refs.append(
                    SampleRef(
                        name,
                        (
                            lambda f=outs, img=img: read_visium_hd(
                                f, image=img, mpp=mpp, sample=name_of_run(f), **kw
                            )
                        ),
                        [*visium_hd_input_files(outs, bin_um), *([Path(img)] if img else [])],
                        options=kw,
                    )
                )
        elif recipe.format == "xenium":
            source = kw.get("source", "cells")
            found = [(src, xenium_input_files(src, source))]
            if found[0][1] is None and src.is_dir():
                found = [
                    (p, xenium_input_files(p, source)) for p in sorted(src.iterdir()) if p.is_dir()
                ]
            found = [(f, files) for f, files in found if files is not None]
            if not found:
                what = (
                    "transcripts.parquet"
                    if source == "transcripts"
                    else "cell_feature_matrix.h5 or cell_feature_matrix/"
                )
                raise ConfigError(
                    f"--src {src}: no Xenium output (a folder with {what}), here or one level down"
                )
            for f, files in found:
                img, aln = (image, alignment) if image else xenium_he_files(f)
                if img is None:
                    skip = (
                        "no registered image: pass --image and --alignment (10x's "
                        "*_he_imagealignment.csv or Xenium Explorer's *_keypoints.csv), or put "
                        "<run>_he_image.ome.tif and <run>_he_imagealignment.csv in the folder"
                    )
                elif aln is None and not image:
                    skip = (
                        f"{img.name} found but no alignment beside it "
                        "(*he_imagealignment.csv, *he_image_matrix.csv or "
                        "*he_image_keypoints.csv); pass --alignment"
                    )
                else:
                    skip = None
                refs.append(
                    SampleRef(
                        f.name,
                        (
                            lambda f=f, img=img, aln=aln: read_xenium(
                                f, image=img, alignment=aln, **kw
                            )
                        ),
                        [
                            *files,
                            *([Path(img)] if img else []),
                            *([Path(aln)] if aln else []),
                        ],
                        skip,
                        options=kw,
                    )
                )
        elif recipe.format == "h5ad":
            files = [src] if src.is_file() else sorted(src.glob("*.h5ad"))
            if not files:
                raise ConfigError(f"--src {src}: no .h5ad files")
            for f in files:
                refs.append(
                    SampleRef(
                        f.stem,
                        (lambda f=f: read_h5ad(f, image=image, mpp=mpp, **kw)),
                        [f, *([Path(image)] if image else [])],
                        options=kw,
                    )
                )
    names = [r.sample for r in refs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            f"several sources give samples named {dup}; sample ids must be unique "
            f"(rename the folders)"
        )
    return refs
