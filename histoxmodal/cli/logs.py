"""Logging and warnings of the command line: one handler, libraries' own handlers tamed.

Only the command line sets up handlers (the library only logs). Lightning's umbrella package adds
its own stderr handler at import while also propagating to the root, so every Lightning INFO line
would appear twice; its loggers are taken over here before Lightning is imported, so the one root
handler prints each line once, at the level the command line chose. Standard library only: this
module is imported on every start.
"""

from __future__ import annotations

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
