"""``histoxmodal mil``: slide-level mutation and clinical heads on tile features.

A cohort is a folder of tile features (``histoxmodal features`` output: ``<slide>.h5`` in the
TRIDENT/CLAM layout, or ``<slide>.h5ad``) and a ``labels.csv`` with columns ``slide``,
``patient`` and one column per target (binary or multi-class). Each slide is one bag of tiles.

:func:`train_mil` runs the protocol HESCAPE used for mutation classification:

- cross-validation grouped by patient (no patient in both train and test) and stratified by the
  label (``sklearn.model_selection.StratifiedGroupKFold``), repeated over seeds;
- per fold AUROC (one-vs-rest macro for more than two classes) and balanced accuracy, with the
  mean and a 95 % t-interval over all folds and seeds, beside chance (AUROC 0.5, balanced
  accuracy 1 / n_classes);
- then one head fitted on every labelled slide, saved for :func:`predict_mil`.

The MIL run folder holds ``mil.json`` (target, classes, model, protocol, the features' encoder
and checksum), ``head/`` (the fitted head), ``metrics.json``, ``oof_predictions.csv`` (each
slide's out-of-fold probabilities per seed) and ``attention/<slide>.png`` (ABMIL: the out-of-fold
attention of the first seed over the slide's thumbnail). It is built in a staging folder and
renamed into place when complete.

Slides listed without features, features without a label row, and rows with an empty label are
reported (logged and in ``metrics.json['excluded']``), never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoxmodal.errors import ConfigError, DataError, HistoxmodalError
from histoxmodal.fileutil import (
    check_output_location,
    check_replaceable,
    clean_stale,
    output_lock,
    publish_dir,
    staging_dir,
    write_json_atomic,
)
from histoxmodal.version import __version__

log = logging.getLogger(__name__)

#: ``--model`` -> registered head
MIL_MODELS = {"abmil": "abmil", "mean": "mean_mil"}
#: feature file suffixes read as bags (``histoxmodal features --format h5|anndata``)
FEATURE_SUFFIXES = (".h5", ".h5ad")
MIL_JSON = "mil.json"
METRICS_JSON = "metrics.json"
OOF_CSV = "oof_predictions.csv"
HEAD_DIR = "head"
ATTENTION_DIR = "attention"
#: the features' attributes that must agree between training and prediction
_EXTRACTOR_KEYS = ("encoder", "weights_sha256", "projection", "dim", "tile_px")


# ---------------------------------------------------------------------------------- cohort


@dataclass
class Cohort:
    """The labelled bags of one target.

    Attributes
    ----------
    slides, patients, labels
        ``(n,)`` slide names, patient ids and label values (strings) of the usable slides.
    files
        The feature file of each slide.
    bags, coords
        ``(n_tiles, dim)`` features and ``(n_tiles, 2)`` level-0 top-left corners per slide.
    attrs
        Each file's attributes (encoder, weights checksum, mpp, tile size, slide path, ...).
    excluded
        Slides left out, by reason: ``no_features``, ``no_label``, ``not_in_labels``, ``empty``.
    """

    slides: list[str]
    patients: np.ndarray
    labels: np.ndarray
    files: list[Path]
    bags: list[np.ndarray]
    coords: list[np.ndarray]
    attrs: list[dict[str, Any]]
    excluded: dict[str, list[str]] = field(default_factory=dict)


def feature_files(features_dir: str | Path) -> dict[str, Path]:
    """Slide name -> feature file (``<slide>.h5`` or ``<slide>.h5ad``) in ``features_dir``.

    Hidden (partial) files are ignored; a slide with both an ``.h5`` and an ``.h5ad`` is an
    error, since it is unclear which to read.
    """
    d = Path(features_dir)
    if not d.is_dir():
        raise ConfigError(
            f"{d}: not a folder of tile features; make one with `histoxmodal features SLIDES "
            f"--encoder NAME --out {d}`"
        )
    out: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or p.suffix not in FEATURE_SUFFIXES or not p.is_file():
            continue
        if p.stem in out:
            raise DataError(
                f"{d}: slide {p.stem!r} has both {out[p.stem].name} and {p.name}; keep one"
            )
        out[p.stem] = p
    if not out:
        raise ConfigError(
            f"{d}: no tile features (*.h5 or *.h5ad); make them with `histoxmodal features "
            f"SLIDES --encoder NAME --out {d}`"
        )
    return out


def read_bag(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One slide's ``features (n, dim)``, ``coords (n, 2)`` and attributes, from an ``.h5``
    (TRIDENT/CLAM layout) or ``.h5ad`` written by ``histoxmodal features``."""
    from histoxmodal.workflows.features import read_features

    path = Path(path)
    try:
        if path.suffix == ".h5ad":
            import anndata as ad

            a = ad.read_h5ad(path)
            attrs = dict(a.uns.get("features", {}))
            coords = a.obs[["x", "y"]].to_numpy(np.int64)
            return np.asarray(a.X, np.float32), coords, attrs
        return read_features(path)
    except (OSError, KeyError) as e:
        raise DataError(
            f"{path}: cannot read tile features ({e}); re-extract it with `histoxmodal features`"
        ) from e


