"""Spatial neighbourhoods of spots within a section: the context a spot is read in.

Expression varies smoothly over a section, and one 112 µm patch sees only part of the tissue a
spot's expression reflects. :func:`neighbour_context` puts beside each spot's features the mean
features of its nearest spots in the same section (TRIPLEX's neighbour view, on features): it
reads images only, so it applies to a section no expression was measured on.
"""

from __future__ import annotations

import numpy as np


def section_neighbours(coords, groups=None, *, k: int) -> np.ndarray:
    """The ``k`` nearest other rows of each row within its group.

    Parameters
    ----------
    coords
        ``(n, 2)`` spot centres (any unit shared within a group).
    groups
        ``(n,)`` section of each row (default: one section); neighbours never cross sections.
    k
        Neighbours per row. A group with ``m <= k`` rows gives each row its ``m - 1`` others,
        padded by repeating the nearest; a row alone in its group is its own neighbour.

    Returns
    -------
    numpy.ndarray
        ``(n, k)`` int64 row indices, nearest first.
    """
    from scipy.spatial import cKDTree

    coords = np.asarray(coords, np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (n, 2), got {coords.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(coords)
    groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} rows, coords {n}")
    out = np.empty((n, k), np.int64)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if len(rows) == 1:
            out[rows] = rows[0]
            continue
        kk = min(k + 1, len(rows))
        _, idx = cKDTree(coords[rows]).query(coords[rows], k=kk)
        # drop each row itself: its own hit, or the farthest when exact duplicates hid it
        own = idx == np.arange(len(rows))[:, None]
        own[~own.any(1), -1] = True
        others = idx[~own].reshape(len(rows), kk - 1)
        if others.shape[1] < k:  # small group: repeat the nearest
            pad = np.repeat(others[:, :1], k - others.shape[1], axis=1)
            others = np.concatenate([others, pad], axis=1)
        out[rows] = rows[others]
    return out


def neighbour_context(features, coords, groups=None, *, k: int) -> np.ndarray:
    """Each row's features beside the mean features of its ``k`` nearest spots in the same
    section (:func:`section_neighbours`): ``(n, d)`` -> ``(n, 2d)`` float32."""
    x = np.asarray(features, np.float32)
    if len(x) != len(coords):
        raise ValueError(f"features has {len(x)} rows, coords {len(coords)}")
    nb = section_neighbours(coords, groups, k=k)
    return np.concatenate([x, x[nb].mean(1)], axis=1)
