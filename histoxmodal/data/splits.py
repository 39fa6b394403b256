"""Train/test splits saved as files with hashes, so every evaluation names what it used.

A split file (``DIR/splits/<kind>.json``) lists folds; each fold stores its ``test`` and (when
used) ``val`` row indices into the dataset (train is everything else), the groups held out, and
the file carries a SHA-256 of its content and of the dataset's row names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoxmodal import keys
from histoxmodal.errors import ConfigError, DataError
from histoxmodal.fileutil import write_json_atomic

SPLIT_KINDS = ("patient", "sample", "random")


def digest(obj: object) -> str:
    """SHA-256 of a JSON-serialisable object (keys sorted): the hash split and store files carry."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def obs_names_digest(obs_names) -> str:
    """SHA-256 of a dataset's row names, as split files record it."""
    return digest([str(i) for i in obs_names])


@dataclass(frozen=True)
class Fold:
    """One fold: row indices of the test (and validation) spots; train is the rest."""

    name: str
    test: np.ndarray
    val: np.ndarray
    held_out: list[str]

    def train(self, n_obs: int) -> np.ndarray:
        mask = np.ones(n_obs, bool)
        mask[self.test] = False
        mask[self.val] = False
        return np.flatnonzero(mask)


def make_split(
    obs, kind: str, *, seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1
) -> dict[str, object]:
    """Build a split of the dataset's rows.

    Parameters
    ----------
    obs
        The dataset's ``adata.obs`` (needs ``sample`` and ``patient``).
    kind
        ``patient``: leave one patient out (one fold per patient); ``sample``: leave one sample
        out; ``random``: one fold, ``test_fraction`` and ``val_fraction`` of spots at random.
    seed
        Seed of the random split.

    Returns
    -------
    dict
        JSON-ready split with ``folds`` and ``sha256``.
    """
    if kind not in SPLIT_KINDS:
        raise ConfigError(f"split kind {kind!r}: expected one of {', '.join(SPLIT_KINDS)}")
    n = len(obs)
    folds = []
    if kind in ("patient", "sample"):
        col = keys.OBS_PATIENT if kind == "patient" else keys.OBS_SAMPLE
        groups = np.asarray(obs[col].astype(str))
        uniq = sorted(set(groups))
        if len(uniq) < 2:
            raise ConfigError(f"a {kind} split needs at least 2 {kind}s, the dataset has {uniq}")
        for g in uniq:
            folds.append(
                {
                    "name": f"{kind}={g}",
                    "held_out": [g],
                    "test": np.flatnonzero(groups == g).tolist(),
                    "val": [],
                }
            )
    else:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        n_test, n_val = round(n * test_fraction), round(n * val_fraction)
        folds.append(
            {
                "name": "random",
                "held_out": [],
                "test": np.sort(perm[:n_test]).tolist(),
                "val": np.sort(perm[n_test : n_test + n_val]).tolist(),
            }
        )
    split = {
        "kind": kind,
        "seed": seed,
        "n_obs": n,
        "obs_names_sha256": obs_names_digest(obs.index),
        "folds": folds,
    }
    split["sha256"] = digest(split)
    return split


def write_split(split: dict[str, object], path: str | Path) -> str:
    """Write a split atomically; returns its SHA-256."""
    write_json_atomic(Path(path), split)
    return str(split["sha256"])


def split_file(dataset: str | Path, kind: str) -> Path:
    """The split file of ``kind`` named in a dataset's manifest, resolved and confined to it."""
    root = Path(dataset).resolve()
    manifest = json.loads((root / keys.PAIRED_MANIFEST_FILE).read_text(encoding="utf-8"))
    entry = manifest.get("splits", {}).get(kind)
    if not entry or "file" not in entry:
        raise ConfigError(f"{root}: no {kind!r} split ({(entry or {}).get('skipped', 'absent')})")
    path = (root / entry["file"]).resolve()
    if not path.is_relative_to(root):
        raise DataError(
            f"{root}: the manifest's split path {entry['file']!r} leaves the "
            f"dataset folder; refusing to read it"
        )
    return path


