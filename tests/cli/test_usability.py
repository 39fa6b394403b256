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
    assert "failed: missing" in capsys.readouterr().out


def test_verbosity_after_a_nested_subcommand(root_logging):
    from histoxmodal.cli.main import build_parser, log_level, verbosity

    args = build_parser().parse_args(["bench", "retrieval", "--n", "10", "-vv"])
    assert verbosity(args) == 2 and log_level(verbosity(args)) == logging.DEBUG
