"""Split files: one fold resolver, hashes verified, refused on another dataset's rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

pd = pytest.importorskip("pandas")


def _obs(n_per=(3, 4, 5), patients=("P1", "P1", "P2")):
    samples = [s for s, n in zip(("S0", "S1", "S2"), n_per, strict=True) for _ in range(n)]
    pats = [p for p, n in zip(patients, n_per, strict=True) for _ in range(n)]
    return pd.DataFrame(
        {"sample": samples, "patient": pats}, index=[f"spot{i}" for i in range(sum(n_per))]
    )


def test_fold_by_name_index_and_held_out_group(tmp_path):
    from histoxmodal.data.splits import Split, make_split, write_split
    from histoxmodal.errors import ConfigError

    obs = _obs()
    path = tmp_path / "sample.json"
    write_split(make_split(obs, "sample"), path)
    sp = Split.load(path)
    assert sp.names == ["sample=S0", "sample=S1", "sample=S2"] and sp.kind == "sample"
    assert sp.fold("sample=S1").test.tolist() == [3, 4, 5, 6]
    assert sp.fold("S2").test.tolist() == [7, 8, 9, 10, 11]  # the held-out group alone
    assert sp.fold(0).name == "sample=S0" and sp.fold("2").name == "sample=S2"
    assert sp.fold(-1).name == "sample=S2"
    assert sp.fold("sample=S1").train(12).tolist() == [0, 1, 2, 7, 8, 9, 10, 11]
    with pytest.raises(ConfigError, match="folds: sample=S0, sample=S1, sample=S2"):
        sp.fold("sample=S9")
    with pytest.raises(ConfigError, match="out of range.*3 folds"):
        sp.fold(3)


def test_split_of_another_dataset_is_refused(tmp_path):
    from histoxmodal.data.splits import Split, make_split, write_split
    from histoxmodal.errors import ConfigError

    obs = _obs()
    path = tmp_path / "patient.json"
    write_split(make_split(obs, "patient"), path)
    sp = Split.load(path)
    sp.check(obs.index)  # its own rows pass
    with pytest.raises(ConfigError, match="made for 12 rows, but small has 9"):
        sp.check(obs.index[:9], dataset="small")
    renamed = [f"other{i}" for i in range(12)]
    with pytest.raises(ConfigError, match="another dataset than big"):
        sp.check(renamed, dataset="big")


def test_an_edited_split_file_is_refused(tmp_path):
    from histoxmodal.data.splits import Split, make_split, write_split
    from histoxmodal.errors import ConfigError, DataError

    path = tmp_path / "random.json"
    write_split(make_split(_obs(), "random", seed=3), path)
    data = json.loads(path.read_text())
    rnd = Split.load(path).fold("random")
    assert len(rnd.test) == round(0.2 * 12) and len(rnd.val) == round(0.1 * 12)
    assert not set(rnd.test) & set(rnd.val)
    data["folds"][0]["test"] = [0, 1]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="does not match its sha256"):
        Split.load(path)
    with pytest.raises(ConfigError, match="not found"):
        Split.load(tmp_path / "missing.json")
    assert np.array_equal(np.sort(rnd.test), rnd.test)


def _hand_made(tmp_path, edit, *, kind="random", name="hand.json"):
    """A split file edited by hand, its sha256 recomputed so the hash check passes."""
    from histoxmodal.data.splits import digest, make_split

    split = make_split(_obs(), kind, seed=3)
    split.pop("sha256")
    edit(split)
    split["sha256"] = digest(split)
    path = tmp_path / name
    path.write_text(json.dumps(split))
    return path


def _set(key, value, fold=0):
    return lambda s: s["folds"][fold].__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("test", [0, -1]), r"fold 'random', 'test': row index -1 is out of range \[0, 11\]"),
        (_set("test", [0, 9999]), r"'test': row index 9999 is out of range \[0, 11\]"),
        (_set("val", [0, 12]), r"'val': row index 12 is out of range \[0, 11\]"),
        (_set("test", [0, 2, 2]), r"'test': row index 2 is listed more than once"),
        (_set("test", [0, 1.0]), r"'test': row index 1.0 is not an integer"),
        (_set("test", [0, 1.5]), r"'test': row index 1.5 is not an integer"),
        (_set("test", [0, True]), r"'test': row index True is not an integer"),
        (_set("val", ["3"]), r"'val': row index '3' is not an integer"),
        (_set("test", 5), r"'test': expected a list of row indices"),
        (_set("test", []), r"fold 'random': the test list is empty"),
        (_set("val", None), r"'val': expected a list of row indices"),
        (
            lambda s: s["folds"][0].update(test=[0, 1, 2], val=[2, 3]),
            r"fold 'random': row index 2 is in both test and val",
        ),
        (
            lambda s: s["folds"][0].update(test=list(range(8)), val=list(range(8, 12))),
            r"fold 'random': test and val hold all 12 rows; no training rows",
        ),
        (lambda s: s.update(n_obs=1.5), r"n_obs=1.5 is not a number of rows"),
    ],
)
def test_hand_made_split_with_bad_indices_is_refused(tmp_path, edit, message):
    """A split file edited by hand (hash recomputed) names the file, the fold and the bad value
    instead of scoring the wrong rows or ending in a traceback (issue 26, item 10)."""
    from histoxmodal.data.splits import Split
    from histoxmodal.errors import DataError

    path = _hand_made(tmp_path, edit)
    with pytest.raises(DataError, match=message) as e:
        Split.load(path)
    assert str(path) in str(e.value)


def test_split_without_row_count_is_range_checked_against_the_dataset(tmp_path):
    """Without ``n_obs`` the indices are checked when the split meets the dataset's rows."""
    from histoxmodal.data.splits import Split
    from histoxmodal.errors import DataError

    def edit(s):
        del s["n_obs"], s["obs_names_sha256"]
        s["folds"][1]["test"] = [3, 40]

    path = _hand_made(tmp_path, edit, kind="sample")
    sp = Split.load(path)  # the row count is unknown until the dataset is given
    with pytest.raises(DataError, match=r"fold 'sample=S1', 'test': row index 40 is out of"):
        sp.check(_obs().index)


def test_split_files_written_by_build_still_load(tmp_path):
    from histoxmodal.data.splits import Split, make_split, write_split

    for kind in ("patient", "sample", "random"):
        path = tmp_path / f"{kind}.json"
        write_split(make_split(_obs(), kind), path)
        sp = Split.load(path)
        sp.check(_obs().index)
        assert all(len(f.test) and f.test.dtype == np.int64 for f in sp.folds)
