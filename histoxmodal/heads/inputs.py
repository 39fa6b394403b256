"""What an expression or retrieval head reads for each spot: section centring, neighbour
context and smoothing (:class:`HeadInputs`), applied to image (and gene) embeddings before a
head fits or predicts. It lives with the heads, below the workflows, so that every caller
(``evaluate``, ``predict``, slide maps, ``fit-head``, the benchmarks) reads one definition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from histoxmodal import keys

if TYPE_CHECKING:
    from histoxmodal.workflows.run import Run


@dataclass(frozen=True)
class HeadInputs:
    """What a head reads for each spot (:mod:`histoxmodal.data.neighbours`), from the config's
    ``head`` section; a fitted head carries its own (``head.inputs``, saved in ``head.json``)
    and applies them in ``head.predict(z, coords_um=..., groups=...)``:

    - ``centre``: embeddings minus their section's (slide's) mean, image and gene alike;
    - ``context_um`` (``ridge``/``mlp``): the image embedding beside the mean over the other
      spots within that radius;
    - ``smooth_um`` (retrieval: the ``retrieval`` head and the retrieval metrics): both
      modalities' embeddings averaged half-and-half with that neighbourhood mean.

    The query side needs images and spot positions only, so a new slide gets the same.
    """

    context_um: float = 0.0
    centre: bool = False
    smooth_um: float = 0.0

    @classmethod
    def of(cls, run: Run, head: str, targets: dict | None = None) -> HeadInputs:
        """What ``head`` reads: a saved head's ``targets``, else the run config's ``head``
        section (anything with ``config.head``, e.g. a :class:`~histoxmodal.workflows.run.Run`)."""
        src = targets if targets is not None else asdict(run.config.head)
        return cls(
            float(src.get("context_um", 0.0)),
            bool(src.get("centre", False)),
            float(src.get("smooth_um", 0.0)),
        ).for_head(head)

    @classmethod
    def from_dict(cls, d: dict) -> HeadInputs:
        """The inputs saved as ``dataclasses.asdict`` (in a head's ``head.json``); unknown or
        missing keys are an error."""
        if not isinstance(d, dict) or set(d) - {"context_um", "centre", "smooth_um"}:
            raise ValueError(f"expected context_um, centre, smooth_um; got {d!r}")
        return cls(
            float(d.get("context_um", 0.0)),
            bool(d.get("centre", False)),
            float(d.get("smooth_um", 0.0)),
        )

    def layout(self, adata) -> dict:
        """``coords_um`` and ``groups`` of every row of a paired dataset, as a head that reads
        these inputs needs them: ``head.predict(z, **inputs.layout(adata))``."""
        if not self:
            return {}
        from histoxmodal.data.neighbours import spot_coords_um

        groups = np.asarray(adata.obs[keys.OBS_SAMPLE].astype(str))
        spatial = self.context_um > 0 or self.smooth_um > 0
        return {"coords_um": spot_coords_um(adata) if spatial else None, "groups": groups}

    def for_head(self, head: str) -> HeadInputs:
        """The part a ``head`` reads: ``retrieval`` (and the retrieval metrics) centring and
        smoothing, the other heads centring and context."""
        if head == "retrieval":
            return HeadInputs(0.0, self.centre, self.smooth_um)
        return HeadInputs(self.context_um, self.centre, 0.0)

    def __bool__(self) -> bool:
        return bool(self.context_um > 0 or self.centre or self.smooth_um > 0)

    def apply(self, z, coords_um=None, groups=None) -> np.ndarray:
        """The head's input for every row: ``z`` of **all** spots of each section (their
        centres ``coords_um``, needed for context and smoothing; sections ``groups``, default
        one)."""
        from histoxmodal.data.neighbours import centre_by_group, radius_context, radius_neighbours

        z = np.asarray(z, np.float32)
        if self.centre:
            z = centre_by_group(z, groups)
        if self.smooth_um > 0:
            m = radius_neighbours(coords_um, groups, radius=self.smooth_um)
            z = (0.5 * z + 0.5 * np.asarray(m @ z.astype(np.float64))).astype(np.float32)
        if self.context_um > 0:
            z = radius_context(z, coords_um, groups, radius=self.context_um)
        return z

    def of_dataset(self, z, adata, rows=None) -> np.ndarray:
        """:meth:`apply` to every row of a paired dataset (``z`` of all its rows, sections from
        ``obs['sample']``, centres in µm), then ``rows`` of the result."""
        z = np.asarray(z, np.float32)
        if self:
            z = self.apply(z, **self.layout(adata))
        return z if rows is None else z[rows]
