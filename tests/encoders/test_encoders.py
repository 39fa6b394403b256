"""Every registered tiny encoder runs and trains; weights load back in every supported format,
through the same remapping code path the published checkpoints use."""

from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from histoxmodal.encoders import ProjectionHead, create_encoder, list_encoders  # noqa: E402
from histoxmodal.encoders.weights import WeightsError  # noqa: E402
from histoxmodal.errors import ConfigError  # noqa: E402

N_GENES = 40


def _is_gene(name):
    from histoxmodal.encoders import describe_encoder

    return describe_encoder(name)["modality"] == "gene"


def _build(name, **kw):
    if _is_gene(name):
        kw.setdefault("n_genes", N_GENES)
    return create_encoder(name, **kw)


def _input(name, n=3):
    from histoxmodal.encoders import describe_encoder

    g = torch.Generator().manual_seed(0)
    modality = describe_encoder(name)["modality"]
    if modality == "gene":
        return (torch.rand(n, N_GENES, generator=g) * (torch.rand(n, N_GENES, generator=g) > 0.3),)
    if modality == "radiology":
        return (torch.rand(n, 1, 40, 40, generator=g),)
    if modality == "ecg":
        mask = torch.ones(n, 12, dtype=torch.bool)
        mask[0, 3:] = False  # a 2-lead record
        return (torch.randn(n, 12, 250, generator=g), mask)
    if modality == "text":
        texts = ["Findings: no acute disease.", "Cardiomegaly, small left effusion.", ""]
        return (create_encoder(name).tokenize(texts[:n]),)
    return (torch.randn(n, 3, 32, 32, generator=g),)


@pytest.mark.parametrize("name", list_encoders("test_*"))
def test_tiny_encoders_shapes_finite_and_gradients(name):
    torch.manual_seed(0)
    model = _build(name)
    head = ProjectionHead(model.embed_dim, 16)
    out = model(*_input(name))
    assert out.shape == (3, model.embed_dim) and torch.isfinite(out).all()
    z = head(out)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    (z * torch.randn_like(z)).sum().backward()
    for pname, p in [*model.named_parameters(), *head.named_parameters()]:
        if p.requires_grad:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname


def test_report_tokens_are_stable_hashed_ngrams():
    enc = create_encoder("test_report")
    ids = enc.tokenize(["Mild cardiomegaly.", "mild  CARDIOMEGALY"])
    # the same words give the same ids (crc32, not Python's salted hash); unigrams + bigram
    assert ids.shape == (2, 3) and ids[0].tolist() == ids[1].tolist()
    assert (ids > 0).all() and (ids < 4096).all()
    assert enc.tokenize([""]).tolist() == [[0]]


def test_registry_lists_the_foundation_models():
    for name in (
        "uni",
        "uni2_h",
        "conch",
        "virchow2",
        "h_optimus_0",
        "gigapath",
        "phikon",
        "phikon_v2",
    ):
        assert name in list_encoders()
    assert list_encoders("uni*") == ["uni", "uni2_h"]
    with pytest.raises(KeyError, match="Did you mean 'uni'"):
        create_encoder("unii")
    with pytest.raises(ConfigError, match="unknown timm architecture"):
        create_encoder("timm:resnet_18")
    m = create_encoder("timm:resnet18", input_size=64)
    assert m.preprocess.input_size == 64 and m.embed_dim == 512


