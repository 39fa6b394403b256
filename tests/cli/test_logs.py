"""``cli/logs.py``: -v/-q wherever they are given, the quiet stdout."""

from __future__ import annotations

import io
import logging

import pytest

from histoxmodal.cli.logs import ErrorsOnly, log_level, verbosity
from histoxmodal.cli.main import build_parser


def test_verbosity_after_a_nested_subcommand():
    args = build_parser().parse_args(["bench", "retrieval", "--n", "10", "-vv"])
    assert verbosity(args) == 2 and log_level(verbosity(args)) == logging.DEBUG


@pytest.mark.parametrize(
    ("net", "level"),
    [(3, logging.DEBUG), (2, logging.DEBUG), (1, logging.INFO), (0, logging.WARNING),
     (-1, logging.ERROR), (-2, logging.CRITICAL), (-5, logging.CRITICAL)],
)  # fmt: skip
def test_log_level_of_a_net_verbosity(net, level):
    assert log_level(net) == level


def test_errors_only_passes_failed_and_busy_lines_whole_to_stderr():
    err = io.StringIO()
    out = ErrorsOnly(err)
    out.write("slide  status\nfailed: a.svs: unreadable\nbu")
    assert err.getvalue() == "failed: a.svs: unreadable\n"  # the partial line waits
    out.write("sy: b.svs: locked\nok: c.svs\n")
    assert err.getvalue() == "failed: a.svs: unreadable\nbusy: b.svs: locked\n"
