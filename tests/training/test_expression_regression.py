"""Direct expression regression (``loss.expression_weight``, ``loss.name: none``): the image
tower trained to predict expression, alone or beside the contrastive loss."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from histoxmodal.data.dataset import PairedDataset  # noqa: E402
from histoxmodal.errors import ConfigError  # noqa: E402
from histoxmodal.testing.paired import make_paired_dataset  # noqa: E402
from histoxmodal.training.config import config_from_dict  # noqa: E402
from histoxmodal.training.module import ContrastiveModule  # noqa: E402
from histoxmodal.workflows.train import train  # noqa: E402


def _cfg(**loss):
    return config_from_dict(
        {
            "genes": None,
            "model": {"image_encoder": "test_uni", "gene_encoder": "test_gene_mlp", "embed_dim": 8},
            "loss": loss,
            "optim": {"lr": 3e-3, "batch_size": 16, "max_epochs": 1, "num_workers": 0},
        }
    )


def test_a_loss_of_none_needs_a_regression_weight():
    with pytest.raises(ConfigError, match="expression_weight > 0"):
        _cfg(name="none")
    with pytest.raises(ConfigError, match="loss.expression_weight"):
        _cfg(expression_weight=-1.0)
    assert _cfg(name="none", expression_weight=1.0).loss.expression_weight == 1.0


def test_the_regression_term_is_the_masked_mean_squared_error(tmp_path):
    data = make_paired_dataset(tmp_path / "data", spots_per_sample=12, seed=0)
    ds = PairedDataset(data)
    items = [ds[i] for i in range(8)]
    b = {k: torch.stack([t[k] for t in items]) for k in items[0] if torch.is_tensor(items[0][k])}
    mask = b["gene_mask"].clone()
    mask[:, 0] = False  # a gene this batch did not measure is left out of the error
    b["gene_mask"] = mask
    torch.manual_seed(0)
    for name, has_contrastive in (("none", False), ("clip", True)):
        module = ContrastiveModule(_cfg(name=name, expression_weight=2.0), ds.genes, 2).eval()
        with torch.no_grad():
            parts = module.compute_loss(b)
            pred = module.expression_head(module.image_features(b["image"])).numpy()
        y, m = b["expression"].numpy(), mask.numpy()
        want = float((((pred - y) ** 2) * m).sum() / m.sum())
        assert float(parts["expression_mse"]) == pytest.approx(want, rel=1e-5)
        assert ("contrastive" in parts) is has_contrastive
        extra = float(parts["contrastive"]) if has_contrastive else 0.0
        assert float(parts["loss"]) == pytest.approx(extra + 2.0 * want, rel=1e-5)


def test_regression_alone_trains_and_lowers_the_error(tmp_path):
    data = make_paired_dataset(tmp_path / "data", spots_per_sample=48, n_states=4, seed=1)
    cfg = config_from_dict(
        {
            **_cfg(name="none", expression_weight=1.0).to_dict(),
            "optim": {"lr": 3e-3, "batch_size": 16, "max_epochs": 15, "num_workers": 0},
        }
    )
    torch.manual_seed(0)
    fresh = ContrastiveModule(cfg, PairedDataset(data).genes, 2).eval()
    run = train(cfg, tmp_path / "r", data=data, accelerator="cpu", devices=1)
    ds = PairedDataset(data, genes=run.module.gene.genes)
    items = [ds[i] for i in range(len(ds))]
    b = {k: torch.stack([t[k] for t in items]) for k in items[0] if torch.is_tensor(items[0][k])}
    with torch.no_grad():
        before = float(fresh.compute_loss(b)["expression_mse"])
        after = float(run.module.eval().compute_loss(b)["expression_mse"])
    assert np.isfinite(after) and after < 0.5 * before, (before, after)
