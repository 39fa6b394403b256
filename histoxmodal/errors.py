"""Exceptions for problems with the user's input.

The command line turns every :class:`HistoxmodalError` into one clear line and a non-zero exit;
anything else is a bug and keeps its traceback. Each class also derives from the built-in
exception a caller would expect (``ValueError``, ``OSError``), so ``except ValueError`` works too.
"""

from __future__ import annotations


class HistoxmodalError(Exception):
    """Base class of the errors whose message tells the user what to change."""


class SlideOpenError(HistoxmodalError, OSError):
    """A file could not be opened as a slide (not a slide, unsupported, truncated)."""


class SlideReadError(HistoxmodalError, OSError):
    """Pixels could not be read from an opened slide (corrupt or truncated tile data)."""


class MppError(HistoxmodalError, ValueError):
    """The pixel size (µm per pixel) is missing or implausible."""


class ConfigError(HistoxmodalError, ValueError):
    """An option or parameter has a value that cannot work."""


class StaleHeadError(HistoxmodalError, ValueError):
    """A saved head was fitted on other weights (or data) than the run now holds."""


class DatasetChangedError(HistoxmodalError, ValueError):
    """The dataset at a run's recorded path is not the one the run trained on."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run; ``signum`` says which (the command line exits with
    128 + signum and says that finished work is kept)."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
