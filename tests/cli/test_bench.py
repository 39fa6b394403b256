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