#: label cells read as "no label" (a literal NaN is a missing value, never a class of its own)
MISSING_LABELS = ["", "NA", "N/A", "NaN", "nan", "NULL", "null", "None"]


def read_labels(path: str | Path, target: str):
    """``labels.csv`` as a DataFrame with columns ``slide``, ``patient`` and ``target`` (labels
    as strings; empty cells and the spellings of :data:`MISSING_LABELS` are missing), checked."""
    import pandas as pd

    path = Path(path)
    if target in ("slide", "patient"):
        raise ConfigError(
            f"--target {target}: that column names the slides and patients; give the label "
            "column to learn (e.g. --target KRAS)"
        )
    if not path.is_file():
        raise ConfigError(f"--labels {path}: no such file (a CSV with slide, patient, <target>)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=MISSING_LABELS)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"--labels {path}: the file is empty; give a CSV with a header row slide,patient,"
            f"{target} and one row per slide"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"--labels {path}: not a readable CSV ({e})") from e
    missing = [c for c in ("slide", "patient", target) if c not in df.columns]
    if missing:
        targets = [c for c in df.columns if c not in ("slide", "patient")]
        # no --target column: the option names a column the file lacks; no slide or patient
        # column: the file is not a labels CSV
        raise (ConfigError if missing == [target] else DataError)(
            f"--labels {path}: no column {', '.join(missing)}; it has {', '.join(df.columns)}"
            + (f" (targets: {', '.join(targets)})" if "slide" not in missing else "")
        )
    if df["slide"].isna().any() or df["patient"].isna().any():
        rows = (df.index[df["slide"].isna() | df["patient"].isna()] + 2).tolist()[:5]
        raise DataError(f"--labels {path}: empty slide or patient on line(s) {rows}")
    dup = df["slide"][df["slide"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"--labels {path}: slide(s) listed twice: {', '.join(dup[:5])}")
    df["slide"] = df["slide"].map(lambda s: Path(s).stem if Path(s).suffix else s)
    return df[["slide", "patient", target]].reset_index(drop=True)


def load_cohort(features_dir: str | Path, labels: str | Path, target: str) -> Cohort:
    """The labelled bags of ``target``: every slide with both features and a label.

    The others are logged and listed in :attr:`Cohort.excluded`.
    """
    files = feature_files(features_dir)
    df = read_labels(labels, target)
    listed = set(df["slide"])
    excluded: dict[str, list[str]] = {
        "no_features": sorted(s for s in df["slide"] if s not in files),
        "no_label": sorted(df["slide"][df[target].isna() & df["slide"].isin(files)]),
        "not_in_labels": sorted(s for s in files if s not in listed),
        "empty": [],
    }
    rows = df[df[target].notna() & df["slide"].isin(files)]
    slides, patients, values, paths, bags, coords, attrs = [], [], [], [], [], [], []
    for slide, patient, value in rows.itertuples(index=False):
        f, c, a = read_bag(files[slide])
        if len(f) == 0:
            excluded["empty"].append(slide)
            continue
        slides.append(slide)
        patients.append(patient)
        values.append(value)
        paths.append(files[slide])
        bags.append(np.asarray(f, np.float32))
        coords.append(np.asarray(c, np.int64).reshape(-1, 2))
        attrs.append(a)
    reasons = {
        "no_features": "listed in labels but no features",
        "no_label": f"empty {target!r} label",
        "not_in_labels": "features but no row in labels",
        "empty": "no tiles",
    }
    for k, names in excluded.items():
        if names:
            log.warning(
                "%d slide(s) left out (%s): %s%s",
                len(names),
                reasons[k],
                ", ".join(names[:8]),
                " ..." if len(names) > 8 else "",
            )
    if not slides:
        raise DataError(
            f"no slide has both features in {features_dir} and a {target!r} label in {labels}: "
            "check that the labels' slide column matches the feature file names"
        )
    dims = {b.shape[1] for b in bags}
    if len(dims) > 1:
        raise DataError(f"{features_dir}: feature files of different dims {sorted(dims)}")
    _check_one_extractor(attrs, slides, features_dir)
    return Cohort(slides, np.asarray(patients), np.asarray(values), paths, bags, coords, attrs,
                  excluded)  # fmt: skip


def _extractor(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: attrs.get(k) for k in _EXTRACTOR_KEYS}


def _check_one_extractor(attrs: list[dict], slides: list[str], where) -> None:
    first = _extractor(attrs[0])
    for a, s in zip(attrs, slides, strict=True):
        if _extractor(a) != first:
            raise DataError(
                f"{where}: {s} was extracted with {_extractor(a)}, {slides[0]} with {first}; "
                "one cohort needs one encoder: re-extract into separate folders"
            )


def features_checksum(files: Sequence[Path], slides: Sequence[str]) -> str:
    """SHA-256 over the slides' names and their feature files' bytes (sorted by slide)."""
    h = hashlib.sha256()
    for s, f in sorted(zip(slides, files, strict=True)):
        h.update(s.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# -------------------------------------------------------------------------------- protocol


def grouped_stratified_folds(
    labels: np.ndarray,
    groups: np.ndarray,
    n_folds: int,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index pairs: each patient in one fold only, classes balanced across
    folds (``StratifiedGroupKFold``, shuffled by ``seed``).

    Raises
    ------
    ConfigError
        ``n_folds`` cannot work: it names the largest fold count that does.
    DataError
        The cohort cannot be cross-validated at all (a class on one patient only).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    classes = np.unique(labels)
    names = [str(class_names[int(c)]) if class_names is not None else str(c) for c in classes]
    counts = [len(np.unique(groups[labels == c])) for c in classes]
    per_class = ", ".join(
        f"{n}: {k} patient{'s' if k != 1 else ''}" for n, k in zip(names, counts, strict=True)
    )
    # every fold holds out patients of every class, so no class may have fewer patients
    # than folds, and there are never more folds than patients
    largest = min(min(counts), len(np.unique(groups)))
    if largest < 2:
        rare = names[int(np.argmin(counts))]
        raise DataError(
            f"this cohort cannot be cross-validated: class {rare!r} has slides of only one "
            f"patient ({per_class}), and every fold must hold out patients of each class; "
            "label slides of more patients"
        )
    if not 2 <= n_folds <= largest:
        raise ConfigError(
            f"--folds {n_folds}: with these patients ({per_class}) at most {largest} folds keep "
            f"patients of every class in each test fold; use --folds {largest}"
            + (" (or fewer, down to 2)" if largest > 2 else "")
        )
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in cv.split(np.zeros(len(labels)), labels, groups)]


def fold_metrics(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """AUROC (binary: of class 1; else one-vs-rest macro) and balanced accuracy of one fold;
    AUROC is NaN when the fold's test slides hold a single class."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    if len(np.unique(y)) < 2:
        auroc = float("nan")
    elif n_classes == 2:
        auroc = float(roc_auc_score(y, proba[:, 1]))
    else:
        auroc = float(
            roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=range(n_classes))
        )
    return {
        "auroc": auroc,
        "balanced_accuracy": float(balanced_accuracy_score(y, proba.argmax(axis=1))),
    }


def summarise(values: Sequence[float], bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """Mean, sd and 95 % t-interval of the finite ``values`` (folds x seeds), and their count.

    The interval is clipped to ``bounds``, the metric's range (AUROC and balanced accuracy lie
    in [0, 1]).
    """
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if len(v) == 0:
        return {"mean": None, "sd": None, "ci95": [None, None], "n": 0}
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "sd": None, "ci95": [None, None], "n": 1}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(v) - 1) * sd / math.sqrt(len(v)))
    ci = [max(bounds[0], mean - half), min(bounds[1], mean + half)]
    return {"mean": mean, "sd": sd, "ci95": ci, "n": len(v)}


def _head(model: str, seed: int, params: dict[str, Any]):
    from histoxmodal.heads import create_head

    if model not in MIL_MODELS:
        raise ConfigError(f"--model {model!r}: choose one of {', '.join(MIL_MODELS)}")
    return create_head(MIL_MODELS[model], seed=seed, **params)


# ----------------------------------------------------------------------------------- train


#: the largest seed every generator takes (numpy's legacy ``RandomState``: 32 bits)
MAX_SEED = 2**32 - 1


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a list of distinct integers in [0, 2**32 - 1], at least one."""
    out: list[int] = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s <= MAX_SEED:
            raise ConfigError(f"--seeds: seed {s!r} must be an integer in [0, {MAX_SEED}]")
        if int(s) in out:
            raise ConfigError(
                f"--seeds: seed {s} is given twice; each seed is one more repeat of the "
                "cross-validation, and a repeated one only counts the same folds twice"
            )
        out.append(int(s))
    if not out:
        raise ConfigError("--seeds: give at least one seed")
    return out


def check_lr(lr: float | None) -> None:
    """Refuse a learning rate outside (0, 1): 0 trains nothing, nan/inf/1e9 diverge."""
    if lr is None:
        return
    ok = isinstance(lr, numbers.Real) and not isinstance(lr, bool) and math.isfinite(lr)
    if not ok or not 0 < lr < 1:
        raise ConfigError(
            f"--lr {lr!r}: must lie in (0, 1) (0 trains nothing, >= 1 diverges), e.g. 1e-4"
        )


def train_mil(
    features_dir: str | Path,
    labels: str | Path,
    target: str,
    out: str | Path,
    *,
    model: str = "abmil",
    folds: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    lr: float | None = None,
    attention_maps: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Cross-validate a MIL head on a cohort, then fit it on every slide and save it.

    Parameters
    ----------
    features_dir
        Tile features, one ``<slide>.h5`` / ``.h5ad`` per slide (``histoxmodal features``).
    labels
        ``labels.csv`` with ``slide``, ``patient`` and the ``target`` column.
    target
        The label column to learn (binary or multi-class).
    out
        The MIL run folder to create.
    model
        ``"abmil"`` (gated attention) or ``"mean"`` (mean pooling), see :data:`MIL_MODELS`.
    folds, seeds
        Patient-grouped, label-stratified folds, repeated for each seed.
    epochs, lr
        Override the head's defaults.
    attention_maps
        Write ``attention/<slide>.png`` (ABMIL only).
    overwrite
        Replace an existing MIL run at ``out``.

    Returns
    -------
    dict
        The contents of ``metrics.json``.
    """
    out = Path(out)
    if model not in MIL_MODELS:
        raise ConfigError(f"--model {model!r}: choose one of {', '.join(MIL_MODELS)}")
    check_output_location(out, inputs=[features_dir, labels])
    check_replaceable(
        out,
        overwrite=overwrite,
        is_ours=lambda p: (p / METRICS_JSON).is_file() and (p / OOF_CSV).is_file(),
        kind=f"a MIL run (with its {METRICS_JSON})",
    )
    seeds = check_seeds(seeds)
    check_lr(lr)
    if epochs is not None and (
        isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1
    ):
        raise ConfigError(f"--epochs {epochs!r}: must be an integer >= 1")
    # one process writes a MIL run at a time: a second would remove the first's staging folder
    with output_lock(out):
        return _train_mil_locked(
            features_dir, labels, target, out, model=model, folds=folds, seeds=seeds,
            epochs=epochs, lr=lr, attention_maps=attention_maps,
        )  # fmt: skip


def _train_mil_locked(
    features_dir, labels, target, out, *, model, folds, seeds, epochs, lr, attention_maps
) -> dict[str, Any]:  # fmt: skip
    import pandas as pd

    params = {k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None}
    cohort = load_cohort(features_dir, labels, target)
    classes, y = np.unique(cohort.labels, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"{target!r} has one class ({classes[0]!r}) among the {len(y)} usable slides: a "
            "classifier needs at least two"
        )
    splits = {s: grouped_stratified_folds(y, cohort.patients, folds, s, classes) for s in seeds}
    t0 = time.time()
    per_fold, oof_rows = [], []
    oof_attention: dict[int, np.ndarray] = {}
    for seed in seeds:
        for k, (tr, te) in enumerate(splits[seed]):
            head = _head(model, seed, params).fit([cohort.bags[i] for i in tr], y[tr])
            proba = head.predict_proba([cohort.bags[i] for i in te])
            m = fold_metrics(y[te], proba, len(classes))
            per_fold.append({"seed": seed, "fold": k, "n_train": len(tr), "n_test": len(te), **m})
            log.info("seed %d fold %d: AUROC %.3f, balanced accuracy %.3f", seed, k,
                     m["auroc"], m["balanced_accuracy"])  # fmt: skip
            for i, p in zip(te, proba, strict=True):
                oof_rows.append(
                    {
                        "slide": cohort.slides[i],
                        "patient": cohort.patients[i],
                        "label": cohort.labels[i],
                        "seed": seed,
                        "fold": k,
                        "predicted": classes[int(p.argmax())],
                        **{f"p_{c}": float(q) for c, q in zip(classes, p, strict=True)},
                    }
                )
                if seed == seeds[0] and hasattr(head, "attention"):
                    oof_attention[int(i)] = head.attention(cohort.bags[i])
    pooled = []
    oof = pd.DataFrame(oof_rows)
    for seed in seeds:
        part = oof[oof["seed"] == seed].set_index("slide").loc[cohort.slides]
        proba = part[[f"p_{c}" for c in classes]].to_numpy()
        pooled.append({"seed": seed, **fold_metrics(y, proba, len(classes))})
    final = _head(model, seeds[0], params).fit(cohort.bags, y)
    ex = _extractor(cohort.attrs[0])
    protocol = {
        "cv": "StratifiedGroupKFold: grouped by patient, stratified by label",
        "folds": folds,
        "seeds": seeds,
        "interval": "95 % t-interval over all folds x seeds",
        "model": model,
        "head": MIL_MODELS[model],
        "head_params": final.get_params(),
        "encoder": ex,
        "features_dir": str(Path(features_dir).resolve()),
        "features_sha256": features_checksum(cohort.files, cohort.slides),
        "labels": str(Path(labels).resolve()),
    }
    counts = {str(c): int((y == i).sum()) for i, c in enumerate(classes)}
    metrics = {
        "target": target,
        "classes": [str(c) for c in classes],
        "n_slides": len(cohort.slides),
        "n_patients": len(np.unique(cohort.patients)),
        "class_counts": counts,
        "auroc": summarise([r["auroc"] for r in per_fold]),
        "balanced_accuracy": summarise([r["balanced_accuracy"] for r in per_fold]),
        "chance": {"auroc": 0.5, "balanced_accuracy": 1.0 / len(classes)},
        "per_fold": per_fold,
        "pooled_per_seed": pooled,
        "protocol": protocol,
        "excluded": cohort.excluded,
        "seconds": round(time.time() - t0, 2),
        "histoxmodal_version": __version__,
    }
    info = {
        "kind": "mil",
        "target": target,
        "classes": metrics["classes"],
        "class_dtype": "str",
        "model": model,
        "protocol": protocol,
        "slides": cohort.slides,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "histoxmodal_version": __version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent, out.name)
    tmp = staging_dir(out)
    try:
        final.save(tmp / HEAD_DIR)
        write_json_atomic(tmp / MIL_JSON, info)
        write_json_atomic(tmp / METRICS_JSON, metrics)
        oof.to_csv(tmp / OOF_CSV, index=False)
        if attention_maps and oof_attention:
            (tmp / ATTENTION_DIR).mkdir()
            for i, att in oof_attention.items():
                row = oof[(oof["seed"] == seeds[0]) & (oof["slide"] == cohort.slides[i])].iloc[0]
                _attention_png(
                    tmp / ATTENTION_DIR / f"{cohort.slides[i]}.png",
                    cohort.slides[i], cohort.coords[i], att, cohort.attrs[i],
                    f"{cohort.slides[i]} ({target}={cohort.labels[i]}): out-of-fold call "
                    f"{row['predicted']} (P={row['p_' + str(row['predicted'])]:.2f})",
                )  # fmt: skip
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics


# --------------------------------------------------------------------------------- predict


@dataclass
class MILRun:
    """A saved MIL run (:func:`train_mil` output): its ``mil.json`` and fitted head."""

    path: Path
    info: dict[str, Any]
    head: Any

    @classmethod
    def load(cls, path: str | Path) -> MILRun:
        """Open a MIL run folder, with a clear error when it is not one."""
        from histoxmodal.heads import load_head

        path = Path(path)
        f = path / MIL_JSON
        if not f.is_file():
            raise ConfigError(
                f"{path}: not a MIL run (no {MIL_JSON}); train one with `histoxmodal mil train`"
            )
        try:
            info = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{f}: not valid JSON ({e}); retrain the MIL run") from e
        return cls(path, info, load_head(path / HEAD_DIR))

    @property
    def classes(self) -> list[str]:
        """The label values, in the column order of the probabilities."""
        return list(self.info["classes"])

    def __repr__(self) -> str:
        from histoxmodal.reprs import short_list, short_path

        try:
            info = self.info
            encoder = (info.get("protocol") or {}).get("encoder") or {}
            enc = encoder.get("encoder") if isinstance(encoder, dict) else encoder
            n = len(info.get("slides") or [])
            return (
                f"MILRun({short_path(self.path)!r}, target={info.get('target')!r}, "
                f"classes={short_list(info.get('classes') or [])}, model={info.get('model')!r}, "
                f"encoder={enc!r}, {n} slide{'' if n == 1 else 's'})"
            )
        except Exception:  # a repr never raises
            return f"<MILRun object at {id(self):#x}>"


@dataclass
class MILPrediction:
    """One slide's call (or why there is none)."""

    slide: str
    status: str
    predicted: str | None = None
    proba: dict[str, float] = field(default_factory=dict)
    n_tiles: int = 0
    reason: str = ""

    @property
    def failed(self) -> bool:
        """The slide could not be scored."""
        return self.status == "failed"


def predict_mil(
    mil_run: str | Path,
    features_dir: str | Path,
    out: str | Path,
    *,
    attention_maps: bool = True,
) -> list[MILPrediction]:
    """Score every slide of ``features_dir`` with a trained MIL run.

    Writes the CSV ``out`` (``slide``, ``status``, ``predicted``, ``p_<class>`` per class,
    ``n_tiles``, ``reason``) atomically and, for ABMIL with ``attention_maps``, an attention
    heatmap per slide into ``<out stem>_attention/``. A slide whose features cannot be read or
    come from another encoder than the run's is recorded as failed and the others go on.
    """
    import pandas as pd

    run = MILRun.load(mil_run)
    files = feature_files(features_dir)
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: give a CSV file path, e.g. {out}/calls.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    want = run.info["protocol"]["encoder"]
    maps_dir = out.with_name(f"{out.stem}_attention")
    draw = attention_maps and hasattr(run.head, "attention")
    if draw:
        maps_dir.mkdir(exist_ok=True)
    results: list[MILPrediction] = []
    for slide, f in files.items():
        try:
            bag, coords, attrs = read_bag(f)
            got = _extractor(attrs)
            if got != want:
                diff = {k: (got[k], want[k]) for k in want if got.get(k) != want[k]}
                raise DataError(
                    f"features from another extractor than the run's ({diff}, this file vs the "
                    "run): extract them with the run's encoder"
                )
            if len(bag) == 0:
                results.append(MILPrediction(slide, "empty", reason="no tiles"))
                continue
            p = run.head.predict_proba([bag])[0]
            proba = {c: float(q) for c, q in zip(run.classes, p, strict=True)}
            pred = run.classes[int(np.argmax(p))]
            results.append(MILPrediction(slide, "ok", pred, proba, len(bag)))
            if draw:
                title = f"{slide}: {run.info['target']} = {pred} (P={max(p):.2f})"
                _attention_png(maps_dir / f"{slide}.png", slide, coords,
                               run.head.attention(bag), attrs, title)  # fmt: skip
        except (HistoxmodalError, OSError, ValueError) as e:
            log.error("%s: %s", slide, e)
            results.append(MILPrediction(slide, "failed", reason=str(e)))
    rows = [
        {
            "slide": r.slide,
            "status": r.status,
            "predicted": r.predicted,
            **{f"p_{c}": r.proba.get(c, np.nan) for c in run.classes},
            "n_tiles": r.n_tiles,
            "reason": r.reason,
        }
        for r in results
    ]
    tmp = out.with_name(f".{out.name}.tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(out)
    return results


# ----------------------------------------------------------------------------- attention


def _attention_png(
    path: Path, slide: str, coords: np.ndarray, att: np.ndarray, attrs: dict, title: str
) -> None:
    """Attention (x n_tiles, so 1 is uniform) per tile over the slide's thumbnail, or over a
    white canvas when the slide is no longer where its features say."""
    from histoxmodal.workflows.report import expression_map_figure

    size0 = float(attrs.get("patch_size_level0") or 1)
    centres = np.asarray(coords, np.float64) + size0 / 2
    level0_mpp = float(attrs.get("level0_mpp") or attrs.get("mpp") or 1.0)
    thumb, scale = None, None
    src = attrs.get("slide")
    if src and Path(str(src)).is_file():
        try:
            from histoxmodal.io.slide import open_slide

            with open_slide(str(src), mpp=level0_mpp) as s:
                thumb = s.get_thumbnail(max_size=1024)
                scale = thumb.shape[1] / s.dimensions[0]
        except (HistoxmodalError, OSError) as e:
            log.info("%s: no thumbnail for the attention map (%s)", slide, e)
    if thumb is None:
        extent = centres.max(axis=0) + size0
        scale = 1024 / max(extent)
        thumb = np.full((int(extent[1] * scale) + 1, int(extent[0] * scale) + 1, 3), 255, np.uint8)
    values = np.asarray(att, np.float64) * len(att)
    fig = expression_map_figure(
        thumb,
        centres * scale,
        values,
        size0 * scale,
        title=title,
        um_per_px=level0_mpp / scale,
        vmin=0.0,
        vmax=float(max(np.percentile(values, 99), 1.0 + 1e-6)),
        label="attention x n tiles (1 = uniform)",
    )
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    tmp.replace(path)
