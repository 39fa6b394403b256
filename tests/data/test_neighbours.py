"""Neighbourhoods of spots within a section, and the context features built from them."""

from __future__ import annotations

import numpy as np
import pytest

from histoxmodal.data.neighbours import neighbour_context, section_neighbours


def test_neighbours_are_the_nearest_spots_of_the_same_section():
    # a 3 x 3 grid (pitch 1) in section a, and the same coordinates in section b
    grid = np.array([(x, y) for y in range(3) for x in range(3)], float)
    coords = np.concatenate([grid, grid])
    groups = np.array(["a"] * 9 + ["b"] * 9)
    nb = section_neighbours(coords, groups, k=4)
    # the centre (row 4) has exactly its four edge neighbours at distance 1
    assert sorted(nb[4]) == [1, 3, 5, 7]
    assert sorted(nb[13]) == [10, 12, 14, 16]  # section b: its own rows only
    assert (nb[:9] < 9).all() and (nb[9:] >= 9).all()
    assert not (nb == np.arange(18)[:, None]).any()  # never itself
    # a corner's two nearest are its edge neighbours, then the next two at distance sqrt(2), 2
    d = np.linalg.norm(coords[nb[0]] - coords[0], axis=1)
    np.testing.assert_allclose(d, [1, 1, np.sqrt(2), 2])


def test_small_sections_and_duplicates():
    coords = np.array([[0, 0], [0, 0], [5, 5], [9, 9]], float)
    nb = section_neighbours(coords, ["a", "a", "b", "c"], k=3)
    # two spots at one position see each other (not themselves), padded by repeating it
    assert nb[0].tolist() == [1, 1, 1] and nb[1].tolist() == [0, 0, 0]
    assert nb[2].tolist() == [2, 2, 2] and nb[3].tolist() == [3, 3, 3]  # alone: itself


def test_context_is_the_mean_of_the_neighbours_features():
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 100, (40, 2))
    groups = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    out = neighbour_context(x, coords, groups, k=5)
    assert out.shape == (40, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :3], x)
    for i in (0, 27):  # brute force: the 5 nearest others of the same group
        same = np.flatnonzero(groups == groups[i])
        same = same[same != i]
        near = same[np.argsort(np.linalg.norm(coords[same] - coords[i], axis=1))[:5]]
        np.testing.assert_allclose(out[i, 3:], x[near].mean(0), rtol=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"coords must be \(n, 2\)"):
        section_neighbours(np.zeros((3, 3)), k=1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        section_neighbours(np.zeros((3, 2)), k=0)
    with pytest.raises(ValueError, match="features has 2 rows, coords 3"):
        neighbour_context(np.zeros((2, 4)), np.zeros((3, 2)), k=1)
