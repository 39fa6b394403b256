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
    from histoxmodal.errors import ConfigError

    path = tmp_path / "random.json"
    write_split(make_split(_obs(), "random", seed=3), path)
    data = json.loads(path.read_text())
    rnd = Split.load(path).fold("random")
    assert len(rnd.test) == round(0.2 * 12) and len(rnd.val) == round(0.1 * 12)
    assert not set(rnd.test) & set(rnd.val)
    data["folds"][0]["test"] = [0, 1]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="does not match its sha256"):
        Split.load(path)
    with pytest.raises(ConfigError, match="not found"):
        Split.load(tmp_path / "missing.json")
    assert np.array_equal(np.sort(rnd.test), rnd.test)
