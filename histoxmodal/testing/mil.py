"""A generated slide cohort for multiple-instance learning: whole-slide images with a per-slide
label whose evidence is a small morphology confined to part of the tumour.

Every slide has tissue in regions of the
:data:`~histoxmodal.testing.slides.TISSUE_TYPES` (its own random composition); the positive
slides also carry a :data:`~histoxmodal.testing.slides.LESION_TYPE` patch covering a share of
their tumour. So a slide's label is decided by a minority of its tiles while the rest of the
tissue varies from slide to slide: the situation attention MIL is built for, where mean pooling
dilutes the signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoxmodal.testing.slides import LESION, TISSUE_TYPES, SyntheticSlide, make_synthetic_slide

#: label values of :func:`make_mil_cohort`
POSITIVE, NEGATIVE = "mutant", "wildtype"


@dataclass(frozen=True)
class SyntheticMILCohort:
    """What :func:`make_mil_cohort` wrote.

    Attributes
    ----------
    root
        The cohort folder: ``slides/<slide>.tif`` and ``labels.csv``.
    labels
        ``labels.csv``: columns ``slide``, ``patient`` and ``target`` (:data:`POSITIVE` or
        :data:`NEGATIVE`).
    target
        Name of the label column.
    slides
        Slide name -> :class:`~histoxmodal.testing.slides.SyntheticSlide` (with ``regions``, in
        which the lesion is :data:`~histoxmodal.testing.slides.LESION`).
    positive
        Names of the positive slides.
    """

    root: Path
    labels: Path
    target: str
    slides: dict[str, SyntheticSlide]
    positive: frozenset[str]

    @property
    def slide_dir(self) -> Path:
        """The folder holding the slides."""
        return self.root / "slides"


def make_mil_cohort(
    root: str | Path,
    *,
    n_patients: int = 16,
    slides_per_patient: int = 1,
    positive_share: float = 0.5,
    lesion: float = 0.3,
    width: int = 2048,
    height: int = 2048,
    mpp: float = 0.5,
    target: str = "mutation",
    seed: int = 0,
) -> SyntheticMILCohort:
    """Write a cohort of synthetic slides with a slide-level label (see the module doc).

    Parameters
    ----------
    root
        Output folder (created).
    n_patients, slides_per_patient
        Cohort size; the label is the patient's, shared by its slides.
    positive_share
        Share of patients that are positive (rounded, at least one of each class).
    lesion
        Share of a positive slide's tumour covered by the lesion.
    width, height, mpp
        Level-0 size and µm/px of each slide.
    target
        Name of the label column in ``labels.csv``.
    seed
        Seed; the same arguments give the same files.
    """
    import pandas as pd

    root = Path(root)
    (root / "slides").mkdir(parents=True, exist_ok=True)
    if n_patients < 2:
        raise ValueError(f"n_patients={n_patients}: a cohort needs at least two patients")
    n_pos = min(n_patients - 1, max(1, round(positive_share * n_patients)))
    rng = np.random.default_rng(seed)
    pos_patients = set(rng.choice(n_patients, n_pos, replace=False).tolist())
    slides: dict[str, SyntheticSlide] = {}
    rows = []
    for p in range(n_patients):
        for k in range(slides_per_patient):
            name = f"P{p:02d}_{k}"
            positive = p in pos_patients
            slide_seed = int(seed * 100_003 + p * 101 + k)
            for attempt in range(20):  # a slide whose regions hold no tumour cannot get a lesion
                try:
                    slides[name] = make_synthetic_slide(
                        root / "slides" / f"{name}.tif",
                        width=width,
                        height=height,
                        mpp=mpp,
                        n_sections=2,
                        regions=len(TISSUE_TYPES),
                        lesion=lesion if positive else 0.0,
                        seed=slide_seed + 7919 * attempt,
                    )
                    break
                except ValueError:
                    continue
            else:  # pragma: no cover - 20 tumour-free draws in a row
                raise RuntimeError(f"could not draw a slide with tumour for {name}")
            rows.append(
                {"slide": name, "patient": f"P{p:02d}", target: POSITIVE if positive else NEGATIVE}
            )
    labels = root / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    positive_names = frozenset(r["slide"] for r in rows if r[target] == POSITIVE)
    assert all((slides[n].regions == LESION).any() for n in positive_names)
    return SyntheticMILCohort(root, labels, target, slides, positive_names)
