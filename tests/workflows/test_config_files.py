"""Config files: YAML (a path or a bundled example) with ``--set`` overrides, read on the
application side; the dataclasses they build validate themselves (tests/training/test_config.py).
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from histoxmodal.errors import ConfigError
from histoxmodal.workflows.config_files import bundled_config_data, load_config, set_value


def test_malformed_yaml_is_one_line_naming_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("genes: 20\nmodel: {image_encoder: test_uni\noptim: {lr: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    msg = str(err.value)
    assert str(bad) in msg and "line 3" in msg and "\n" not in msg
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(str(listed))


def test_set_into_a_value_that_is_not_a_section():
    with pytest.raises(ConfigError, match="genes is 256, not a section"):
        load_config("her2st_small", ["genes.n=3"])


def test_every_bundled_config_is_valid_and_the_demo_and_bench_read_theirs():
    from histoxmodal.bench.her2st import BASE_CONFIG, base_config
    from histoxmodal.workflows.config_files import bundled_configs
    from histoxmodal.workflows.demo import DEMO_CONFIG, MEDICAL_CONFIG

    names = set(bundled_configs())
    assert {DEMO_CONFIG, MEDICAL_CONFIG, BASE_CONFIG} <= names
    for name in names:
        load_config(name)  # raises on any invalid value
    # a fresh dict each time: a caller's merge never leaks into the next row
    first = base_config()
    first["optim"]["max_epochs"] = 99
    assert base_config()["optim"]["max_epochs"] == 6


def test_set_value_builds_sections_and_an_unknown_config_names_the_bundled_ones():
    data = {"optim": {"lr": 1.0}}
    set_value(data, "optim.lr", 3e-4)
    set_value(data, "head.context_um", 620)
    assert data == {"optim": {"lr": 3e-4}, "head": {"context_um": 620}}
    with pytest.raises(ConfigError, match=r"--set optim\.lr\.x: optim\.lr is 0\.0003"):
        set_value(data, "optim.lr.x", 1)
    with pytest.raises(ConfigError, match=r"'her2sst'.*Did you mean her2st"):
        load_config("her2sst")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("her2st_small", ["optim.lr"])
    assert bundled_config_data("her2st")["genes"] == load_config("her2st").genes


def test_her2st_ensemble_is_the_her2st_config_with_three_members():
    """The bundled ensemble config is `her2st` with `model.ensemble: 3` and nothing else, so
    the two cannot drift apart (docs/benchmarks.md compares them)."""
    single, ens = load_config("her2st").to_dict(), load_config("her2st_ensemble").to_dict()
    assert ens["model"].pop("ensemble") == 3 and single["model"].pop("ensemble") == 1
    assert ens == single


def test_a_config_with_a_base_states_only_what_differs(tmp_path):
    """`base:` reads a file beside the config (else a bundled example) and merges this file's
    keys on top, section by section; overrides still come last; a cycle or an unknown base is
    one clear error naming the file."""
    (tmp_path / "mine.yaml").write_text("base: her2st\noptim: {lr: 0.001}\nhead: {csls_k: 5}\n")
    (tmp_path / "child.yaml").write_text("base: mine.yaml\nmodel: {embed_dim: 32}\n")
    ref = load_config("her2st").to_dict()
    got = load_config(str(tmp_path / "child.yaml"), ["optim.max_epochs=3"]).to_dict()
    assert got["optim"] == {**ref["optim"], "lr": 0.001, "max_epochs": 3}
    assert got["head"] == {**ref["head"], "csls_k": 5}  # the rest of head kept
    assert got["model"] == {**ref["model"], "embed_dim": 32}
    assert {k: v for k, v in got.items() if k not in ("optim", "head", "model")} == {
        k: v for k, v in ref.items() if k not in ("optim", "head", "model")
    }
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: base 'b\.yaml' leads back to itself|"
                       r"b\.yaml: base 'a\.yaml' leads back to itself"):  # fmt: skip
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "lost.yaml").write_text("base: her2stt\n")
    with pytest.raises(ConfigError, match=r"lost\.yaml: base 'her2stt' is neither a file"):
        load_config(str(tmp_path / "lost.yaml"))
