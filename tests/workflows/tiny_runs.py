"""The tiny spatial run the slide-level tests share: a generated paired dataset, one epoch of the
test towers on CPU, and a generated slide to predict (one definition, several fixtures)."""

from __future__ import annotations

from pathlib import Path

#: the smallest config that trains the test towers end to end on a generated dataset
TINY = {
    "genes": None,
    "model": {"image_encoder": "test_image_resnet", "gene_encoder": "test_gene_mlp"},
    "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
}


def paired_data(tmp: Path) -> Path:
    from histoxmodal.testing.paired import make_paired_dataset

    return make_paired_dataset(tmp / "data", spots_per_sample=32, n_states=3)


def train_tiny(tmp: Path, data: Path, **config):
    """A run of :data:`TINY` (updated with ``config``) on ``data``, and a new 2048 × 1536 slide:
    ``(run, slide_path)``."""
    from histoxmodal.testing import make_synthetic_slide
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.train import train

    run = train(
        config_from_dict({**TINY, **config}), tmp / "run", data=data, accelerator="cpu", devices=1
    )
    (tmp / "slides").mkdir()
    slide = make_synthetic_slide(
        tmp / "slides" / "new.tif", width=2048, height=1536, seed=3, min_level_size=256
    )
    return run, slide.path