def _same_output(a, b, name="test_uni"):
    a.eval()
    b.eval()
    x = _input(name)[0]
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "bin", "snapshot", "sharded", "wrapped"])
def test_weights_round_trip_in_every_format(fmt, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = _build("test_uni")
    state = {k: v.contiguous() for k, v in src.trunk.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, path)
    elif fmt in ("pth", "bin"):
        path = tmp_path / f"w.{fmt}"
        torch.save(state, path)
    elif fmt == "wrapped":  # {"state_dict": ...} as Lightning and many repos save
        path = tmp_path / "w.ckpt"
        torch.save({"state_dict": state}, path)
    elif fmt == "snapshot":
        path = tmp_path / "snap"
        path.mkdir()
        save_file(state, path / "model.safetensors")
        (path / "config.json").write_text("{}")
    else:
        path = tmp_path / "sharded"
        path.mkdir()
        keys = sorted(state)
        half = len(keys) // 2
        shards = {
            "model-00001-of-00002.safetensors": keys[:half],
            "model-00002-of-00002.safetensors": keys[half:],
        }
        for fname, ks in shards.items():
            save_file({k: state[k] for k in ks}, path / fname)
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {k: f for f, ks in shards.items() for k in ks}})
        )
    dst = _build("test_uni", weights=path, mode="frozen")
    _same_output(src, dst)
    assert dst.weights_sha256 and len(dst.weights_sha256) == 64
    if path.is_file():
        assert dst.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not any(p.requires_grad for p in dst.parameters())


