"""``cli/main.py``: the table of commands and the known errors mapped to exit codes."""

from __future__ import annotations

import argparse
import ast
import errno
import sys
from pathlib import Path

import pytest

from histoxmodal.cli.main import COMMANDS, build_parser, main

CLI = Path(__file__).resolve().parents[2] / "histoxmodal" / "cli"


def _command_modules() -> set[str]:
    """The modules of cli/ that define ``add_parser``: one per command."""
    found = set()
    for path in CLI.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.FunctionDef) and n.name == "add_parser" for n in tree.body):
            found.add(f"histoxmodal.cli.{path.stem}")
    return found


def test_the_parser_lists_the_commands_in_table_order():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [c.NAME for c in COMMANDS]
    assert all(callable(c.run) and callable(c.add_parser) for c in COMMANDS)


def test_every_command_module_is_in_the_table_and_the_cli_contracts():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib")
    import tomllib

    modules = _command_modules()
    assert {c.__name__ for c in COMMANDS} == modules
    pyproject = tomllib.loads((CLI.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = {c["id"]: c for c in pyproject["tool"]["importlinter"]["contracts"]}
    assert set(contracts["cli-commands-independent"]["modules"]) == modules
    layers = contracts["cli-layers"]["layers"]
    layer = {f"histoxmodal.cli.{m.strip()}" for m in layers[1].split(":")}
    assert layer == modules


def test_a_read_only_or_full_disk_is_one_line(monkeypatch, tmp_path, capsys):
    import histoxmodal.cli.tile as tile_cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.h5"))

    monkeypatch.setattr(tile_cli, "run", full)
    assert main(["tile", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the disk is full" in err and "x.h5" in err

    def read_only(args):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out"))

    monkeypatch.setattr(tile_cli, "run", read_only)
    assert main(["tile", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "read-only" in capsys.readouterr().err


def test_known_errors_are_one_line_and_an_exit_code(monkeypatch, tmp_path, capsys):
    import histoxmodal.cli.tile as tile_cli
    from histoxmodal.errors import ConfigError

    argv = ["tile", str(tmp_path), "--out", str(tmp_path / "out")]
    for exc, code, text in [
        (ConfigError("--overlap 300: too large"), 2, "histoxmodal: error: --overlap 300"),
        (FileNotFoundError("no such slide: x.svs"), 2, "no such slide: x.svs"),
        (KeyboardInterrupt(), 130, "interrupted (SIGINT); finished work is kept"),
    ]:

        def raises(args, exc=exc):
            raise exc

        monkeypatch.setattr(tile_cli, "run", raises)
        assert main(argv) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err, err

    def other(args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(tile_cli, "run", other)
    with pytest.raises(OSError, match="Input/output"):  # not known: the traceback is kept
        main(argv)


def test_quiet_stdout_is_restored_after_the_command(monkeypatch, tmp_path, capsys):
    import histoxmodal.cli.tile as tile_cli

    stdout = sys.stdout

    def prints(args):
        assert sys.stdout is not stdout  # -q: the errors-only stream
        print("slide  status\nfailed: a.svs: unreadable")
        return 1

    monkeypatch.setattr(tile_cli, "run", prints)
    assert main(["-q", "tile", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert sys.stdout is stdout
    assert capsys.readouterr() == ("", "failed: a.svs: unreadable\n")
