"""``histoxmodal build``'s Xenium reader flags (``--from-transcripts``, ``--pseudo-spot-um``,
``--min-qv``, ``--max-residual-um``, ``--keypoint-units``) and ``build --list``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from histoxmodal.cli.main import main
from histoxmodal.io.spatial.xenium_transcripts import GENE_CATEGORIES
from histoxmodal.testing import make_synthetic_xenium


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_synthetic_xenium(tmp_path_factory.mktemp("xen") / "run_a", name="run_a", seed=5)


def expected_spots(run, *, bin_um: float, min_qv: float, min_counts: int) -> int:
    """Bins of ``bin_um`` µm holding at least ``min_counts`` gene transcripts with
    ``qv >= min_qv``: a pandas groupby over the whole table, not the streaming pooler."""
    t = pd.read_parquet(run.transcripts)
    t = t[(t["qv"] >= min_qv) & t["codeword_category"].isin(GENE_CATEGORIES)]
    per_bin = t.groupby(
        [np.floor(t["x_location"] / bin_um), np.floor(t["y_location"] / bin_um)]
    ).size()
    return int((per_bin >= min_counts).sum())


def build_args(run, out, *extra):
    return ["build", "--src", str(run.folder), "--out", str(out), "--patch-px", "16", *extra]


def test_pseudo_spot_um_sets_the_spot_size(run, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = build_args(run, out, "--recipe", "xenium", "--from-transcripts", "--pseudo-spot-um")
    assert main([*argv, "100", "--min-counts", "5"]) == 0
    n = expected_spots(run, bin_um=100, min_qv=20, min_counts=5)
    assert 10 < n < 40  # 600 x 450 µm: at most 6 x 5 bins
    assert f"built: {n} spots" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    # the xenium recipe's reader section (55 µm) overridden by the flags
    assert m["params"]["reader"]["run_a"] == {"source": "transcripts", "pseudo_spot_um": 100.0}


def test_min_qv_and_keypoint_flags_reach_the_reader(run, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = build_args(run, out, "--recipe", "xenium-transcripts", "--pseudo-spot-um", "75")
    argv += ["--min-qv", "30", "--min-counts", "3", "--keypoint-units", "um"]
    argv += ["--image", str(run.image), "--alignment", str(run.keypoints_csv)]
    assert main([*argv, "--max-residual-um", "3"]) == 0
    n = expected_spots(run, bin_um=75, min_qv=30, min_counts=3)
    assert f"built: {n} spots" in capsys.readouterr().out
    reader = json.loads((out / "manifest.json").read_text())["params"]["reader"]["run_a"]
    assert reader == {
        "source": "transcripts",
        "pseudo_spot_um": 75.0,
        "min_qv": 30.0,
        "max_residual_um": 3.0,
        "keypoint_units": "um",
    }
    # the synthetic keypoints carry 0.4 px (0.2 µm) of noise: a 0.01 µm bound refuses them
    argv = build_args(run, tmp_path / "ds2", "--recipe", "xenium-transcripts")
    argv += ["--image", str(run.image), "--alignment", str(run.keypoints_csv)]
    assert main([*argv, "--max-residual-um", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "RMS residual" in err and run.keypoints_csv.name in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--recipe", "xenium-transcripts", "--pseudo-spot-um", "0"], "argument --pseudo-spot-um"),
        (["--recipe", "xenium-transcripts", "--pseudo-spot-um", "abc"], "--pseudo-spot-um"),
        (["--recipe", "xenium-transcripts", "--min-qv", "-1"], "argument --min-qv"),
        (["--recipe", "xenium-transcripts", "--max-residual-um", "0"], "--max-residual-um"),
        (["--recipe", "xenium-transcripts", "--keypoint-units", "mm"], "--keypoint-units"),
    ],
)
def test_bad_values_are_usage_errors(tmp_path, capsys, extra, needle):
    with pytest.raises(SystemExit) as e:
        main(["build", "--src", str(tmp_path), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_flags_that_do_not_apply_are_refused_in_one_line(run, tmp_path, capsys):
    argv = build_args(run, tmp_path / "o", "--recipe", "visium", "--pseudo-spot-um", "55")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--pseudo-spot-um" in err and "'visium'" in err and err.count("\n") == 1
    assert main(build_args(run, tmp_path / "o", "--recipe", "xenium", "--min-qv", "20")) == 2
    err = capsys.readouterr().err
    assert "--min-qv 20" in err and "--from-transcripts" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_list_lines_up_every_recipe(capsys):
    assert main(["build", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert "xenium-transcripts" in names and "visium" in names
    # the format column starts two spaces after the longest name, on every line
    width = max(map(len, names))
    assert all(line[width : width + 2] == "  " and line[width + 2] != " " for line in lines)
    assert {line.split()[1] for line in lines} >= {"xenium", "visium", "her2st"}
