"""One error tree: every exception class lives in histoxmodal.errors, usage and data errors are
different branches, and the command line maps them to exit 2 and exit 1."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import histoxmodal.errors as errors
from histoxmodal.errors import ConfigError, DataError, UnknownNameError, UsageError

PACKAGE = Path(errors.__file__).parent


def _exception_classes_outside_errors() -> list[str]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Interrupt")) for b in bases):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    return found


def test_every_exception_class_is_defined_in_errors():
    assert _exception_classes_outside_errors() == []


def test_usage_and_data_errors_are_separate_branches():
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.HistoxmodalError)
    ]
    leaves = [c for c in classes if c not in (errors.HistoxmodalError, UsageError, DataError)]
    assert len(leaves) >= 15
    for cls in leaves:  # exactly one branch each
        assert issubclass(cls, UsageError) != issubclass(cls, DataError), cls
    assert issubclass(errors.SpatialFormatError, DataError)
    assert issubclass(errors.MissingSpatialFileError, FileNotFoundError)
    assert issubclass(errors.SlideOpenError, OSError)
    assert issubclass(ConfigError, UsageError) and issubclass(
        errors.MissingDependencyError, UsageError
    )
    # the readers' names are the same classes
    from histoxmodal.io.spatial import SpatialFormatError

    assert SpatialFormatError is errors.SpatialFormatError


def test_an_unknown_registered_name_is_one_error_naming_the_candidates():
    from histoxmodal.losses import create_loss

    with pytest.raises(UnknownNameError) as err:
        create_loss("clp")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, KeyError)
    msg = str(err.value)
    assert msg.startswith("unknown loss 'clp'.") and "Did you mean 'clip'" in msg
    assert "Available: " in msg and "symile" in msg


def test_the_cli_exits_1_for_bad_data_and_2_for_a_bad_option(data_dir, tmp_path, capsys):
    import shutil

    from histoxmodal.cli.main import main

    pytest.importorskip("scvi")
    src = tmp_path / "her2st"
    (src / "counts").mkdir(parents=True)
    (src / "spots").mkdir()
    shutil.copy(data_dir / "her2st" / "spots" / "A1_selection.tsv", src / "spots")
    (src / "counts" / "A1.tsv.gz").write_bytes(b"\x1f\x8b\x08\x00broken")  # a truncated gzip
    out = tmp_path / "gene_model"
    code = main(["pretrain-genes", "--src", str(src), "--model", "scvi", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and "A1.tsv.gz" in err and "copy it again" in err
    with pytest.raises(SystemExit) as usage:  # argparse's own usage error
        main(["pretrain-genes", "--src", str(src), "--model", "scvy", "--out", str(out)])
    assert usage.value.code == 2
    # a bad value the parser cannot see: a usage error raised by the workflow
    capsys.readouterr()
    code = main(["pretrain-genes", "--src", str(src), "--recipe", "h5ad", "--out", str(out)])
    assert code == 2 and "no .h5ad files" in capsys.readouterr().err


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def _one_line(capsys, *needles) -> str:
    err = capsys.readouterr().err
    assert err.startswith("histoxmodal: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def test_bad_data_files_exit_1_and_a_bad_option_still_exits_2(tmp_path, capsys):
    """Issue 29 item 5: a corrupt saved head, a malformed input table, a file that is not a
    slide and a refused pickle global in a checkpoint are bad data (exit 1, they exited 2
    before), through the real command line; a bad option value stays a usage error (exit 2)."""
    import numpy as np
    from PIL import Image

    from histoxmodal.cli.main import main

    # a MIL run whose head folder holds a corrupt head.json (a truncated write)
    run, feats = tmp_path / "mil_run", tmp_path / "feats"
    (run / "head").mkdir(parents=True)
    (run / "mil.json").write_text("{}")
    (run / "head" / "head.json").write_text('{"format_version": 1, "he')
    feats.mkdir()
    (feats / "s1.h5").write_bytes(b"")
    argv = ["mil", "predict", str(run), str(feats), "--out", str(tmp_path / "calls.csv")]
    assert main(argv) == 1
    _one_line(capsys, "head.json is not valid JSON")

    # a malformed --mpp-csv table (an mpp that is not a number) for `tile`
    png = tmp_path / "slide.png"
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(png)
    table = tmp_path / "mpp.csv"
    table.write_text("slide,mpp\nslide.png,abc\n")
    tile = ["tile", str(png), "--out", str(tmp_path / "tiles"), "--min-tissue", "0"]
    assert main([*tile, "--mpp-csv", str(table)]) == 1
    _one_line(capsys, "line 2: mpp 'abc' of slide.png is not a positive")

    # a text file named like a slide
    text = tmp_path / "text.svs"
    text.write_text("not a slide\n")
    assert main(["bench", "tiling", str(text)]) == 1
    _one_line(capsys, "text.svs")

    # a bad option value: still a usage error
    assert main([*tile, "--mpp", "0.5", "--workers", "0"]) == 2
    _one_line(capsys, "--workers 0")


def test_a_refused_pickle_global_in_a_gene_model_exits_1(tmp_path, capsys):
    """A scvi-tools ``model.pt`` that names os.system is refused, not run: a WeightsError
    (exit 1), through `train` with ``model.gene_weights``."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("lightning")
    import yaml

    from histoxmodal.cli.main import main
    from histoxmodal.errors import WeightsError
    from histoxmodal.testing.paired import make_paired_dataset

    evil = tmp_path / "gene_model"
    evil.mkdir()
    torch.save({"model_state_dict": {}, "attr_dict": {"x": _Boom()}}, evil / "model.pt")
    from histoxmodal.encoders.scvi_models import read_saved_model

    with pytest.raises(WeightsError, match="refused global"):
        read_saved_model(evil)
    data = make_paired_dataset(tmp_path / "data", spots_per_sample=16, n_genes=20)
    cfg = tmp_path / "cfg.yaml"
    model = {"image_encoder": "test_uni", "gene_encoder": "gene_scvi", "gene_weights": str(evil)}
    optim = {"batch_size": 8, "max_epochs": 1, "num_workers": 0}
    cfg.write_text(yaml.safe_dump({"genes": None, "model": model, "optim": optim}))
    argv = ["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run")]
    assert main([*argv, "--accelerator", "cpu", "--devices", "1"]) == 1
    _one_line(capsys, "refused global", "histoxmodal reads only data from it")
