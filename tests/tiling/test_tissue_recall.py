"""Tissue detection against real spot tables (issue 12): the bar every default must meet.

Recall: the share of listed on-tissue spot centres inside the mask, her2st at its true pixel
size (the reader's spot-pitch fit). Specificity: Visium's in_tissue = 0 spots outside it. One
default for all sections.
"""

from __future__ import annotations

import pytest

from histoxmodal.bench.tissue import her2st_sections_with_images, measure, tissue_cases
from histoxmodal.tiling.tissue import DEFAULT_METHOD, TissueParams

RECALL_BAR = 0.97
VISIUM_SPECIFICITY_BAR = 0.95


@pytest.fixture(scope="module")
def cases(data_dir):
    cases = tissue_cases(data_dir)
    names = {c.name for c in cases}
    # every her2st section with an image in the shared data is measured, and the heart
    assert {f"her2st {s}" for s in her2st_sections_with_images(data_dir / "her2st")} <= names
    assert "Visium heart" in names and len(cases) >= 6
    return cases


def test_default_meets_the_bar_on_every_section(cases):
    assert TissueParams().method == DEFAULT_METHOD == "background-hysteresis"
    low = []
    for case in cases:
        r = measure(case, DEFAULT_METHOD)
        if r["recall"] < RECALL_BAR:
            low.append(f"{case.name} recall {r['recall']:.3f}")
        if case.name.startswith("Visium") and r["specificity"] < VISIUM_SPECIFICITY_BAR:
            low.append(f"{case.name} specificity {r['specificity']:.3f}")
    assert not low, f"below the bar: {low}"


def test_former_default_stays_reproducible(cases):
    # the 'before' column of docs/benchmarks.md: saturation + Otsu misses B4's stroma and fat
    b4 = next(c for c in cases if c.name == "her2st B4")
    r = measure(b4, "saturation-otsu")
    assert r["recall"] == pytest.approx(0.796, abs=0.002)
