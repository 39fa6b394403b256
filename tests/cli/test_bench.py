"""``cli/bench.py``: the benchmarks' sub-commands."""

from __future__ import annotations

import pytest

from histoxmodal.cli.main import main


def test_bench_without_a_benchmark_prints_the_bench_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: histoxmodal bench") and "tiling" in out and "her2st" in out


def test_each_benchmark_gets_its_typed_function(monkeypatch):
    import histoxmodal.bench.retrieval as retrieval

    seen = {}

    def fake(**kw):
        seen.update(kw)
        return 0

    monkeypatch.setattr(retrieval, "run_retrieval_bench", fake)
    assert main(["bench", "retrieval", "--n", "10", "--dim", "4", "--baseline-n", "5"]) == 0
    assert seen == {"n": 10, "dim": 4, "baseline_n": 5, "json_path": None}


def test_bench_xenium_calls_the_pooling_benchmark(monkeypatch, tmp_path, capsys):
    import json

    import histoxmodal.bench.xenium as xenium

    seen = {}
    result = {
        "bin_um": 55.0,
        "runs": [
            {
                "rows": 1000,
                "file_mib": 0.1,
                "write_seconds": 0.1,
                "streaming": {"peak_mib": 99.4, "seconds": 0.5, "n_spots": 12, "nnz": 340},
                "pandas": {"peak_mib": 120.0, "seconds": 0.2, "nnz": 340},
            }
        ],
    }

    def fake(workdir, **kw):
        seen.update(kw, workdir=workdir)
        return result

    monkeypatch.setattr(xenium, "bench_xenium_pooling", fake)
    argv = ["bench", "xenium", "--rows", "1000,2_000", "--naive-max-rows", "0", "--bin-um", "100"]
    argv += ["--workdir", str(tmp_path), "--json", str(tmp_path / "x.json")]
    assert main(argv) == 0
    assert seen == {
        "workdir": str(tmp_path),
        "rows": (1000, 2000),
        "naive_max_rows": 0,
        "bin_um": 100.0,
        "keep_files": False,
    }
    out = capsys.readouterr().out
    assert "peak MiB" in out and "99" in out and "120" in out
    assert json.loads((tmp_path / "x.json").read_text()) == result
    with pytest.raises(SystemExit) as e:
        main(["bench", "xenium", "--rows", "10,0"])
    assert e.value.code == 2 and "--rows" in capsys.readouterr().err
    assert main(["bench", "xenium", "--keep-files"]) == 2
    assert "--keep-files needs --workdir" in capsys.readouterr().err


def test_bench_xenium_measures_a_small_table(tmp_path):
    """The real benchmark end to end on a tiny table: the child process pools it and reports
    the spots and nonzeros a pandas groupby finds."""
    import numpy as np
    import pandas as pd

    from histoxmodal.bench.xenium import bench_xenium_pooling

    res = bench_xenium_pooling(tmp_path, rows=(20_000,), naive_max_rows=20_000, keep_files=True)
    (run,) = res["runs"]
    t = pd.read_parquet(tmp_path / "transcripts_20000.parquet")
    t = t[t["qv"] >= 20]
    key = [np.floor(t["x_location"] / 55), np.floor(t["y_location"] / 55), t["feature_name"]]
    nnz = t.groupby(key).ngroups
    assert run["streaming"]["nnz"] == run["pandas"]["nnz"] == nnz
    assert run["streaming"]["n_spots"] == t.groupby(key[:2]).ngroups
    assert run["streaming"]["peak_mib"] > 0


def test_bench_visium_hd_pools_a_generated_layout(tmp_path, capsys):
    """The real benchmark end to end on a small grid: the streaming reader and scanpy's
    whole-matrix sum find the same spots and nonzeros."""
    import json

    argv = ["bench", "visium-hd", "--rows", "120", "--cols", "160", "--pools", "55:square,8"]
    argv += ["--workdir", str(tmp_path), "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "55 µm square" in out and "8 µm square" in out and "scanpy whole" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert [(x["pool_um"], x["shape"]) for x in r["runs"]] == [(55.0, "square"), (8.0, "square")]
    s55 = r["runs"][0]["streaming"]
    assert (s55["n_spots"], s55["nnz"]) == (r["scanpy"]["n_spots"], r["scanpy"]["nnz"])
    assert r["layout"]["n_bins"] == 120 * 160 and not list(tmp_path.glob("hd_*"))
    with pytest.raises(SystemExit) as e:
        main(["bench", "visium-hd", "--pools", "55:hex"])
    assert e.value.code == 2 and "square or disc" in capsys.readouterr().err


def test_bench_neighbours_prints_both_timings_and_the_same_edges(capsys):
    pytest.importorskip("squidpy")
    from histoxmodal.bench.neighbours import hex_spots
    from histoxmodal.cli.main import main
    from histoxmodal.data.neighbours import radius_neighbours

    assert main(["bench", "neighbours", "--spots", "600", "--sections", "2"]) == 0
    out = capsys.readouterr().out
    coords, groups = hex_spots(600, 2)
    m = radius_neighbours(coords, groups, radius=250.0)
    edges = int((m > 0).sum()) - int((m.diagonal() > 0).sum())  # isolated spots link themselves
    assert f"edges {edges} / {edges}, differing 0" in out
    assert "histoxmodal " in out and "squidpy " in out
