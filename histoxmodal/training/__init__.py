"""Contrastive training with PyTorch Lightning: typed configs (``config``), the spatial module
(``module``: image + gene towers) and the cohort module (``multimodal``: one tower per
modality), the shared trainer (``trainer``), the one embedding loop (``embedding``), the frozen
tower's feature cache (``cache``) and batch samplers (``sampler``). Run folders are written by
:mod:`histoxmodal.workflows`."""
