"""The one progress-bar helper: a tqdm bar on a terminal or in Jupyter, silent elsewhere.

:func:`progress_enabled` is the single decision every caller (workflows, the CLI, Lightning's
``enable_progress_bar``) goes through: on in an interactive terminal and in a Jupyter (IPython
kernel) session, off in CI, in pipes and log files, and when ``HISTOXMODAL_PROGRESS=0``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_FALSE = {"0", "false", "no", "off"}
_TRUE = {"1", "true", "yes", "on"}


def in_jupyter() -> bool:
    """Whether this process is a Jupyter (IPython) kernel, where stderr is not a terminal.

    Returns
    -------
    bool
        True when :mod:`ipykernel` is loaded and the running IPython shell is a kernel shell
        (``ZMQInteractiveShell`` or any shell with a ``kernel``); False in a plain Python
        process, a terminal IPython session, or when anything in the check fails.
    """
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:
        return False
    if shell is None:
        return False
    if type(shell).__name__ == "ZMQInteractiveShell":
        return True
    return getattr(shell, "kernel", None) is not None


def progress_enabled() -> bool:
    """Whether to show progress bars here.

    Returns
    -------
    bool
        False in CI (``CI`` set to a true value) and when ``HISTOXMODAL_PROGRESS`` is false;
        otherwise True when stderr is a terminal or this is a Jupyter kernel
        (:func:`in_jupyter`), False in pipes and redirected output.
    """
    if os.environ.get("CI", "").lower() in _TRUE:
        return False
    if os.environ.get("HISTOXMODAL_PROGRESS", "").lower() in _FALSE:
        return False
    try:
        tty = sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        tty = False
    return tty or in_jupyter()


def _bar_class() -> Any:
    """The tqdm class for this process: the widget bar in Jupyter with ipywidgets, else text.

    Chosen per call rather than by ``tqdm.auto`` at its import, and without ipywidgets the text
    bar on stderr, which Jupyter renders in place (``tqdm.notebook`` would fail there).
    """
    if in_jupyter() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    from tqdm.std import tqdm as std_tqdm

    return std_tqdm


#: off a terminal, a loop logs at most about this many lines (every item of a short loop)
LOG_LINES = 20


def progress(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    log_items: bool = False,
) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar when :func:`progress_enabled`.

    Elsewhere (SLURM, nohup, pipes, CI) a loop over the job's items (``log_items``: slides,
    samples) logs one INFO line as each item finishes, ``desc: 3/12 slide (41 s)``, at most
    about :data:`LOG_LINES` per loop, so a log file shows where a job is; inner loops (batches)
    run silently.
    """
    if not progress_enabled():
        if not (desc and log_items):
            yield from iterable
            return
        yield from _logged(iterable, total=total, desc=desc, unit=unit)
        return
    bar = _bar_class()
    yield from bar(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


def _logged(iterable: Iterable[T], *, total: int | None, desc: str, unit: str) -> Iterator[T]:
    import logging
    import time

    log = logging.getLogger(__name__)  # histoxmodal.progress: shown by default by the CLI
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    every = max(1, -(-total // LOG_LINES)) if total else 1
    t0 = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        yield item
        if i % every == 0 or i == total:
            of = f"/{total}" if total else ""
            log.info("%s: %d%s %s (%.0f s)", desc, i, of, unit, time.perf_counter() - t0)
