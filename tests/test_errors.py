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
