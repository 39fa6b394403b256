"""The NCI-60 p53 set read from GSEA files; labels checked against biology: p53-wild-type lines
express more of p53's transcriptional targets (misaligned labels would score at chance)."""

from __future__ import annotations

import numpy as np

from histoxmodal.io.bulk import read_cls, read_expression_table

P53_TARGETS = [
    "CDKN1A",
    "MDM2",
    "BAX",
    "FAS",
    "GADD45A",
    "TP53I3",
    "DDB2",
    "XPC",
    "TNFRSF10B",
    "FDXR",
    "CCNG1",
    "BBC3",
]


def test_p53_table_labels_and_target_signature(data_dir):
    from sklearn.metrics import roc_auc_score

    a = read_expression_table(data_dir / "bulk" / "P53.txt")
    assert a.shape == (50, 10100) and a.obs_names[0] == "786-0"
    labels = read_cls(data_dir / "bulk" / "P53.cls", a.n_obs)
    assert (labels == "MUT").sum() == 33 and (labels == "WT").sum() == 17
    x = np.log2(np.clip(a.X, 10, None))
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    targets = [a.var_names.get_loc(g) for g in P53_TARGETS]
    score = -x[:, targets].mean(axis=1)  # low target expression -> mutant
    assert roc_auc_score(labels == "MUT", score) > 0.8


def test_nci60_p53_reader_matches_the_gsea_files(data_dir):
    from histoxmodal.io.bulk import read_nci60_p53

    x, genes, mutant = read_nci60_p53(data_dir / "bulk")
    a = read_expression_table(data_dir / "bulk" / "P53.txt")
    assert x.shape == (50, 10100) and x.dtype == np.float64 and genes == list(a.var_names)
    np.testing.assert_array_equal(x, a.X)
    labels = read_cls(data_dir / "bulk" / "P53.cls", a.n_obs)
    np.testing.assert_array_equal(mutant, labels == "MUT")
    assert mutant.sum() == 33 and mutant.dtype == bool
