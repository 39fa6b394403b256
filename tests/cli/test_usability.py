"""What a person sees on the command line: verbosity, help, names, quiet third-party output."""

from __future__ import annotations

import logging

import pytest

from histoxmodal.cli.main import main


@pytest.fixture
def root_logging():
    """Restore the root logger's level and handlers after a test that runs ``main``."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)


@pytest.mark.parametrize(
    ("flags", "level"),
    [
        ([], logging.WARNING),
        (["-v"], logging.INFO),
        (["-vv"], logging.DEBUG),
        (["-q"], logging.ERROR),
        (["-qq"], logging.CRITICAL),
        (["AFTER", "-v"], logging.INFO),
        (["AFTER", "-v", "-v"], logging.DEBUG),
        (["AFTER", "--quiet"], logging.ERROR),
        (["-v", "AFTER", "-v"], logging.DEBUG),  # counts add up across positions
        (["-v", "AFTER", "-q"], logging.WARNING),
    ],
)
def test_verbosity_before_and_after_the_subcommand(flags, level, tmp_path, root_logging, capsys):
    before = flags[: flags.index("AFTER")] if "AFTER" in flags else flags
    after = flags[flags.index("AFTER") + 1 :] if "AFTER" in flags else []
    argv = [*before, "tile", str(tmp_path / "missing.svs"), "--out", str(tmp_path / "o"), *after]
    assert main(argv) == 1  # the slide is missing: a failed slide, not a usage error
    assert root_logging.level == level
    out, err = capsys.readouterr()
    if "-q" in flags or "--quiet" in flags or "-qq" in flags:
        if "-v" not in flags:  # -q: errors only, on stderr; no table
            assert "failed: missing" in err and out == "" and "slide" not in err.split("failed")[0]
    else:
        assert "failed: missing" in out and "status" in out  # the table


# ------------------------------------------------------------------ Lightning's output, once

TINY = (
    "genes: 20\nmodel: {image_encoder: test_uni, gene_encoder: test_gene_mlp, "
    "embed_dim: 8}\noptim: {batch_size: 16, num_workers: 0}\n"
)


@pytest.fixture(scope="module")
def tiny_train(tmp_path_factory):
    """A paired dataset and a tiny config; ``argv(out)`` trains one epoch into ``out``."""
    pytest.importorskip("lightning")
    from histoxmodal.testing.paired import make_paired_dataset

    root = tmp_path_factory.mktemp("tiny_train")
    data = make_paired_dataset(root / "data", spots_per_sample=32)
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)

    def argv(out, *extra):
        return [
            "train", str(cfg), "--data", str(data), "--out", str(out),
            "--accelerator", "cpu", "--devices", "1", "--max-epochs", "1", *extra,
        ]  # fmt: skip

    return argv


def test_lightning_lines_once_without_adverts_or_deprecations(tiny_train, tmp_path):
    # a fresh process: Lightning is imported after the command line set up logging
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "histoxmodal.cli.main", *tiny_train(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HISTOXMODAL_PROGRESS": "0"},
    )
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert lines.count("INFO: GPU available: False, used: False") == 1, res.stderr
    assert sum("`Trainer.fit` stopped" in ln for ln in lines) == 1, res.stderr
    assert "Tip" not in res.stderr and "deprecated" not in res.stderr.lower(), res.stderr


def test_lightning_advert_only_with_verbose(tiny_train, tmp_path, root_logging, capsys):
    # in this process Lightning may already be imported with its own handler: it is removed
    assert main(tiny_train(tmp_path / "a")) == 0
    err = capsys.readouterr().err
    assert err.count("GPU available: False, used: False") == 1 and "Tip" not in err, err
    assert main(tiny_train(tmp_path / "b", "-v")) == 0
    err = capsys.readouterr().err
    assert err.count("GPU available: False, used: False") == 1 and "💡 Tip" in err, err
    assert main(tiny_train(tmp_path / "c", "-q")) == 0
    assert "GPU available" not in capsys.readouterr().err


# ------------------------------------------------------------------------ train --print-config


def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import json

    import yaml

    from histoxmodal.workflows.config_files import load_config

    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "her2st_small", "--set", "optim.lr=0.01", "--max-epochs", "3"]
    assert main([*argv, "--out", "run", "--data", "ds", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.01 and printed["optim"]["max_epochs"] == 3
    assert printed["data"] == "ds" and printed["kind"] == "spatial"
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing else
    # the printed YAML, saved as a file, is the same config
    (tmp_path / "saved.yaml").write_text(yaml.safe_dump(printed))
    again = load_config(str(tmp_path / "saved.yaml")).to_dict()
    assert json.loads(json.dumps(again)) == printed
    assert main([*argv, "--print-config", "json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json == {**printed, "data": None}
    assert main(["train", "--print-config"]) == 2
    assert "--print-config needs CONFIG" in capsys.readouterr().err


# ------------------------------------------- one name for one thing: --data dataset, --src raw


def _record(monkeypatch, module: str, name: str, result=None):
    """Replace ``module.name`` by a function recording its arguments; returns the record."""
    import importlib

    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    return calls


class _Obs:
    n_obs = 3


WF = "histoxmodal.workflows."


@pytest.mark.parametrize(
    ("command", "module", "name", "result", "tail"),
    [
        ("embed", WF + "embed", "embed", _Obs(), ["--out", "e.h5ad"]),
        ("evaluate", WF + "evaluate", "evaluate", {"metrics": {}}, ["--out", "ev"]),
        ("export", WF + "export", "export_parquet", [], ["--to", "parquet", "--out", "pq"]),
    ],
)
def test_paired_dataset_is_data_and_the_positional_is_a_deprecated_alias(
    command, module, name, result, tail, monkeypatch, capsys
):
    calls = _record(monkeypatch, module, name, result)
    run = [] if command == "export" else ["RUN"]
    assert main([command, *run, "--data", "DS", *tail]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main([command, *run, "DS", *tail]) == 0  # the 0.1 spelling still works
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DATASET (positional) is deprecated" in err, err
    assert "use --data DS" in err
    assert calls[0] == calls[1] and "DS" in calls[0][0]
    assert main([command, *run, "DS", "--data", "DS2", *tail]) == 2
    assert "the dataset is given twice" in capsys.readouterr().err
    assert main([command, *run, *tail]) == 2
    assert f"histoxmodal {command}: error: --data DIR is required" in capsys.readouterr().err
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("argv", "module", "name"),
    [
        (["bench", "her2st"], "histoxmodal.bench.her2st", "run_her2st_bench"),
        (["bench", "tissue"], "histoxmodal.bench.tissue", "run_tissue_bench"),
    ],
)
def test_raw_source_is_src_and_data_is_a_deprecated_alias(argv, module, name, monkeypatch, capsys):
    calls = _record(monkeypatch, module, name, 0)
    assert main([*argv, "--src", "raw"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main([*argv, "--data", "raw"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"histoxmodal {' '.join(argv)} --data is deprecated" in err
    assert "use --src" in err
    assert calls[0] == calls[1] and calls[0][0][0] == "raw"
    assert main(argv) == 2
    assert "--src PATH is required" in capsys.readouterr().err


def test_demo_takes_the_her2st_folder_as_src(capsys):
    from histoxmodal.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo", "--src", "her2st"]).src == "her2st"
    assert "deprecated" not in capsys.readouterr().err
    assert parser.parse_args(["demo", "--data", "her2st"]).src == "her2st"
    assert "histoxmodal demo --data is deprecated" in capsys.readouterr().err
    assert parser.parse_args(["demo"]).src is None  # generated data


# ------------------------------------------------------------------- help text and examples


def _all_parsers():
    import argparse

    from histoxmodal.cli.main import build_parser

    def walk(p):
        yield p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for child in dict.fromkeys(a.choices.values()):
                    yield from walk(child)

    return list(walk(build_parser()))


def test_every_command_and_option_has_help_and_every_command_examples():
    import argparse

    parsers = _all_parsers()
    assert len(parsers) > 20  # every command, bench ones included
    missing, no_examples = [], []
    for p in parsers:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                missing += [f"{p.prog} {c.dest}" for c in a._choices_actions if not c.help]
            elif a.help != argparse.SUPPRESS and not (a.help or "").strip():
                missing.append(f"{p.prog} {'/'.join(a.option_strings) or a.dest}")
        epilog = p.epilog or ""
        lines = epilog.splitlines()[1:]
        if not epilog.startswith("Examples:") or not 2 <= len(lines) <= 4:
            no_examples.append(p.prog)
        elif not all(ln.strip().startswith(p.prog) for ln in lines):
            no_examples.append(f"{p.prog} (an example of another command)")
        elif "Examples:\n  histoxmodal" not in p.format_help():
            no_examples.append(f"{p.prog} (examples not kept line by line)")
    assert missing == [], f"options without help: {missing}"
    assert no_examples == [], f"commands without 2-4 examples (cli/examples.py): {no_examples}"


def test_descriptions_are_still_wrapped(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    head = out.split("Examples:")[0]
    assert max(len(ln) for ln in head.splitlines()) <= 100 and "Retrieval (whole test" in head


# ---------------------------------------------------------------------------- train --list


def test_train_list_shows_whole_descriptions_wrapped(capsys):
    pytest.importorskip("torch")
    from histoxmodal.workflows.config_files import bundled_configs

    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert max(len(ln) for ln in out.splitlines()) <= 100
    for name, path in bundled_configs().items():
        assert out.count(f"\n{name} ") + out.startswith(f"{name} ") == 1
        prose = " ".join(
            ln[1:].strip()
            for ln in path.read_text().splitlines()[:10]
            if ln.startswith("# ") and not ln.startswith("#   ")
        )
        assert prose.endswith(".") and prose in " ".join(out.split()), name  # nothing cut
    assert "Two epochs take about 30 s on 2 CPU cores (31 s measured" in " ".join(out.split())


def test_an_ascii_terminal_gets_escapes_not_a_crash(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from histoxmodal.testing import make_synthetic_slide

    made = make_synthetic_slide(tmp_path / "s.tif", width=1024, height=768, seed=1)
    slide = tmp_path / "sé_µ.tif"
    shutil.copy(made.path, slide)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    cmd = [sys.executable, "-m", "histoxmodal.cli.main", "tile", str(slide), "--out",
           str(tmp_path / "out"), "--tile-px", "64", "--mpp-target", "1"]  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    assert b"s\\xe9_\\xb5" in p.stdout and b"Traceback" not in p.stderr
    assert (tmp_path / "out" / "sé_µ" / "manifest.json").exists()


def test_models_pattern_matching_nothing_is_an_error(capsys):
    assert main(["models", "zzz*"]) == 2
    err = capsys.readouterr().err
    assert "no registered model matches 'zzz*'" in err and err.count("\n") == 1
    assert main(["models", "unii"]) == 2
    assert "did you mean uni" in capsys.readouterr().err
    assert main(["models", "uni*"]) == 0


def test_documented_b4_pixel_size_is_the_one_read_spatial_derives(data_dir):
    import re
    from pathlib import Path

    from histoxmodal.cli.examples import EXAMPLES
    from histoxmodal.io.spatial import read_her2st

    derived = read_her2st(data_dir / "her2st", "B4").uns["spatial"]["B4"]["metadata"]["mpp"]
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    texts = [readme, *("\n".join(v) for v in EXAMPLES.values())]
    found = [float(m) for t in texts for m in re.findall(r"B4\.jpg --mpp ([0-9.]+)", t)]
    assert len(found) >= 3
    for mpp in found:
        assert abs(mpp - derived) / derived < 0.01, (mpp, derived)


def test_a_missing_pixel_size_names_every_way_to_give_one(tmp_path):
    from PIL import Image

    from histoxmodal.errors import MppError
    from histoxmodal.io.slide import open_slide

    Image.new("RGB", (64, 48), "white").save(tmp_path / "x.jpg")
    with open_slide(tmp_path / "x.jpg") as s, pytest.raises(MppError) as err:
        s.require_mpp()
    msg = str(err.value)
    assert "--mpp UM" in msg and "--mpp-csv" in msg and "read_spatial" in msg
    assert "histoxmodal tile" not in msg  # not one command's name when predict raises it


def test_an_unknown_option_gets_the_commands_usage_and_a_suggestion(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tile", "x.svs", "--out", "t", "--mpp-targt", "0.5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: histoxmodal tile" in err and "did you mean --mpp-target" in err
    with pytest.raises(SystemExit):
        main(["bench", "her2st", "--src", "x", "--epoch-count", "3"])
    assert "usage: histoxmodal bench her2st" in capsys.readouterr().err
    # named even when the required arguments are missing too (was: "SLIDE, --out required")
    for argv, prog in (
        (["tile", "--bogus"], "tile"),
        (["mil", "train", "--lables=x"], "mil train"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"usage: histoxmodal {prog}" in err
        assert f"histoxmodal {prog}: error: unrecognized arguments: {argv[-1]}" in err
    with pytest.raises(SystemExit):
        main(["mil", "train", "--lables=x"])
    assert "did you mean --labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a unique prefix is an option argparse accepts
        main(["tile", "--save"])
    assert "required: SLIDE, --out" in capsys.readouterr().err


def test_help_texts_show_plain_percent_signs(capsys):
    with pytest.raises(SystemExit):
        main(["mil", "--help"])
    out = capsys.readouterr().out
    assert "95 % CI" in out and "%%" not in out


def test_quiet_prints_errors_only(capsys):
    assert main(["-q", "models", "uni*"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["models", "uni*"]) == 0
    assert "uni" in capsys.readouterr().out
    assert main(["-q", "models", "zzz*"]) == 2
    assert "no registered model matches" in capsys.readouterr().err