@dataclass(frozen=True)
class Split:
    """A split file: its folds, the dataset rows it was made for, and its hash.

    ``Split.load(path).fold("sample=C5")`` (or ``.fold(0)``) is the one way a fold is chosen by
    name or index anywhere in the package.
    """

    path: Path
    folds: tuple[Fold, ...]
    kind: str
    n_obs: int
    obs_names_sha256: str | None
    sha256: str

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split file, verifying its hash."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"split file {p} not found; `histoxmodal build` writes splits/")
        not_split = f"{p} is not a split file written by `histoxmodal build` (its splits/ folder)"
        # not a split file at all (--split names the wrong file): a usage error; a split file
        # that was edited or whose rows do not fit: bad data
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{not_split}: not JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("folds"), list):
            raise ConfigError(f"{not_split}: it has no list of folds")
        want = data.pop("sha256", None)
        if want != digest(data):
            raise DataError(f"{p}: content does not match its sha256; the split file was edited")
        n_obs = data.get("n_obs", -1)
        if isinstance(n_obs, bool) or not isinstance(n_obs, int) or n_obs < -1:
            raise DataError(f"split file {p}: n_obs={n_obs!r} is not a number of rows")
        try:
            folds = tuple(
                Fold(
                    str(f["name"]),
                    _indices(p, f, "test", n_obs),
                    _indices(p, f, "val", n_obs),
                    list(f["held_out"]),
                )
                for f in data["folds"]
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{not_split}: a fold lacks name, test, val or held_out") from exc
        for f in folds:
            _check_fold(p, f, n_obs)
        return cls(
            p,
            folds,
            str(data.get("kind", "")),
            n_obs,
            data.get("obs_names_sha256"),
            str(want),
        )

    @classmethod
    def of_dataset(cls, dataset: str | Path, kind: str = "random") -> Split:
        """The dataset's own split of ``kind`` (``random``, ``sample`` or ``patient``)."""
        return cls.load(split_file(dataset, kind))

    @property
    def names(self) -> list[str]:
        """Fold names in file order, e.g. ``["sample=C1", "sample=C2", ...]``."""
        return [f.name for f in self.folds]

    def fold(self, fold: int | str = 0) -> Fold:
        """The fold at index ``fold`` or named ``fold`` (``"sample=C5"``; ``"C5"`` also matches
        when exactly one fold holds out ``C5``)."""
        if isinstance(fold, str) and fold.lstrip("-").isdigit():
            fold = int(fold)
        if isinstance(fold, int):
            if not -len(self.folds) <= fold < len(self.folds):
                raise ConfigError(
                    f"fold {fold} out of range: {self.path} has {len(self.folds)} folds "
                    f"({', '.join(self.names)})"
                )
            return self.folds[fold]
        by_name = [f for f in self.folds if f.name == fold]
        if not by_name:
            by_name = [f for f in self.folds if f.held_out == [fold]]
        if len(by_name) != 1:
            raise ConfigError(f"fold {fold!r} not in {self.path}; folds: {', '.join(self.names)}")
        return by_name[0]

    def check(self, obs_names, *, dataset: str | Path = "the dataset") -> None:
        """Refuse a split made for other rows: row count and row-name hash must match, and every
        row index must lie in the dataset."""
        n = len(obs_names)
        if self.n_obs >= 0 and self.n_obs != n:
            raise ConfigError(
                f"split {self.path} was made for {self.n_obs} rows, but {dataset} has {n}; use "
                "the split files of the dataset itself (its splits/ folder)"
            )
        if self.obs_names_sha256 and self.obs_names_sha256 != obs_names_digest(obs_names):
            raise ConfigError(
                f"split {self.path} was made for another dataset than {dataset} (row names "
                "differ); use the split files of the dataset itself (its splits/ folder)"
            )
        for f in self.folds:  # a file without n_obs was checked for ranges only now
            _check_fold(self.path, f, n)


def _indices(path: Path, fold: dict, key: str, n_obs: int) -> np.ndarray:
    """A fold's ``test`` or ``val`` row indices: a list of distinct integers in
    ``[0, n_obs)`` (``n_obs`` -1: unknown, checked against the dataset by :meth:`Split.check`)."""
    values = fold[key]
    where = f"split file {path}, fold {fold.get('name')!r}, {key!r}"
    if not isinstance(values, list):
        raise DataError(f"{where}: expected a list of row indices, got {type(values).__name__}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(
                f"{where}: row index {v!r} is not an integer; a split lists row numbers "
                "0, 1, 2, ... of the dataset (rewrite it with histoxmodal build)"
            )
        if v < 0 or 0 <= n_obs <= v:
            upper = f"{n_obs - 1}" if n_obs >= 0 else "the last row"
            raise DataError(f"{where}: row index {v} is out of range [0, {upper}]")
    rows = np.asarray(values, np.int64)
    uniq, counts = np.unique(rows, return_counts=True)
    if len(uniq) != len(rows):
        dup = uniq[counts > 1]
        raise DataError(
            f"{where}: row index {int(dup[0])} is listed more than once "
            f"({len(dup)} repeated indices); each row may appear once"
        )
    return rows


def _check_fold(path: Path, fold: Fold, n_obs: int) -> None:
    """Refuse a fold with no test rows, rows both in test and val, rows past ``n_obs`` (when
    known, >= 0) or no training rows left."""
    where = f"split file {path}, fold {fold.name!r}"
    if len(fold.test) == 0:
        raise DataError(f"{where}: the test list is empty; a fold needs at least one test row")
    both = np.intersect1d(fold.test, fold.val)
    if len(both):
        raise DataError(
            f"{where}: row index {int(both[0])} is in both test and val ({len(both)} rows); "
            "test, val and train must be disjoint"
        )
    if n_obs < 0:
        return
    for key, rows in (("test", fold.test), ("val", fold.val)):
        if len(rows) and (rows.min() < 0 or rows.max() >= n_obs):
            bad = int(rows.max() if rows.max() >= n_obs else rows.min())
            raise DataError(
                f"{where}, {key!r}: row index {bad} is out of range [0, {n_obs - 1}] "
                f"(the dataset has {n_obs} rows)"
            )
    if len(fold.test) + len(fold.val) >= n_obs:
        raise DataError(f"{where}: test and val hold all {n_obs} rows; no training rows are left")


def load_split(path: str | Path) -> list[Fold]:
    """The folds of a split file, its hash verified (see :class:`Split`)."""
    return list(Split.load(path).folds)
