"""``histoxmodal bench predict`` on a small generated slide: it runs end to end through the CLI
and reports consistent figures (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lightning")


def test_bench_predict_small_slide(tmp_path, capsys):
    from histoxmodal.bench.predict import PeakRSS
    from histoxmodal.cli.main import main

    out = tmp_path / "bench.json"
    code = main(["bench", "predict", "--side", "4096", "--grid-um", "40", "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert (r["width"], r["height"]) == (4096, 4096) and r["genes"] == 60
    # 16 µm windows every 40 µm on a 1024 µm square: at most 25 x 25 on tissue
    assert 0 < r["pseudo_spots"] <= 25 * 25
    assert r["seconds_whole"] > 0 and r["seconds_forward"] > 0
    assert r["rss_peak_mib"] >= r["rss_before_mib"] > 0
    assert r["output_mib"] > 0
    assert "pseudo-spots" in capsys.readouterr().out
    import mmap

    # 64 MiB of fresh anonymous pages, touched: a bytearray may reuse resident heap memory
    # that earlier tests freed (a raised malloc mmap threshold), and then RSS does not grow
    with mmap.mmap(-1, 64 << 20) as block, PeakRSS() as m:  # PeakRSS exits first, mapped
        for i in range(0, len(block), 4096):
            block[i] = 1
    assert m.growth >= 60 << 20
