"""``histoxmodal predict``: whole-slide expression maps ("virtual ST") from a trained run.

For each slide: detect tissue, lay a grid of pseudo-spots (the run's field of view at a chosen
pitch) over it, embed each pseudo-spot's patch with the run's image tower, and predict every gene
of the run's saved expression head. The patches are cut exactly as ``histoxmodal build`` cuts
spot patches (:class:`~histoxmodal.data.slide.SlidePatches`), so a map read at a section's spot
centres reproduces what ``histoxmodal evaluate`` scores on that section.

Writes ``OUT/<slide>/``:

- ``prediction.h5ad``: ``X`` the predicted log1p-CP10k expression ``(n_pseudo_spots, n_genes)``,
  ``obsm['spatial']`` the centres in level-0 pixels, ``obs['tissue_fraction']``,
  ``var['morans_i']`` each gene map's Moran's I over the pseudo-spots' six nearest neighbours,
  ``uns['spatial'][<slide>]`` a hires thumbnail with scale factors (``scanpy.pl.spatial`` and
  squidpy work unchanged), ``uns['prediction']`` naming the run, head, slide and version (and,
  for a run trained with stain normalisation, ``stain``: the patches normalised and kept raw);
- ``<gene>.png``: a heatmap per requested gene over the H&E thumbnail, colour bar and scale bar;
- ``manifest.json``: status, the slide's identity and the parameters (a rerun skips a slide done
  with the same run, head and parameters).

What predict computes for one slide is :class:`PredictJob`; the batch-job protocol is
``histoxmodal tile``'s (:mod:`histoxmodal.workflows.jobs`): a slide that fails is recorded and
the others go on, outputs are published atomically, a killed run resumes, one process at a time
works on a slide (``OUT/.locks/<slide>.predict.lock``) and ``shard=(K, N)`` splits the slides
between processes. A full disk stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError, DataError
from histoxmodal.heads.base import HEAD_FILE
from histoxmodal.io.discovery import output_name
from histoxmodal.keys import STATUS_OK
from histoxmodal.tiling.spots import pseudo_spots, window_px
from histoxmodal.version import __version__
from histoxmodal.workflows.jobs import (
    REDO,
    SKIP,
    Done,
    FolderOutput,
    JobItem,
    SlideJob,
    SlideResult,
    run_jobs,
    run_one,
)
from histoxmodal.workflows.predict import check_spatial, head_genes
from histoxmodal.workflows.run import Run

log = logging.getLogger(__name__)

PREDICTION_FILE = "prediction.h5ad"
MANIFEST_FILE = "manifest.json"
#: longest side of the thumbnail stored in ``uns['spatial']`` and drawn under the maps
THUMB_MAX_SIDE = 2000
#: genes drawn when none are asked for: the most variable predicted ones
N_DEFAULT_MAPS = 4


def expression_head(run: Run, head: str | None = None) -> str:
    """The name of the saved expression head to use: ``head``, or the run's only or ridge one.

    Raises
    ------
    ConfigError
        The run has no saved expression head (or not the one named).
    StaleHeadError
        The head was fitted on other weights than the run holds now.
    """
    saved = run.expression_heads
    if head is not None:
        if head not in saved:
            raise ConfigError(
                f"{run.path} has no expression head {head!r} (saved: {', '.join(saved) or 'none'})"
                f"; fit one with `histoxmodal fit-head {run.path}`"
            )
    elif not saved:
        raise ConfigError(
            f"{run.path} has no saved expression head; fit one with "
            f"`histoxmodal fit-head {run.path}` (runs trained now fit one at the end)"
        )
    else:
        head = "expression_ridge" if "expression_ridge" in saved else saved[0]
    run.check_head(head)  # fitted on the run's present weights, or refused before any slide
    return head


def _params(run: Run, head: str, grid_um, min_tissue, mpp, genes) -> dict[str, object]:
    return {
        "run": str(run.path.resolve()),
        "run_dataset_sha256": run.dataset_sha256,
        "weights_mtime_ns": (run.path / keys.RUN_WEIGHTS_FILE).stat().st_mtime_ns,
        "head": head,
        # a head refitted under the same name (other genes, context) is another prediction
        "head_mtime_ns": (run.path / keys.RUN_HEADS_DIR / head / HEAD_FILE).stat().st_mtime_ns,
        "grid_um": grid_um,
        "min_tissue": min_tissue,
        "mpp": mpp,
        "maps": list(genes) if genes else None,
        "patch": run.patch,
        # patches normalised to another stain are another prediction (runs without one keep
        # their params: their finished maps stay up to date)
        **({"stain": run.stain_record()["sha256"]} if run.stain else {}),
    }


def check_min_tissue(min_tissue: object) -> float:
    """``min_tissue`` as a fraction in [0, 1]; anything else is refused (5 is not 500 %)."""
    ok = isinstance(min_tissue, int | float) and not isinstance(min_tissue, bool)
    if not ok or not 0 <= min_tissue <= 1:  # also refuses nan
        raise ConfigError(
            f"--min-tissue {min_tissue!r}: must be a fraction in [0, 1] (0.5: half of a "
            "pseudo-spot's window is tissue)"
        )
    return float(min_tissue)


#: a grid pitch below this fraction of the patch's field of view needs ``allow_dense_grid``
MIN_GRID_FRACTION = 0.25
#: more grid windows than this on one slide need ``allow_dense_grid``
MAX_GRID_WINDOWS = 2_000_000


def check_grid(grid_um: float, patch_um: float, *, allow_dense_grid: bool = False) -> float:
    """Refuse a pseudo-spot pitch that cannot make sense for patches of ``patch_um``.

    Raises
    ------
    ConfigError
        ``grid_um`` is not a positive number, or is finer than :data:`MIN_GRID_FRACTION` of the
        patch (each spot overlapping its neighbours by more than 3/4) without
        ``allow_dense_grid``.
    """
    g = float(grid_um)
    if not (g > 0 and np.isfinite(g)):
        raise ConfigError(f"--grid-um {grid_um}: must be a positive number of µm")
    if g < MIN_GRID_FRACTION * patch_um and not allow_dense_grid:
        raise ConfigError(
            f"--grid-um {grid_um:g}: the run's patches are {patch_um:g} µm, so a pitch below "
            f"{MIN_GRID_FRACTION * patch_um:g} µm makes each pseudo-spot overlap its neighbours "
            f"by more than 3/4 and multiplies the work ({(patch_um / g) ** 2:.0f} spots per "
            f"patch area); use --grid-um {patch_um:g} (adjacent patches), or pass "
            f"--allow-dense-grid"
        )
    return g


def predict_slide(
    run: str | Path | Run,
    slide: str | Path,
    out_dir: str | Path,
    *,
    head: str | None = None,
    grid_um: float | None = None,
    min_tissue: float = 0.5,
    genes: Sequence[str] | None = None,
    mpp: float | None = None,
    centres: np.ndarray | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    name: str | None = None,
    allow_dense_grid: bool = False,
) -> SlideResult:
    """Predict the expression map of one slide; see the module docstring for the outputs.

    Parameters
    ----------
    run
        A spatial run folder (or :class:`Run`) with a saved expression head.
    slide
        The slide (any format ``open_slide`` reads).
    out_dir
        Receives ``<name>/``.
    head
        Saved head name (default ``expression_ridge``, or the run's only one).
    grid_um
        Pitch of the pseudo-spot grid in µm; default the run's field of view (``patch_um``:
        adjacent, non-overlapping patches).
    min_tissue
        Least tissue fraction of a pseudo-spot's window.
    genes
        Genes to draw as heatmaps (all genes are predicted); default the most variable ones.
    mpp
        Level-0 µm/px, overriding (or supplying) the slide's metadata.
    centres
        ``(n, 2)`` level-0 centres to predict instead of the grid (e.g. a section's measured
        spots, to compare with its measured expression).
    batch_size
        Patches per forward pass.
    overwrite
        Redo a slide already predicted with these settings.
    name
        Output folder name; default the slide's file stem.
    allow_dense_grid
        Allow a ``grid_um`` below a quarter of the patch, or a slide with more than
        :data:`MAX_GRID_WINDOWS` grid windows (see :func:`check_grid`).

    Returns
    -------
    SlideResult
        ``ok``, ``skipped``, ``busy`` (another process holds its lock) or ``failed`` (``reason``
        says why); errors are recorded, not raised, except a full disk.
    """
    job = PredictJob.create(run, head, grid_um, min_tissue, genes, mpp, centres, batch_size,
                            allow_dense_grid)  # fmt: skip
    slide = Path(slide).expanduser()
    return run_one(job, JobItem(slide, name or output_name(slide)), out_dir, overwrite=overwrite)


@dataclass
class PredictJob(SlideJob):
    """Predicting the expression map of one slide with a run's image tower and saved head (the
    attributes are :func:`predict_slide`'s options, checked by :meth:`create`)."""

    run: Run
    head: str
    grid_um: float
    min_tissue: float = 0.5
    genes: Sequence[str] | None = None
    mpp: float | None = None
    centres: np.ndarray | None = None
    batch_size: int = 64
    allow_dense_grid: bool = False

    noun = "maps"
    lock_suffix = ".predict"
    count_key = "n_spots"
    done_statuses = (STATUS_OK,)
    stop_on_disk_error = True
    layout = FolderOutput((MANIFEST_FILE, PREDICTION_FILE), MANIFEST_FILE)

    @classmethod
    def create(
        cls, run, head=None, grid_um=None, min_tissue=0.5, genes=None, mpp=None, centres=None,
        batch_size=64, allow_dense_grid=False,
    ) -> PredictJob:  # fmt: skip
        """Check the run and the options (before any slide or folder) and build the job."""
        check_min_tissue(min_tissue)
        run = run if isinstance(run, Run) else Run.load(run)
        check_spatial(run)
        if not run.patch:
            raise ConfigError(
                f"{run.path}: the run does not record its patch size (patch_um, patch_px); "
                f"its training dataset {run.data} is needed once to read it"
            )
        head = expression_head(run, head)
        patch_um = float(run.patch["patch_um"])
        grid = grid_um if grid_um is not None else patch_um
        grid = check_grid(grid, patch_um, allow_dense_grid=allow_dense_grid)
        return cls(run, head, grid, min_tissue, genes, mpp, centres, batch_size, allow_dense_grid)

    def __post_init__(self) -> None:
        self._params = _params(
            self.run, self.head, self.grid_um, self.min_tissue, self.mpp, self.genes
        )
        if self.centres is not None:
            self._params["centres_sha256"] = _digest(np.asarray(self.centres, np.float64))

    def params(self, item: JobItem) -> dict[str, Any]:
        return self._params

    def header(self, item: JobItem, identity: dict | None) -> dict[str, Any]:
        return {"slide": str(item.path), "source": identity}

    def compare(self, previous, identity, params, final) -> tuple[str, str]:
        # other settings or another file: predicted again, replacing the old maps
        same = previous.get("params") == params and previous.get("source") == identity
        return (SKIP, "already done") if same else (REDO, "")

    def compute(self, item: JobItem, staging: Path, record: dict[str, Any]) -> Done:
        stain = self.run.stain_normalizer()  # the run's own, if any; counts for this slide only
        n, maps, slide_mpp = _predict_into(
            self.run, self.head, item.path, staging, item.name, self.mpp, self.grid_um,
            self.min_tissue, self.genes, self.centres, self.batch_size, self.allow_dense_grid,
            stain,
        )  # fmt: skip
        files = sorted(p.name for p in staging.iterdir())
        record.update({"n_spots": n, "maps": maps, "mpp": slide_mpp, "files": files})
        if stain is not None:  # patches kept raw (background, pen), as in uns['prediction']
            record["stain"] = stain.counts()
        return Done(STATUS_OK, n, slide_mpp)


