"""Every exception histoxmodal raises for a problem with the user's input, in one tree.

The command line turns every :class:`HistoxmodalError` into one clear line and a non-zero exit;
anything else is a bug and keeps its traceback. Two branches decide the exit code:

- :class:`UsageError` (exit 2): an option, argument, config value or registered name that
  cannot work, or a missing optional dependency: the fix is in the command.
- :class:`DataError` (exit 1): an input file that is unreadable, malformed or inconsistent with
  what it claims, or a saved run, head or dataset that no longer matches: the fix is in the data.

Each class also derives from the built-in exception a caller would expect (``ValueError``,
``OSError``, ``KeyError``, ``ImportError``, ``FileNotFoundError``), so ``except ValueError``
works too. The readers' own names (``histoxmodal.io.spatial.SpatialFormatError``, ...) are these
classes, re-exported where they are raised.
"""

from __future__ import annotations

import pickle


class HistoxmodalError(Exception):
    """Base class of the errors whose message tells the user what to change."""


# ------------------------------------------------------------------------- usage (exit 2)


class UsageError(HistoxmodalError, ValueError):
    """The command or call asked for something that cannot work; the fix is in the options."""


class ConfigError(UsageError):
    """An option or parameter has a value that cannot work."""


class UnknownNameError(ConfigError, KeyError):
    """A registered name (encoder, loss, head, tissue method, ...) that is not registered; the
    message names the close matches and every candidate. Also a ``KeyError``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(UsageError, ImportError):
    """A feature needs an optional dependency that is not installed (the message names the
    extra to install)."""


# -------------------------------------------------------------------------- data (exit 1)


class DataError(HistoxmodalError, ValueError):
    """An input file or saved artefact is unreadable, malformed or inconsistent; the message
    names the file and the fix."""


class SlideOpenError(DataError, OSError):
    """A file could not be opened as a slide (not a slide, unsupported, truncated)."""


class SlideReadError(DataError, OSError):
    """Pixels could not be read from an opened slide (corrupt or truncated tile data)."""


class MppError(DataError):
    """The pixel size (µm per pixel) is missing or implausible."""


class SpatialFormatError(DataError):
    """A spatial-omics input is malformed; the message names the file and the fix."""


class MissingSpatialFileError(SpatialFormatError, FileNotFoundError):
    """A file or folder of a spatial-omics layout is missing; the message names the folder, what
    is missing and the layouts accepted. Also a ``FileNotFoundError``."""


class RadiologyReadError(DataError):
    """A file could not be read as a radiology image (unknown format, undecodable pixels)."""


class ECGReadError(DataError):
    """A file could not be read as an ECG (not WFDB or DICOM waveform, or malformed)."""


class MissingLeadsError(DataError):
    """A record lacks leads that were asked for with ``missing_leads="error"``."""


class ReportReadError(DataError):
    """A report file or archive could not be read."""


class CohortError(DataError):
    """A cohort manifest is malformed; the message names the file, the column or row, the fix."""


class WeightsError(DataError):
    """A checkpoint cannot be loaded into the architecture; the message says why."""


class RefusedGlobal(DataError, pickle.UnpicklingError):
    """A pickled checkpoint names a global outside the allowed data types (code to run)."""


class HeadFolderError(DataError):
    """A saved head folder (``head.json`` and its arrays) is unreadable, malformed or mixed
    from two heads; the fix is to fit (or save) the head again."""


class StaleHeadError(DataError):
    """A saved head was fitted on other weights (or data) than the run now holds."""


class DatasetChangedError(DataError):
    """The dataset at a run's recorded path is not the one the run trained on."""


# ------------------------------------------------------------------------------ signals


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run; ``signum`` says which (the command line exits with
    128 + signum and says that finished work is kept)."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
