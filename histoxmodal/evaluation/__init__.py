"""Metrics and protocols on arrays, never on folders: cross-modal retrieval (``retrieval``),
expression prediction (``expression``), classification with patient-level CV
(``classification``), spot-label probes (``probe``), batch mixing (``mixing``, with Harmony as
the post-hoc baseline in ``harmony``), Symile's zero-shot protocol (``zeroshot``) and
hand-crafted image features as the classic baseline (``baselines``)."""