def _predict_into(
    run, head, slide, tmp, name, mpp, grid_um, min_tissue, genes, centres, bs, allow_dense_grid,
    stain=None,
):  # fmt: skip
    import anndata as ad
    import pandas as pd

    from histoxmodal.data.slide import SlidePatches
    from histoxmodal.io.slide import open_slide
    from histoxmodal.tiling.tissue import detect_tissue
    from histoxmodal.training.embedding import embed_dataset

    fitted = run.load_head(head)
    all_genes = head_genes(run, head, fitted)
    wanted = list(genes) if genes else []
    unknown = [g for g in wanted if g not in all_genes]
    if unknown:
        raise ConfigError(
            f"--genes {','.join(unknown[:5])}: not predicted by head {head!r} "
            f"({len(all_genes)} genes, e.g. {', '.join(all_genes[:5])})"
        )
    patch_um, patch_px = float(run.patch["patch_um"]), int(run.patch["patch_px"])
    with open_slide(slide, mpp=mpp) as s:
        slide_mpp = s.require_mpp()
        if centres is None:
            w_um, h_um = (d * slide_mpp for d in s.dimensions)
            windows = (int(w_um // grid_um) + 1) * (int(h_um // grid_um) + 1)
            if windows > MAX_GRID_WINDOWS and not allow_dense_grid:
                raise ConfigError(
                    f"--grid-um {grid_um:g} lays {windows:,} windows over this "
                    f"{w_um / 1000:.1f} × {h_um / 1000:.1f} mm slide (more than "
                    f"{MAX_GRID_WINDOWS:,}); use a coarser --grid-um, or pass --allow-dense-grid"
                )
            mask = detect_tissue(s)
            xy, frac = pseudo_spots(
                s, mask, patch_um=patch_um, grid_um=grid_um, min_tissue=min_tissue
            )
            log.info(
                "%s: %d of %d grid windows (%g µm pitch) on tissue; embedding them",
                name, len(xy), windows, grid_um,
            )  # fmt: skip
            if not len(xy):
                raise DataError(
                    f"{slide}: no pseudo-spot reaches {min_tissue:.0%} tissue; check the tissue "
                    "mask (`histoxmodal tile` writes overlay.png) or lower --min-tissue"
                )
        else:
            xy = np.asarray(centres, np.float64).reshape(-1, 2)
            frac = np.full(len(xy), np.nan, np.float32)
        z = embed_dataset(
            run.module,
            SlidePatches(s, xy, patch_um=patch_um, patch_px=patch_px, stain=stain),
            batch_size=bs,
            desc=name,
        )["image"]
        thumb = s.get_thumbnail(max_size=min(THUMB_MAX_SIDE, max(s.dimensions)))
        scale = thumb.shape[1] / s.dimensions[0]
    # what the head read in training (its own inputs): the slide as one section
    try:
        y = np.asarray(fitted.predict(z, coords_um=xy * slide_mpp), np.float32)
    except (ConfigError, DataError) as exc:  # e.g. a head folder mixed from another panel
        raise type(exc)(
            f"{run.path / keys.RUN_HEADS_DIR / head}: {exc} (histoxmodal fit-head {run.path})"
        ) from exc
    obs = pd.DataFrame({"tissue_fraction": frac}, index=[f"{name}_{i}" for i in range(len(xy))])
    a = ad.AnnData(X=y, obs=obs, var=pd.DataFrame(index=all_genes))
    if len(y) >= 3:  # how smooth each predicted map is: Moran's I over the pseudo-spots (squidpy)
        from histoxmodal.evaluation.spatial import morans_i

        i_by_gene = morans_i(y, xy * slide_mpp, genes=all_genes)
        a.var["morans_i"] = np.array([i_by_gene[g] for g in all_genes], np.float64)
    a.obsm[keys.OBSM_SPATIAL] = xy
    a.obsm["X_image"] = z
    # the windows' side in whole pixels, as laid: drawn at patch_um / mpp instead, squares on
    # a grid of the same pitch fell short by a fraction of a pixel and left 1-px seams
    spot_px = float(window_px(patch_um, slide_mpp))
    a.uns["spatial"] = {
        name: {
            "images": {"hires": thumb},
            "scalefactors": {
                "tissue_hires_scalef": float(scale),
                "spot_diameter_fullres": float(spot_px),
            },
            "metadata": {"source": str(slide), "mpp": float(slide_mpp)},
        }
    }
    a.uns["prediction"] = {
        "run": str(run.path.resolve()),
        "head": head,
        **asdict(fitted.inputs),
        "normalization": fitted.normalization,
        "slide": str(slide),
        "mpp": float(slide_mpp),
        "patch_um": patch_um,
        "patch_px": patch_px,
        "grid_um": None if centres is not None else grid_um,
        "histoxmodal_version": __version__,
    }
    if stain is not None:  # the run's stain normaliser: patches kept raw (background, pen)
        a.uns["prediction"]["stain"] = stain.counts()
    if stain is not None and stain.n_fallback:
        log.info(
            "%s: %d of %d patches kept their raw colours (stain: %s)",
            name, stain.n_fallback, len(xy), dict(stain.fallback_reasons),
        )  # fmt: skip
    a.write_h5ad(tmp / PREDICTION_FILE)
    if not wanted:
        var = y.var(axis=0) if len(y) > 1 else np.zeros(len(all_genes))
        wanted = [all_genes[i] for i in np.argsort(-var)[:N_DEFAULT_MAPS]]
    from histoxmodal.workflows.report import expression_map_figure

    for g in wanted:
        fig = expression_map_figure(
            thumb, xy * scale, y[:, all_genes.index(g)], spot_px * scale,
            title=f"{g}: predicted log1p-CP10k ({name})", um_per_px=slide_mpp / scale,
        )  # fmt: skip
        fig.savefig(tmp / f"{_file_safe(g)}.png", dpi=110, bbox_inches="tight")
    return len(xy), wanted, float(slide_mpp)


def _file_safe(gene: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in gene)


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def predict_slides(
    run: str | Path | Run,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    shard: tuple[int, int] | str | None = None,
    overwrite: bool = False,
    on_result: Callable[[SlideResult], None] | None = None,
    **kwargs: Any,
) -> list[SlideResult]:
    """Expression maps of many slides (files or folders of slides); see :func:`predict_slide`
    for the other keyword arguments.

    One slide failing is recorded in its ``manifest.json`` and the others go on. ``shard``
    (``(K, N)``, ``"K/N"`` or ``"auto"``) takes slides ``K, K+N, ...`` of the sorted list, as
    ``tile`` does; ``on_result`` is called with each slide's result as it completes.

    Raises
    ------
    ConfigError
        The run cannot predict (no expression head), a bad option or shard, no slide was found,
        or ``out_dir`` is not a writable folder.
    """
    job = PredictJob.create(run, **kwargs)
    return run_jobs(job, inputs, out_dir, shard=shard, overwrite=overwrite, on_result=on_result)
