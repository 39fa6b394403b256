"""The her2st benchmark's verdicts and table from a summary (the training itself is a bench)."""

from __future__ import annotations

from histoxmodal.bench.her2st import BASELINES, CORRECTIONS, bars, format_markdown


def _row(r5, pearson, purity=1.2):
    return {
        "i2g_recall@5": r5,
        "g2i_recall@5": r5,
        "pearson_top50": pearson,
        "batch_purity": purity,
        "n_folds": 1,
        "chance_recall@5": 0.02,
    }


def test_bars_compare_the_best_contrastive_row_with_handcrafted_features():
    names = list(CORRECTIONS)
    summary = {
        "cross_patient": {
            BASELINES[0]: _row(0.05, 0.30),
            BASELINES[1]: _row(0.03, 0.10),
            names[0]: _row(0.12, 0.36),
            names[1]: _row(0.08, 0.37),
            **{n: _row(0.09, 0.30) for n in names[2:]},
        }
    }
    b = bars(summary)["cross_patient"]
    assert b["best_contrastive"] == names[1]
    assert b["pearson_beats_handcrafted_by_0.05"] is True  # 0.37 >= 0.30 + 0.05
    assert b["recall@5_twice_handcrafted"] is False  # 0.08 < 2 x 0.05
    assert b["a_correction_beats_none"] is True
    table = format_markdown(summary)
    assert "| hand-crafted features + ridge | 0.050 | 0.050 | 0.300 | 1.20 |" in table
    assert "chance 0.020" in table


def test_html_report_has_a_table_per_split_with_chance(tmp_path):
    from histoxmodal.bench.her2st import write_html_report
    from tests.workflows.test_report import parse_report

    summary = {
        split: {BASELINES[0]: _row(0.05, 0.30), next(iter(CORRECTIONS)): _row(0.12, 0.36)}
        for split in ("cross_patient", "loso_C")
    }
    protocol = {"splits": {"loso_C": {"file": "s.json", "sha256": "cd" * 32}}, "epochs": 6}
    write_html_report(tmp_path / "b.html", {"summary": summary, "protocol": protocol})
    page = (tmp_path / "b.html").read_text(encoding="utf-8")
    tags, text, images = parse_report(page)
    assert (
        images == []
        and tags.count("table") == 3
        and "<h2>loso_C</h2>" in page
        and "cd" * 32 in text
    )
    assert "chance 5/n = 0.020" in text
    row = '<td>chance</td><td class="num">0.0200</td><td class="num">0.0200</td>'
    assert page.count(row) == 2
