"""gene_nicheformer: a tiny random model saved the way Nicheformer's Lightning checkpoint is
(its module names, ``state_dict`` and ``hyper_parameters``), loaded through the registry, and
checked against tokens and a transformer written out here with plain tensor operations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from histoxmodal.errors import ConfigError, WeightsError

GENES = [f"G{i}" for i in range(30)]
AUX, PAD = 30, 1
SPECIES, ASSAY, MODALITY = 5, 9, 4  # human, Xenium, spatial in the published vocabulary
HP = {
    "dim_model": 16,
    "nheads": 2,
    "dim_feedforward": 32,
    "nlayers": 2,
    "dropout": 0.0,
    "batch_first": True,
    "masking_p": 0.15,
    "n_tokens": len(GENES) + AUX,
    "context_length": 24,  # 21 gene slots for 30 genes: long cells are cut, short ones padded
    "lr": 1e-3,
    "learnable_pe": True,
    "specie": True,
    "assay": True,
    "modality": True,
}


class PublishedLayout(nn.Module):
    """Submodules named as in the published LightningModule (state-dict names only)."""

    def __init__(self, hp: dict) -> None:
        super().__init__()
        d, n = hp["dim_model"], hp["n_tokens"]
        self.encoder_layer = nn.TransformerEncoderLayer(
            d, hp["nheads"], hp["dim_feedforward"], 0.0, batch_first=True, layer_norm_eps=1e-12
        )
        self.encoder = nn.TransformerEncoder(
            self.encoder_layer, hp["nlayers"], enable_nested_tensor=False
        )
        self.embeddings = nn.Embedding(n + 5, d, padding_idx=1)
        if hp["learnable_pe"]:
            self.positional_embedding = nn.Embedding(hp["context_length"], d)
        self.classifier_head = nn.Linear(d, n)
        self.pooler_head = nn.Linear(d, d)
        self.cls_head = nn.Linear(d, 164)


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _save(folder, hp=HP, seed=0, edit=None, genes=GENES):
    folder.mkdir(parents=True, exist_ok=True)
    model = PublishedLayout(hp)
    _randomise(model, seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if edit is not None:
        state = edit(state)
    # a trainer's state as Lightning keeps it: a scheduler's last rate is a NumPy scalar
    trainer = {"epoch": 3, "lr_schedulers": [{"_last_lr": [np.float64(0.1)], "last_epoch": 7}]}
    torch.save({"state_dict": state, "hyper_parameters": dict(hp), **trainer}, folder / "nf.ckpt")
    (folder / "genes.txt").write_text("\n".join(genes) + "\n")
    mean = np.random.default_rng(seed).uniform(0.3, 3.0, len(genes))
    mean[[4, 11]] = 0.0  # a gene the technology never saw counts as mean 1
    np.save(folder / "technology_mean.npy", mean)
    return state, mean


def _counts(n=6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.uniform(0.2, 4.0, len(GENES)), size=(n, len(GENES))).astype(np.float32)
    x[0, 5:] = 0.0  # five genes: mostly padding
    x[1] = 0.0  # nothing expressed
    return x


def _tokens_by_hand(x, mean, hp=HP):
    mean = np.where(mean == 0, 1.0, mean)
    total = x.sum(1, keepdims=True)
    scaled = x * (10000.0 / np.where(total == 0, 1.0, total)) / mean
    n_slots = hp["context_length"] - 3
    out = np.full((len(x), hp["context_length"]), PAD, np.int64)
    out[:, :3] = [SPECIES, ASSAY, MODALITY]
    for i, cell in enumerate(scaled):
        nz = np.nonzero(cell)[0]
        ranked = nz[np.argsort(-cell[nz], kind="stable")][:n_slots] + AUX
        out[i, 3 : 3 + len(ranked)] = ranked
    return out


def _embed_by_hand(state, tokens, hp=HP, layers=None, sinusoid=False):
    t = torch.as_tensor(tokens)
    h = state["embeddings.weight"][t]
    length, d = t.shape[1], hp["dim_model"]
    if sinusoid:
        pe = torch.zeros(length, d)
        for p in range(length):
            for i in range(0, d, 2):
                pe[p, i] = math.sin(p / 10000 ** (i / d))
                pe[p, i + 1] = math.cos(p / 10000 ** (i / d))
        h = h + pe
    else:
        h = h + state["positional_embedding.weight"][:length]
    pad = t == PAD
    heads = hp["nheads"]
    dh = d // heads
    for i in range(hp["nlayers"] if layers is None else layers):
        w = {k[len(f"encoder.layers.{i}.") :]: v for k, v in state.items()
             if k.startswith(f"encoder.layers.{i}.")}  # fmt: skip
        q, k, v = (h @ w["self_attn.in_proj_weight"].T + w["self_attn.in_proj_bias"]).chunk(3, -1)
        q, k, v = (z.reshape(len(t), length, heads, dh).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(len(t), length, d)
        a = a @ w["self_attn.out_proj.weight"].T + w["self_attn.out_proj.bias"]
        h = F.layer_norm(h + a, (d,), w["norm1.weight"], w["norm1.bias"], eps=1e-12)
        f = F.relu(h @ w["linear1.weight"].T + w["linear1.bias"])
        f = f @ w["linear2.weight"].T + w["linear2.bias"]
        h = F.layer_norm(h + f, (d,), w["norm2.weight"], w["norm2.bias"], eps=1e-12)
    return h[:, 3:].mean(1).numpy()


def _embed(tower, x):
    tower.eval()
    with torch.no_grad():
        return tower(torch.as_tensor(x)).numpy()


def test_a_saved_checkpoint_embeds_as_computed_by_hand(tmp_path):
    from histoxmodal.encoders import create_encoder

    state, mean = _save(tmp_path / "nf")
    x = _counts()
    tokens = _tokens_by_hand(x, mean)
    assert (tokens[0, 8:] == PAD).all() and (tokens[1, 3:] == PAD).all()  # padding is exercised
    assert (tokens[2:, 3:] != PAD).all()  # and the cut to the context length
    tower = create_encoder("gene_nicheformer", weights=str(tmp_path / "nf"), genes=GENES)
    assert tower.embed_dim == 16 and tower.missing_genes == 0
    np.testing.assert_array_equal(tower.tokens(torch.as_tensor(x)).numpy(), tokens)
    np.testing.assert_allclose(_embed(tower, x), _embed_by_hand(state, tokens), atol=2e-5)
    # the checkpoint file itself, the other files beside it; an earlier layer
    first = create_encoder(
        "gene_nicheformer", weights=str(tmp_path / "nf" / "nf.ckpt"), genes=GENES, layer=0
    )
    np.testing.assert_allclose(_embed(first, x), _embed_by_hand(state, tokens, layers=1), atol=2e-5)
    assert len(first.saved["sha256"]) == 64


def test_fixed_sinusoid_positions_and_a_fine_tuned_backbone_prefix(tmp_path):
    from histoxmodal.encoders import create_encoder

    hp = {**HP, "learnable_pe": False}
    state, mean = _save(
        tmp_path / "nf", hp=hp, edit=lambda s: {f"backbone.{k}": v for k, v in s.items()}
    )
    state = {k[len("backbone.") :]: v for k, v in state.items()}
    x = _counts()
    tower = create_encoder("gene_nicheformer", weights=str(tmp_path / "nf"), genes=GENES)
    expected = _embed_by_hand(state, _tokens_by_hand(x, mean), hp=hp, sinusoid=True)
    np.testing.assert_allclose(_embed(tower, x), expected, atol=2e-5)


def test_genes_are_mapped_by_name_and_missing_ones_zero_filled(tmp_path, caplog):
    from histoxmodal.encoders import create_encoder

    _save(tmp_path / "nf")
    x = _counts()
    absent = {"G0", "G7", "G8", "G20", "G29"}
    rng = np.random.default_rng(3)
    data_genes = [*rng.permutation([g for g in GENES if g not in absent]), "X1", "X2"]
    data = np.zeros((len(x), len(data_genes)), np.float32)
    for j, g in enumerate(data_genes):
        data[:, j] = x[:, GENES.index(g)] if g in GENES else 99.0  # unknown genes never leak in
    with caplog.at_level("INFO", logger="histoxmodal.encoders.nicheformer"):
        tower = create_encoder("gene_nicheformer", weights=str(tmp_path / "nf"), genes=data_genes)
    assert tower.missing_genes == 5 and "5 zero-filled" in caplog.text
    by_hand = x.copy()
    by_hand[:, [GENES.index(g) for g in absent]] = 0.0
    plain = create_encoder("gene_nicheformer", weights=str(tmp_path / "nf"), genes=GENES)
    np.testing.assert_allclose(_embed(tower, data), _embed(plain, by_hand), atol=1e-6)
    # a gene mask zeroes unmeasured genes the same way
    mask = np.ones_like(x, dtype=bool)
    mask[:, [GENES.index(g) for g in absent]] = False
    with torch.no_grad():
        masked = plain(torch.as_tensor(x), torch.as_tensor(mask)).numpy()
    np.testing.assert_allclose(masked, _embed(plain, by_hand), atol=1e-6)
    with pytest.raises(ConfigError, match="none of its 30 genes"):
        create_encoder("gene_nicheformer", weights=str(tmp_path / "nf"), genes=["ENSG1"])


def test_wrong_checkpoints_are_one_clear_error(tmp_path):
    from histoxmodal.encoders import create_encoder

    def rename(state):
        state["encoder.layers.1.linearX.weight"] = state.pop("encoder.layers.1.linear1.weight")
        return state

    _save(tmp_path / "bad", edit=rename)
    with pytest.raises(WeightsError) as err:
        create_encoder("gene_nicheformer", weights=str(tmp_path / "bad"), genes=GENES)
    assert "encoder.layers.1.linear1.weight" in str(err.value)  # missing
    assert "encoder.layers.1.linearX.weight" in str(err.value)  # unexpected
    with pytest.raises(ConfigError, match="not found"):
        create_encoder("gene_nicheformer", weights=str(tmp_path / "nowhere"), genes=GENES)
    _save(tmp_path / "nomean")
    (tmp_path / "nomean" / "technology_mean.npy").unlink()
    with pytest.raises(ConfigError, match="technology mean"):
        create_encoder("gene_nicheformer", weights=str(tmp_path / "nomean"), genes=GENES)
    (tmp_path / "code").mkdir()
    torch.save({"state_dict": {"x": torch.zeros(1)}, "f": math.sqrt}, tmp_path / "code" / "a.ckpt")
    with pytest.raises(WeightsError, match="weights-only"):
        create_encoder("gene_nicheformer", weights=str(tmp_path / "code"), genes=GENES)


def test_random_weights_only_when_asked_for(tmp_path):
    from histoxmodal.encoders import create_encoder, describe_encoder

    assert describe_encoder("gene_nicheformer")["needs_weights"] is True
    with pytest.raises(ConfigError, match="random_weights=True"):
        create_encoder("gene_nicheformer", genes=GENES)
    tower = create_encoder(
        "gene_nicheformer", genes=GENES, random_weights=True,
        dim_model=8, nheads=2, dim_feedforward=16, nlayers=1, context_length=12,
    )  # fmt: skip
    assert _embed(tower, _counts()).shape == (6, 8)
    _save(tmp_path / "nf")
    with pytest.raises(ConfigError, match="exclude each other"):
        create_encoder(
            "gene_nicheformer", weights=str(tmp_path / "nf"), genes=GENES, random_weights=True
        )


def test_frozen_or_fine_tuned(tmp_path):
    from histoxmodal.encoders import create_encoder

    _save(tmp_path / "nf")
    x = torch.as_tensor(_counts())
    frozen = create_encoder("gene_nicheformer", weights=str(tmp_path / "nf"), genes=GENES)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.train().net.training  # a frozen backbone stays in eval mode
    tuned = create_encoder(
        "gene_nicheformer", weights=str(tmp_path / "nf"), genes=GENES, freeze=False
    )
    tuned.train()
    tuned(x).sum().backward()
    assert tuned.net.encoder.layers[0].linear1.weight.grad is not None


def test_models_lists_it(capsys):
    from histoxmodal.cli.main import main

    assert main(["models", "gene_nic*"]) == 0
    out = capsys.readouterr().out
    assert "gene_nicheformer" in out and "BSD-3-Clause" in out and "never downloaded" in out


def test_a_run_trains_with_it_and_reloads_from_its_own_copy(tmp_path):
    """model.gene_weights through `train`: genes: null makes the panel the model's genes the
    dataset measures; the frozen tower after training is the checkpoint; the run keeps a copy
    of the folder and reloads after the original is gone."""
    pytest.importorskip("lightning")
    import shutil

    import anndata as ad

    from histoxmodal.testing.paired import make_paired_dataset
    from histoxmodal.training.config import config_from_dict
    from histoxmodal.workflows.run import Run
    from histoxmodal.workflows.train import train

    data = make_paired_dataset(tmp_path / "data", spots_per_sample=32, n_genes=40)
    adata = ad.read_h5ad(data / "adata.h5ad")
    model_genes = [*reversed(list(adata.var_names[:26])), "Z1", "Z2", "Z3", "Z4"]
    state, mean = _save(tmp_path / "nf", genes=model_genes)
    cfg = config_from_dict(
        {
            "genes": None,
            "model": {
                "image_encoder": "test_image_resnet",
                "gene_encoder": "gene_nicheformer",
                "gene_weights": str(tmp_path / "nf" / "nf.ckpt"),  # the file: copied with
            },  # the gene list and technology mean beside it
            "optim": {"batch_size": 16, "max_epochs": 1, "num_workers": 0},
        }
    )
    run = train(cfg, tmp_path / "run", data=data, accelerator="cpu", devices=1)
    assert run.genes == model_genes[:26]
    copied = sorted(p.name for p in (tmp_path / "run" / "gene_model").iterdir())
    assert copied == ["genes.txt", "nf.ckpt", "technology_mean.npy"]
    shutil.rmtree(tmp_path / "nf")
    tower = Run.load(tmp_path / "run").module.gene
    assert tower.missing_genes == 4 and not any(p.requires_grad for p in tower.parameters())
    counts = np.asarray(adata[:, run.genes].X.todense(), np.float32)
    in_model_order = np.zeros((len(counts), len(model_genes)), np.float32)
    in_model_order[:, :26] = counts
    want = _embed_by_hand(state, _tokens_by_hand(in_model_order, mean))
    np.testing.assert_allclose(_embed(tower, counts), want, atol=2e-5)
