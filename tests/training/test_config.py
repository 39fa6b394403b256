"""The training config is validated completely, with typed fields, before anything is built."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from histoxmodal.errors import ConfigError
from histoxmodal.training.config import config_from_dict
from histoxmodal.workflows.config_files import load_config


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optim.lr=abc", r"optim\.lr='abc': expected a number"),
        ("optim.lr=-0.1", r"optim\.lr=-0\.1: expected a number > 0"),
        ("optim.batch_size=abc", r"optim\.batch_size='abc': expected an integer"),
        ("optim.batch_size=0", r"optim\.batch_size=0: expected an integer >= 1"),
        ("optim.max_epochs=1.5", r"optim\.max_epochs=1\.5: expected an integer"),
        ("optim.max_epochs=0", r"optim\.max_epochs=0: expected an integer >= 1"),
        ("optim.num_workers=-1", r"optim\.num_workers=-1: expected an integer >= 0"),
        ("optim.precision=fp7", r"optim\.precision='fp7': not a Lightning precision.*bf16-mixed"),
        ("genes=many", r"genes='many': expected an integer or null"),
        ("genes=0", r"genes=0: expected an integer >= 1"),
        ("loss.name=clp", r"loss\.name='clp': unknown loss; did you mean 'clip'"),
        ("model.image_encoder=unii", r"model\.image_encoder='unii': unknown encoder.*'uni'"),
        ("model.gene_encoder=gene_mpl", r"model\.gene_encoder='gene_mpl'.*'gene_mlp'"),
        ("model.head=conv", r"model\.head='conv'"),
        ("model.cache_image_features=maybe", r"cache_image_features='maybe': expected true"),
        ("model.image_kwargs=3", r"model\.image_kwargs=3: expected a mapping"),
        ("augment.hed_sigma=2", r"augment\.hed_sigma=2"),
        ("augment.flip=true", r"unknown key augment\.'flip'; did you mean flips"),
        ("optim=3", r"optim=3: expected a mapping"),
        ("head.context_um=-5", r"head\.context_um=-5\.0: expected a number >= 0"),
        ("head.centre=maybe", r"head\.centre='maybe': expected true or false"),
        ("head.retrieval_score=dot", r"head\.retrieval_score='dot': expected one of 'ip'"),
        ("head.csls_k=0", r"head\.csls_k=0: expected a number >= 1"),
        ("augment.depth_min=0", r"depth_min=0\.0 must be in \(0, 1\]"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_expected(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("her2st_small", [override])


def test_values_are_coerced_only_where_lossless():
    # YAML 1.1 reads 3e-4 as a string; a float field takes it as the number it spells
    cfg = load_config("her2st_small", ["optim.lr=3e-4", "optim.max_epochs=3.0", "genes=null"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.max_epochs == 3 and isinstance(cfg.optim.max_epochs, int)
    assert cfg.genes is None
    cfg = config_from_dict({"optim": {"weight_decay": 0, "precision": 32}})
    assert cfg.optim.weight_decay == 0.0 and isinstance(cfg.optim.weight_decay, float)
    assert cfg.optim.precision == "32"
    assert config_from_dict({"model": {"image_encoder": "timm:resnet18"}}).model.image_encoder
    with pytest.raises(ConfigError, match="expected true or false"):
        config_from_dict({"model": {"cache_image_features": 1}})


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed", "64", "auto"])
def test_lightning_precisions_are_accepted(precision):
    assert config_from_dict({"optim": {"precision": precision}}).optim.precision == precision


def test_multimodal_config_fields_are_typed():
    from histoxmodal.training.multimodal import multimodal_config_from_dict

    two = {"cxr": {"encoder": "test_cxr"}, "ecg": {"encoder": "test_ecg"}}
    assert multimodal_config_from_dict({"modalities": two}).optim.lr > 0
    cases = [
        ({"embed_dim": "big"}, r"embed_dim='big': expected an integer"),
        ({"augment": "yes"}, r"augment='yes': expected true or false"),
        ({"optim": {"lr": "abc"}}, r"optim\.lr='abc'"),
        ({"optim": {"precision": "fp7"}}, r"optim\.precision='fp7'"),
        ({"optim": {"max_epochs": 1.5}}, r"optim\.max_epochs=1\.5"),
        ({"modalities": {**two, "ecg": {"encoder": "ecg_resnet"}}}, r"modalities\.ecg\.encoder"),
        ({"modalities": "cxr"}, r"modalities='cxr': expected a mapping"),
        ({"head": "conv"}, r"head='conv'"),
    ]
    for extra, match in cases:
        with pytest.raises(ConfigError, match=match):
            multimodal_config_from_dict({"modalities": two, **extra})


@pytest.mark.parametrize(
    ("build", "override", "match"),
    [
        (lambda c: c.TrainConfig(genes=0), "genes=0", r"genes=0: expected an integer >= 1"),
        (
            lambda c: c.OptimConfig(batch_size=0),
            "optim.batch_size=0",
            r"optim\.batch_size=0: expected an integer >= 1",
        ),
        (
            lambda c: c.ModelConfig(image_mode="frozn"),
            "model.image_mode=frozn",
            r"model\.image_mode='frozn': expected one of 'finetune', 'frozen', 'lora'; "
            r"did you mean 'frozen'",
        ),
        (
            lambda c: c.CorrectionConfig(sampler="balance"),
            "correction.sampler=balance",
            r"correction\.sampler='balance': expected one of .*did you mean 'balanced'",
        ),
        (
            lambda c: c.HeadConfig(expression="ridg"),
            "head.expression=ridg",
            r"head\.expression='ridg': expected one of 'ridge', 'mlp', 'retrieval' or null",
        ),
        (
            lambda c: c.LossConfig(name="none"),
            "loss.name=none",
            r"loss\.name='none' trains nothing",
        ),
        (
            lambda c: c.ModelConfig(gene_encoder="gene_mpl"),
            "model.gene_encoder=gene_mpl",
            r"model\.gene_encoder='gene_mpl'.*'gene_mlp'",
        ),
        (
            lambda c: c.TrainConfig(model={"embed_dim": 0}),
            "model.embed_dim=0",
            r"model\.embed_dim=0: expected an integer >= 1",
        ),
        (
            lambda c: c.TrainConfig(optim={"lr": "fast"}),
            "optim.lr=fast",
            r"optim\.lr='fast': expected a number",
        ),
    ],
)
def test_a_config_built_in_python_is_refused_like_the_same_value_in_yaml(build, override, match):
    import histoxmodal.training.config as c

    with pytest.raises(ConfigError, match=match) as from_python:
        build(c)
    with pytest.raises(ConfigError, match=match) as from_yaml:
        load_config("her2st_small", [override])
    assert str(from_python.value) == str(from_yaml.value)


def test_a_config_built_in_python_is_coerced_and_its_sections_built_from_dicts():
    from histoxmodal.training.config import OptimConfig, TrainConfig

    cfg = TrainConfig(genes=64.0, optim={"lr": "3e-4", "max_epochs": 3})
    assert cfg.genes == 64 and isinstance(cfg.genes, int)
    assert isinstance(cfg.optim, OptimConfig) and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg == config_from_dict({"genes": 64, "optim": {"lr": 3e-4, "max_epochs": 3}})
    with pytest.raises(ConfigError, match=r"^optim=3: expected a mapping"):
        TrainConfig(optim=3)