def _to_hf(state, dinov2):
    """timm names -> Hugging Face ViT / Dinov2 names, written out independently of the loader."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
        "pooler.dense.weight": torch.zeros(2, 2),
    }
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{b}attn.qkv.{kind}"].chunk(3, dim=0)
            out[f"{h}attention.attention.query.{kind}"] = q
            out[f"{h}attention.attention.key.{kind}"] = k
            out[f"{h}attention.attention.value.{kind}"] = v
            out[f"{h}attention.output.dense.{kind}"] = state[f"{b}attn.proj.{kind}"]
            if dinov2:
                out[f"{h}norm1.{kind}"] = state[f"{b}norm1.{kind}"]
                out[f"{h}norm2.{kind}"] = state[f"{b}norm2.{kind}"]
                out[f"{h}mlp.fc1.{kind}"] = state[f"{b}mlp.fc1.{kind}"]
                out[f"{h}mlp.fc2.{kind}"] = state[f"{b}mlp.fc2.{kind}"]
            else:
                out[f"{h}layernorm_before.{kind}"] = state[f"{b}norm1.{kind}"]
                out[f"{h}layernorm_after.{kind}"] = state[f"{b}norm2.{kind}"]
                out[f"{h}intermediate.dense.{kind}"] = state[f"{b}mlp.fc1.{kind}"]
                out[f"{h}output.dense.{kind}"] = state[f"{b}mlp.fc2.{kind}"]
        if dinov2:
            out[f"{h}layer_scale1.lambda1"] = state[f"{b}ls1.gamma"]
            out[f"{h}layer_scale2.lambda1"] = state[f"{b}ls2.gamma"]
    return out


@pytest.mark.parametrize(
    "name,dinov2,prefix", [("test_phikon", False, "vit."), ("test_phikon_v2", True, "")]
)
def test_hugging_face_checkpoints_are_remapped(name, dinov2, prefix, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    src = _build(name)
    hf = {prefix + k: v.contiguous() for k, v in _to_hf(src.trunk.state_dict(), dinov2).items()}
    save_file(hf, tmp_path / "model.safetensors")
    _same_output(src, _build(name, weights=tmp_path))


def test_conch_trunk_keys(tmp_path):
    torch.manual_seed(3)
    src = _build("test_conch")
    state = {f"visual.trunk.{k}": v for k, v in src.trunk.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(4, 4)
    state["visual.attn_pool_contrast.query"] = torch.zeros(1, 4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    _same_output(src, _build("test_conch", weights=tmp_path / "pytorch_model.bin"))


def test_wrong_checkpoints_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in _build("test_uni").trunk.state_dict().items()},
        tmp_path / "uni.safetensors",
    )
    with pytest.raises(WeightsError, match="does not fit this architecture.*(missing|shape)"):
        _build("test_virchow2", weights=tmp_path / "uni.safetensors")
    torch.save({"x": ConfigError("code")}, tmp_path / "pickle.pth")
    with pytest.raises(WeightsError, match="weights-only"):
        _build("test_uni", weights=tmp_path / "pickle.pth")
    with pytest.raises(FileNotFoundError, match="only read from local files"):
        _build("test_uni", weights=tmp_path / "nope.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no weights in this folder"):
        _build("test_uni", weights=tmp_path / "empty")


def test_gene_transformer_tokens_follow_rank_and_mask():
    m = _build("test_gene_transformer", n_genes=6, max_tokens=4)
    x = torch.tensor([[0.0, 5.0, 1.0, 3.0, 2.0, 4.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    m.gene_scale.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]))
    ids, _ = m.tokens(x, mask)
    assert ids.tolist() == [[2, 4, 5, 3]]  # genes 1, 3, 4, 2 (+1); gene 5 unmeasured, 0 absent
    m.fit_scale(torch.tensor([[1.0, 10.0, 1.0, 1.0, 1.0, 1.0]]))
    ids, _ = m.tokens(x, mask)
    assert ids[0, 0].item() == 4  # gene 3 (3.0 / 1) now outranks gene 1 (5.0 / 10)
    mlp = _build("test_gene_mlp", n_genes=6).eval()  # dropout off: compare the masking only
    a = mlp(x, mask)
    b = mlp(x * mask, None)
    torch.testing.assert_close(a, b)
    cond = _build("test_gene_mlp", n_genes=6, n_batches=3)
    with pytest.raises(ConfigError, match="batch ids"):
        cond(x)
    assert cond(x, batch=torch.tensor([2])).shape == (1, 8)


def test_lora_trains_only_the_adapters(tmp_path):
    pytest.importorskip("peft")
    from safetensors.torch import save_file

    torch.manual_seed(4)
    base = _build("test_uni")
    save_file(
        {k: v.contiguous() for k, v in base.trunk.state_dict().items()}, tmp_path / "w.safetensors"
    )
    lora = _build("test_uni", weights=tmp_path / "w.safetensors", mode="lora", lora_rank=4)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".qkv.lora_A" in n for n in trainable)
    # adapters start at zero: the output equals the loaded model's
    _same_output(base, lora)
    lora(_input("test_uni")[0]).sum().backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="match no Linear"):
        _build("test_uni", mode="lora", lora_targets=("nothing",))


def test_scvi_tower_matches_scvi_latent_means(tmp_path):
    pytest.importorskip("scvi")
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from histoxmodal.encoders.gene import ScviGeneEncoder

    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(1.0, 2.0, (1, 30)), (120, 30)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var_names = [f"G{i}" for i in range(30)]
    adata.obs["batch"] = np.repeat(["a", "b"], 60)
    tower = ScviGeneEncoder(genes=list(adata.var_names), n_latent=4, n_hidden=16, freeze=True)
    tower.pretrain(adata, batch_key="batch", max_epochs=3)
    assert not any(p.requires_grad for p in tower.parameters())
    # the same numbers scvi-tools gives for the posterior means
    import scvi

    sub = adata.copy()
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(sub, batch_key="batch")
    model = scvi.model.SCVI(sub, n_latent=4, n_hidden=16)
    model.module.z_encoder.load_state_dict(tower.encoder.state_dict())
    model.is_trained_ = True
    model.module.eval()  # a model built here, not trained by scvi, starts in train mode
    want = model.get_latent_representation(give_mean=True)
    tower.eval()
    with torch.no_grad():
        got = tower(torch.from_numpy(counts)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_ctranspath_old_timm_checkpoint(tmp_path):
    import re

    torch.manual_seed(5)
    src = _build("test_ctranspath")
    state = src.trunk.state_dict()
    assert "layers.1.downsample.reduction.weight" in state
    # timm 0.5 layout, as CTransPath's ctranspath.pth stores it: downsample at the end of a stage
    old = {
        re.sub(
            r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k
        ): v
        for k, v in state.items()
    }
    old["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    old["head.weight"] = torch.zeros(2, src.embed_dim)
    torch.save({"model": old}, tmp_path / "ctranspath.pth")
    _same_output(
        src, _build("test_ctranspath", weights=tmp_path / "ctranspath.pth"), "test_ctranspath"
    )


def test_batch_specific_norm_removes_a_per_batch_shift():
    from histoxmodal.encoders.gene import BatchSpecificNorm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=g)
    batch = torch.tensor([0] * 10 + [1] * 10)
    shifted = x.clone()
    shifted[10:] = x[:10] * 3.0 + 7.0  # batch 1 = batch 0's spots, scaled and shifted
    norm = BatchSpecificNorm(5, 3).train()
    y = norm(shifted, batch)
    torch.testing.assert_close(y[10:], y[:10], rtol=1e-4, atol=1e-4)
    # running statistics were initialised from the first minibatch of each batch
    torch.testing.assert_close(norm.running_mean[1], shifted[10:].mean(0))
    assert norm.seen.tolist() == [True, True, False]
    norm.eval()
    torch.testing.assert_close(norm(shifted, batch), y)
    # batch 2 was never seen in training: its rows are normalized with their own statistics
    z = norm(x[:10] * 0.5 - 2.0, torch.full((10,), 2))
    torch.testing.assert_close(z, y[:10], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="outside the 3 batches"):
        norm(x[:2], torch.tensor([0, 3]))


def test_an_unseen_batch_is_normalized_over_all_its_rows_once_adapted():
    from histoxmodal.encoders.gene import BatchSpecificNorm, adapt_batch_norms

    torch.manual_seed(0)
    enc = create_encoder("test_gene_mlp", n_genes=12, n_batches=3, conditioning="norm")
    x = torch.rand(20, 12) * 3
    new = torch.rand(20, 12) * 6 + 1  # batch 1: never seen in training
    mask = torch.ones(20, 12, dtype=torch.bool)
    zeros, ones = torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.long)
    enc.train()(x, mask, zeros)  # batch 0 is seen in training
    enc.eval()

    def in_chunks(rows):  # embedded 6 rows at a time, as an embedding loop would
        with torch.no_grad():
            return torch.cat([enc(rows[i : i + 6], mask[i : i + 6], ones[i : i + 6])
                              for i in range(0, 20, 6)])  # fmt: skip

    with torch.no_grad():
        whole = enc(new, mask, ones)
        seen_rows = enc(x, mask, zeros)
    # without adaptation, its embeddings depend on which rows share a call
    assert not torch.allclose(in_chunks(new), whole, atol=1e-3)
    ids, rows = torch.cat([zeros, ones]), torch.cat([x, new])  # a dataset of both batches
    assert adapt_batch_norms(enc, lambda r: enc(rows[r], mask[:1].expand(20, -1), ids[r]), ids) == [
        1
    ]
    torch.testing.assert_close(in_chunks(new), whole, rtol=1e-5, atol=1e-5)
    norm = next(m for m in enc.modules() if isinstance(m, BatchSpecificNorm))
    torch.testing.assert_close(norm.adapted_mean[1], new.mean(0))
    # a seen batch keeps its running statistics; the adapted ones are not saved with weights
    assert not norm.adapted[0] and norm.seen[0] and not norm.seen[1]
    with torch.no_grad():
        torch.testing.assert_close(enc(x, mask, zeros), seen_rows)
    assert not any("adapted" in k for k in enc.state_dict())


@pytest.mark.parametrize("conditioning", ["norm", "onehot"])
@pytest.mark.parametrize("name", ["test_gene_mlp", "test_gene_transformer"])
def test_batch_conditioned_gene_towers(name, conditioning):
    enc = create_encoder(name, n_genes=12, n_batches=3, conditioning=conditioning)
    x = torch.rand(6, 12) * 3
    out = enc(x, torch.ones_like(x, dtype=torch.bool), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert out.shape == (6, enc.embed_dim) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="pass batch ids"):
        enc(x)
