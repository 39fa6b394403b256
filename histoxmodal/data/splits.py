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
from histoxmodal._fileutil import write_json_atomic
from histoxmodal.errors import ConfigError

SPLIT_KINDS = ("patient", "sample", "random")


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


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
        "obs_names_sha256": _digest([str(i) for i in obs.index]),
        "folds": folds,
    }
    split["sha256"] = _digest(split)
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
        raise ConfigError(
            f"{root}: the manifest's split path {entry['file']!r} leaves the "
            f"dataset folder; refusing to read it"
        )
    return path


def load_split(path: str | Path) -> list[Fold]:
    """Read a split file, verifying its hash."""
    p = Path(path)
    data = json.loads(p.read_text(encoding="utf-8"))
    want = data.pop("sha256", None)
    if want != _digest(data):
        raise ConfigError(f"{p}: content does not match its sha256; the split file was edited")
    return [
        Fold(
            f["name"],
            np.asarray(f["test"], np.int64),
            np.asarray(f["val"], np.int64),
            list(f["held_out"]),
        )
        for f in data["folds"]
    ]
