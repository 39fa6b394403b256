"""The process side of :mod:`~histoxmodal.workflows.jobs`: results, locks, the output folder
check, signals and worker processes.

SIGINT and SIGTERM raise :class:`~histoxmodal.errors.Interrupted` in the main thread while a
batch runs (:class:`StopOnSignals`); worker processes ignore SIGINT (the parent terminates them)
and exit by themselves when the parent dies (``kill -9``).
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoxmodal.errors import ConfigError, Interrupted
from histoxmodal.fileutil import clean_stale
from histoxmodal.keys import STATUS_BUSY, STATUS_EMPTY, STATUS_FAILED, STATUS_OK

#: folder of ``OUT`` that holds one lock file per item being worked on
LOCK_DIR = ".locks"


@dataclass
class SlideResult:
    """The outcome of one item of a batch job (also summarised in its record)."""

    slide: str
    name: str
    status: str
    n_tiles: int | None = None
    mpp: float | None = None
    mpp_source: str | None = None
    reason: str = ""
    seconds: float = 0.0
    out_dir: str = ""
    #: stain normalisation counts of an item computed now (``{"method", "applied", "fallback",
    #: "fallback_reasons"}``, from its record); ``None`` without normalisation or when skipped
    stain: dict[str, Any] | None = None

    @classmethod
    def busy(cls, slide, name: str, lock_file: str, what: str, out_dir: str = "") -> SlideResult:
        """The result of a slide whose lock another process holds: ``what`` (its tiles, maps,
        features) is not finished, and the command must not exit 0 as if it were."""
        return cls(
            str(slide), name, STATUS_BUSY,
            reason=f"in progress in another process (it holds {lock_file}); its {what} "
            "not finished: rerun when that process is done",
            out_dir=out_dir,
        )  # fmt: skip

    @property
    def failed(self) -> bool:
        """Whether the slide has no finished output: it failed, or another process is still
        working on it (``busy``); a pipeline must not go on as if it were done."""
        return self.status in (STATUS_FAILED, STATUS_BUSY)


def lock_for(out_dir: Path, name: str):
    """The (non-blocking) :class:`filelock.FileLock` of item ``name`` in ``out_dir``."""
    from filelock import FileLock

    (out_dir / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    return FileLock(out_dir / LOCK_DIR / f"{name}.lock", timeout=0)


def check_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and make sure files can be written there.

    Raises
    ------
    ConfigError
        ``out_dir`` is a file, cannot be created, or is not writable.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"--out {out}: cannot write there ({exc.strerror or exc}); choose a writable folder"
        ) from exc
    return out


#: set by the signal handlers of :class:`StopOnSignals`; an error raised while it is set is an
#: interruption, never a failed item
_stop = threading.Event()


def interrupted() -> bool:
    """Whether SIGINT or SIGTERM arrived while :class:`StopOnSignals` was active."""
    return _stop.is_set()


def _on_signal(signum: int, frame: object) -> None:
    _stop.set()
    raise Interrupted(signum)


class StopOnSignals:
    """SIGINT/SIGTERM raise :class:`Interrupted` in the main thread while a batch runs; the
    previous handlers are restored afterwards."""

    def __enter__(self) -> StopOnSignals:
        _stop.clear()
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, _on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _worker_init() -> None:
    """In each pool worker: leave SIGINT to the parent (which terminates the pool), and exit as
    soon as the parent is gone, so a ``kill -9`` of the parent leaves no worker behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="histoxmodal-parent-watch").start()


def _terminate(pool) -> None:
    """Stop a ``ProcessPoolExecutor`` now: its workers are terminated, not waited for."""
    stop = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    procs = list((getattr(pool, "_processes", None) or {}).values())
    if stop is not None:
        stop()
    else:
        for proc in procs:
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)
    pool.shutdown(wait=False, cancel_futures=True)


def _clean_if_free(out_dir: Path, lock_name: str, staged: str) -> None:
    """Remove the staging folders of output ``staged`` unless another process holds its lock."""
    from filelock import Timeout

    try:
        with lock_for(out_dir, lock_name):
            clean_stale(out_dir, staged)
    except Timeout:
        pass


def run_in_processes(
    fn: Callable[[tuple], SlideResult],
    tasks: Sequence[tuple],
    staged: Sequence[str],
    out_dir: Path,
    n_proc: int,
    on_result: Callable[[SlideResult], None] | None,
    *,
    lock_names: Sequence[str],
    describe: Sequence[tuple[str, str]],
) -> list[SlideResult]:
    """``fn(task)`` for each task in ``n_proc`` spawned processes. On an interruption or error
    the workers are terminated at once and the staging folders (``staged``: each task's output
    name) of the unfinished tasks removed. ``describe`` is each task's ``(slide, name)``."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from histoxmodal.progress import progress

    pool = ProcessPoolExecutor(n_proc, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    results: list[SlideResult] = []
    futs = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
    finished: set[int] = set()
    try:
        for fut in progress(
            as_completed(futs), total=len(futs), desc="slides", unit="slide", log_items=True
        ):
            i = futs[fut]
            try:
                r = fut.result()
            except BrokenProcessPool:
                r = SlideResult(
                    *describe[i], STATUS_FAILED,
                    reason="the worker process died (out of memory or a crash in a decoder); "
                    "rerun to retry this slide",
                )  # fmt: skip
            finished.add(i)
            results.append(r)
            if on_result:
                on_result(r)
    except BaseException:
        _terminate(pool)
        for i in range(len(tasks)):
            if i not in finished:
                _clean_if_free(out_dir, lock_names[i], staged[i])
        raise
    pool.shutdown()
    return results


def stain_summary(results: Sequence[SlideResult]) -> dict[str, Any] | None:
    """The stain normalisation counts of the items computed now, summed:
    ``{"method", "applied", "fallback", "fallback_reasons"}``; ``None`` without any."""
    total: dict[str, Any] | None = None
    for r in results:
        counts = r.stain if r.status in (STATUS_OK, STATUS_EMPTY) else None
        if not counts:
            continue
        if total is None:
            total = {"method": counts["method"], "applied": 0, "fallback": 0}
            total["fallback_reasons"] = {}
        total["applied"] += counts["applied"]
        total["fallback"] += counts["fallback"]
        for k, v in counts.get("fallback_reasons", {}).items():
            total["fallback_reasons"][k] = total["fallback_reasons"].get(k, 0) + v
    return total
