"""Logging, warnings and output streams of the command line: ``-v``/``-q`` on every parser,
one handler, libraries' own handlers tamed, the stdout of ``-q``, streams that print what the
terminal cannot encode escaped.

Only the command line sets up handlers (the library only logs). Lightning's umbrella package adds
its own stderr handler at import while also propagating to the root, so every Lightning INFO line
would appear twice; its loggers are taken over here before Lightning is imported, so the one root
handler prints each line once, at the level the command line chose. Standard library only: this
module is imported on every start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings

# Libraries that attach their own stream handlers at import time.
TAMED_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
    "torchmetrics",
)
# Advertising lines a library logs at INFO; shown only with -v.
ADVERTS = ("💡 Tip:", "💡 tip:")
FORMAT = "%(levelname)s: %(message)s"
#: the logger of progress lines (histoxmodal.progress and the per-epoch training line)
PROGRESS_LOGGER = "histoxmodal.progress"


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; the property ignores that
        pass


class _AdvertFilter(logging.Filter):
    """Drop library adverts (Lightning's "💡 Tip" lines) unless asked for with ``-v``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith(ADVERTS)


class _OwnedLogger(logging.Logger):
    """A library logger whose handlers and level the command line owns.

    Created before the library is imported, so that the ``addHandler``/``setLevel`` calls the
    library makes at import are ignored; records propagate to the one root handler.
    """

    def addHandler(self, hdlr: logging.Handler) -> None:
        pass

    def setLevel(self, level) -> None:
        pass

    def own_level(self, level: int) -> None:
        """Set the level the command line chose."""
        logging.Logger.setLevel(self, level)


def _library_logger(name: str) -> logging.Logger:
    existing = logging.Logger.manager.loggerDict.get(name)
    if isinstance(existing, logging.Logger):
        return existing
    # the library is not imported yet: create the logger as an owned one
    cls = logging.getLoggerClass()
    logging.setLoggerClass(_OwnedLogger)
    try:
        return logging.getLogger(name)
    finally:
        logging.setLoggerClass(cls)


def setup_logging(verbosity: int, level: int) -> None:
    """One stderr handler on the root at ``level``; libraries' handlers removed; warnings tamed.

    ``verbosity`` is the net ``-v`` count (negative for ``-q``). Below 1, library adverts and
    third-party deprecation warnings are hidden. Lightning's INFO lines (devices, seed, stop)
    stay visible at the default verbosity, once, and are hidden by ``-q``. Calling it again
    replaces the handler it added before.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _StderrHandler):
            root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    if verbosity < 1:
        handler.addFilter(_AdvertFilter())
    root.addHandler(handler)
    root.setLevel(level)
    library_level = min(level, logging.INFO) if verbosity >= 0 else level
    for name in TAMED_LOGGERS:
        lg = _library_logger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
        if isinstance(lg, _OwnedLogger):
            lg.own_level(library_level)
        else:
            lg.setLevel(library_level)
    # where a long job is (one line per slide, sample or epoch off a terminal) shows by
    # default, like Lightning's lines, and -q hides it
    logging.getLogger(PROGRESS_LOGGER).setLevel(library_level)
    if verbosity < 1:
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
            # our own deprecations (old option spellings, moved functions) stay visible
            warnings.filterwarnings("default", category=category, module=r"histoxmodal(\.|$)")


def add_verbosity(p: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v``/``-q`` on ``p``; a sub-command's own counts are added to the top-level ones."""
    prefix = "" if top else "sub_"
    default = 0 if top else argparse.SUPPRESS
    p.add_argument(
        "-v", "--verbose", action="count", default=default, dest=f"{prefix}verbose",
        help="more logging: -v info and library tips, -vv debug",
    )  # fmt: skip
    p.add_argument(
        "-q", "--quiet", action="count", default=default, dest=f"{prefix}quiet",
        help="less logging: -q errors only, -qq nothing but critical errors",
    )  # fmt: skip


def verbosity(args: argparse.Namespace) -> int:
    """The net ``-v`` count minus the ``-q`` count, wherever on the line they were given."""
    v = getattr(args, "verbose", 0) + getattr(args, "sub_verbose", 0)
    return v - getattr(args, "quiet", 0) - getattr(args, "sub_quiet", 0)


def log_level(verbosity: int) -> int:
    """Root logging level of a net verbosity: 0 WARNING, 1 INFO, 2+ DEBUG, -1 ERROR, -2 CRITICAL."""
    if verbosity >= 2:
        return logging.DEBUG
    return {1: logging.INFO, 0: logging.WARNING, -1: logging.ERROR}.get(verbosity, logging.CRITICAL)


class ErrorsOnly:
    """A stdout for ``-q``: passes only the lines that report a failed or busy item, to
    stderr."""

    def __init__(self, err) -> None:
        self.err, self.buf = err, ""

    def write(self, text: str) -> int:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if line.startswith(("failed: ", "busy: ")):
                self.err.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.err.flush()


def printable_streams() -> None:
    """Never fail on a character the terminal's encoding lacks (µ under ``PYTHONIOENCODING=
    ascii``, or a C locale): it is printed escaped instead of ending the run."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.errors or "strict") == "strict":
            with contextlib.suppress(ValueError, OSError):  # closed, or cannot change
                stream.reconfigure(errors="backslashreplace")
