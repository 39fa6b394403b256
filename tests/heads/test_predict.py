"""predict_expression: a head fitted on a run's training rows, predictions in an AnnData layer."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lightning")


def test_predict_expression_into_a_layer(tmp_path):
    from histoxmodal.data.paired import load_paired
    from histoxmodal.data.splits import load_split, split_file
    from histoxmodal.heads import predict_expression
    from histoxmodal.testing.paired import make_paired_dataset
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.training.fit import fit

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=32, n_states=3)
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {"image_encoder": "test_uni", "gene_encoder": "test_gene_mlp", "embed_dim": 8},
            "optim": {"batch_size": 16, "max_epochs": 2, "num_workers": 0},
        }
    )
    fit(cfg, tmp_path / "run", data=data, accelerator="cpu", devices=1)
    adata, _ = load_paired(data)
    test_rows = load_split(split_file(data, "random"))[0].test
    genes = list(adata.var_names[:5])
    for head in ("ridge", "mlp", "retrieval"):
        out = predict_expression(tmp_path / "run", data, head=head, genes=genes)
        assert out.shape == (len(test_rows), 5) and list(out.var_names) == genes
        assert out.layers["predicted"].shape == (len(test_rows), 5)
        assert np.isfinite(out.layers["predicted"]).all()
        assert out.uns["prediction"]["head"] == head
        # X holds the measured log1p-CP10k expression of exactly the test spots
        counts = np.asarray(adata.X[test_rows].todense(), np.float64)
        want = np.log1p(1e4 * counts / counts.sum(1, keepdims=True))[:, :5]
        np.testing.assert_allclose(out.X, want, rtol=1e-6)
    with pytest.raises(ValueError, match="head='lasso'"):
        predict_expression(tmp_path / "run", data, head="lasso")
