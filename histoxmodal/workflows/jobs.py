"""One runner for per-slide batch jobs: ``tile``, ``features`` and ``predict`` on slides.

A command supplies a :class:`SlideJob`: what it computes for one slide
(:meth:`SlideJob.compute`, writing into a staging folder) and how it names and compares its
records. The runner owns the rest, the same for every command:

- **inputs**: slide files and folders (:func:`~histoxmodal.io.discovery.find_slides`, or the
  job's own :meth:`SlideJob.find`), one output name each, two inputs never writing to one name;
- **identity**: a slide is its path, size and modification time (``source``): a different file
  under an old name is refused, not skipped;
- **shards**: ``shard=(K, N)`` takes items ``K, K+N, ...`` of the sorted list (SLURM arrays);
- **locks**: one process at a time works on an item (``OUT/.locks/<name><suffix>.lock``); a
  second one reports it ``busy`` and the command exits non-zero;
- **resume**: an item whose record says ``ok`` (or ``empty``) with the same identity and
  parameters is skipped; other parameters are refused without ``overwrite``;
- **staging and atomic publish**: outputs are built in a hidden ``.NAME.partial-*`` folder and
  renamed into place with their record, so a killed run never leaves an output that looks
  finished; a failed item leaves only its record (and the traceback of an unexpected error);
- **signals**: SIGINT and SIGTERM stop the run (:class:`~histoxmodal.errors.Interrupted`),
  worker processes are terminated, the items in progress leave nothing behind;
- **the summary**: one :class:`SlideResult` per item, sorted by name; :func:`exit_code`.

Signals and worker processes are in :mod:`~histoxmodal.workflows.job_control`, the output
layouts (a folder per slide, or a file and its record) in :mod:`~.job_outputs`.
"""

from __future__ import annotations

import copy
import errno
import logging
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoxmodal.errors import ConfigError, HistoxmodalError, Interrupted
from histoxmodal.fileutil import clean_stale, is_disk_error, staging_dir
from histoxmodal.io.discovery import SLIDE_SUFFIXES, find_slides, output_name, slide_identity
from histoxmodal.keys import STATUS_EMPTY, STATUS_FAILED, STATUS_OK, STATUS_SKIPPED
from histoxmodal.version import __version__
from histoxmodal.workflows.job_control import (
    LOCK_DIR,
    SlideResult,
    StopOnSignals,
    check_out_dir,
    interrupted,
    lock_for,
    run_in_processes,
)
from histoxmodal.workflows.job_outputs import FileOutput, FolderOutput, OutputLayout, read_json

log = logging.getLogger(__name__)

#: what :meth:`SlideJob.compare` may decide about an item's finished output
SKIP, REFUSE, REDO = "skip", "refuse", "redo"


@dataclass(frozen=True)
class JobItem:
    """One input of a job: its path, its output name and what it is (``slide``, or ``tiles``
    for a ``histoxmodal tile`` folder)."""

    path: Path
    name: str
    kind: str = "slide"


@dataclass
class Done:
    """What :meth:`SlideJob.compute` returns for an item that worked: ``ok``, or ``empty``
    (read fine, nothing to keep; ``reason`` says why)."""

    status: str = STATUS_OK
    count: int | None = None
    mpp: float | None = None
    mpp_source: str | None = None
    reason: str = ""


class SlideJob:
    """What one command computes for one slide; :func:`run_one` and :func:`run_jobs` do the rest.

    Subclasses set the class attributes and implement :meth:`params` and :meth:`compute`; the
    other methods have the defaults ``tile`` uses.
    """

    #: the outputs' noun in messages (``"tiles"``), and the verb after it (``"are"``)
    noun: str = "outputs"
    #: added to the lock file's name, so two commands sharing ``--out`` lock apart
    lock_suffix: str = ""
    #: the record field holding the input's identity, and the one holding the item count
    identity_key: str = "source"
    count_key: str = "n_tiles"
    #: the ``reason`` of a skipped item
    skip_reason: str = "already done"
    #: record statuses that mark a finished output
    done_statuses: tuple[str, ...] = (STATUS_OK, STATUS_EMPTY)
    #: errors recorded with their message alone; any other gets its type and traceback too
    known_errors: tuple[type[BaseException], ...] = (HistoxmodalError, OSError)
    #: a full or read-only disk stops the run (each later item would fail the same way)
    stop_on_disk_error: bool = False
    #: threads one item may use (the runner lowers it when items run in several processes)
    workers: int = 1
    #: where an item's output and record go
    layout: OutputLayout = FolderOutput()

    def find(self, inputs: Sequence[str | Path]) -> tuple[list[JobItem], list[Path]]:
        """The items named by ``inputs`` (sorted) and the input paths that do not exist."""
        slides, missing = find_slides(inputs)
        return [JobItem(p, output_name(p)) for p in slides], missing

    def nothing_found(self, inputs: Sequence[str | Path]) -> str:
        """The message when ``inputs`` hold no item."""
        return (
            f"no slides found in {', '.join(map(str, inputs))}; give slide files or folders "
            f"holding files with suffixes {' '.join(SLIDE_SUFFIXES)}"
        )

    def prepare(self) -> None:
        """Called once by :func:`run_jobs` after the inputs are found, before ``--out`` is
        created: load what every item needs (an encoder), refusing bad options."""

    def identity(self, item: JobItem) -> dict[str, Any]:
        """What identifies the input between runs (:func:`slide_identity`)."""
        return slide_identity(item.path)

    def params(self, item: JobItem) -> dict[str, Any]:
        """The settings that make one output differ from another (compared on resume)."""
        raise NotImplementedError

    def header(self, item: JobItem, identity: dict | None) -> dict[str, Any]:
        """The first fields of the item's record (``status``, version, date and ``params``
        follow)."""
        slide = identity["resolved"] if identity else str(item.path)
        return {"slide": slide, self.identity_key: identity, "name": item.name}

    def compare(
        self, previous: dict, identity: dict | None, params: dict, final: Path
    ) -> tuple[str, str]:
        """Whether to :data:`SKIP`, :data:`REFUSE` (with the reason) or :data:`REDO` an item
        whose finished record is ``previous``."""
        if not same_source(previous, identity, self.identity_key):
            was = previous.get(self.identity_key) or {"path": previous.get("slide")}
            return REFUSE, (
                f"{final} holds the {self.noun} of another slide, or of this file before it "
                f"changed ({was.get('path')}, {was.get('size', '?')} bytes); pass "
                f"--overwrite (overwrite=True) to replace it, or choose another --out"
            )
        if previous.get("params") != params:
            return REFUSE, (
                f"{final} holds output made with other parameters; pass --overwrite "
                f"(overwrite=True) to replace it, or choose another --out"
            )
        return SKIP, self.skip_reason

    def compute(self, item: JobItem, staging: Path, record: dict[str, Any]) -> Done:
        """Compute one item: write its files into ``staging`` (the runner publishes them) and
        add what describes them to ``record``. Raise to fail the item with the message."""
        raise NotImplementedError

    def explain(self, exc: Exception, reason: str) -> str:
        """The recorded reason of a failure (a hint can be added for some errors)."""
        return reason


def same_source(previous: dict, identity: dict | None, key: str = "source") -> bool:
    """Whether the record ``previous`` was made from the file ``identity`` describes (path, size,
    modification time; records older than the identity field name the resolved path only)."""
    recorded = previous.get(key)
    if identity is None:
        return False
    if recorded is None:
        return previous.get("slide") == identity.get("resolved")
    return all(recorded.get(k) == identity.get(k) for k in ("path", "size", "mtime_ns"))


def run_one(job: SlideJob, item: JobItem, out_dir: str | Path, *, overwrite: bool = False):
    """Run ``job`` on one item under its lock: skip, refuse, or compute and publish it.

    Returns
    -------
    SlideResult
        ``ok``, ``empty``, ``skipped``, ``busy`` (another process holds the lock) or ``failed``
        (``reason`` says why, also in the item's record). Known errors are recorded, not raised.

    Raises
    ------
    Interrupted
        SIGINT or SIGTERM arrived (under :func:`run_jobs`); the item leaves nothing behind.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    final = job.layout.final(out_dir, item.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_for(out_dir, item.name + job.lock_suffix)
    from filelock import Timeout

    try:
        lock.acquire()
    except Timeout:
        what = f"{job.noun} are"
        return SlideResult.busy(item.path, item.name, lock.lock_file, what, str(final))
    try:
        return _run_locked(job, item, out_dir, final, overwrite, t0)
    finally:
        lock.release()


def _run_locked(
    job: SlideJob, item: JobItem, out_dir: Path, final: Path, overwrite: bool, t0: float
) -> SlideResult:
    layout = job.layout
    foreign = layout.foreign(final)
    if foreign:  # --overwrite included: only our own output is ever replaced
        return SlideResult(str(item.path), item.name, STATUS_FAILED, reason=foreign,
                           out_dir=str(final))  # fmt: skip
    try:
        identity = job.identity(item)
    except OSError:
        identity = None  # reported as failed below, by the reader
    params = job.params(item)
    previous = read_json(layout.record_path(out_dir, item.name))
    if (
        previous is not None
        and not overwrite
        and previous.get("status") in job.done_statuses
        and layout.complete(out_dir, previous)
    ):
        verdict, reason = job.compare(previous, identity, params, final)
        if verdict == SKIP:
            return SlideResult(
                str(item.path), item.name, STATUS_SKIPPED, previous.get(job.count_key),
                previous.get("mpp"), previous.get("mpp_source"), reason, 0.0, str(final),
            )  # fmt: skip
        if verdict == REFUSE:
            return SlideResult(str(item.path), item.name, STATUS_FAILED, reason=reason,
                               out_dir=str(final))  # fmt: skip
    clean_stale(out_dir, final.name)  # left by a killed run: the lock says it is not running
    tmp = staging_dir(final)
    record: dict[str, Any] = {
        **job.header(item, identity),
        "status": STATUS_FAILED,
        "histoxmodal_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": params,
    }
    result = SlideResult(str(item.path), item.name, STATUS_FAILED, out_dir=str(final))
    try:
        done = job.compute(item, tmp, record)
        record["status"] = done.status
        result.status, result.n_tiles, result.reason = done.status, done.count, done.reason
        result.mpp, result.mpp_source = done.mpp, done.mpp_source
        result.stain = record.get("stain")
    except BaseException as exc:
        _record_failure(job, item, exc, tmp, final, record, result)
    result.seconds = time.perf_counter() - t0
    record["seconds"] = round(result.seconds, 3)
    try:
        layout.publish(tmp, final, record, ok=result.status != STATUS_FAILED)
    except OSError as exc:  # e.g. the disk is full: keep what was there, report the item
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC or result.status != STATUS_FAILED:
            result.status = STATUS_FAILED
            result.reason = f"could not write {final}: {exc}"
        else:
            result.reason += f" (and its record could not be written: {exc})"
    return result


def _record_failure(
    job: SlideJob, item: JobItem, exc: BaseException, tmp: Path, final: Path, record: dict,
    result: SlideResult,
) -> None:  # fmt: skip
    """Record ``exc`` as the item's failure, or re-raise it when it stops the run (an
    interruption, also one a library turned into another error; a full disk for some jobs)."""
    if interrupted() or not isinstance(exc, Exception):
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception):
            import signal

            raise Interrupted(signal.SIGINT) from exc
        raise exc
    if job.stop_on_disk_error and is_disk_error(exc):
        shutil.rmtree(tmp, ignore_errors=True)
        raise exc
    known = isinstance(exc, job.known_errors)
    reason = job.explain(exc, str(exc) if known else f"{type(exc).__name__}: {exc}")
    record.update({"status": STATUS_FAILED, "reason": reason})
    result.status, result.reason = STATUS_FAILED, reason
    result.mpp, result.mpp_source = record.get("mpp"), record.get("mpp_source")
    # a failed item leaves its record (and the traceback of an unexpected error) only
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if not known:
        where = job.layout.keep_traceback(tmp, final, record, traceback.format_exc())
        log.error("%s: unexpected error, traceback in %s", item.path, where)


def run_jobs(
    job: SlideJob,
    inputs: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    shard: tuple[int, int] | str | None = None,
    processes: int = 1,
    overwrite: bool = False,
    on_result: Callable[[SlideResult], None] | None = None,
) -> list[SlideResult]:
    """Run ``job`` on every item of ``inputs`` (see the module doc).

    Parameters
    ----------
    job
        What to compute for one item.
    inputs
        Files and folders (what :meth:`SlideJob.find` accepts).
    out_dir
        Output folder (created).
    shard
        ``(K, N)``, ``"K/N"`` or ``"auto"`` (:func:`parse_shard`): items ``K, K+N, ...`` only.
    processes
        With several items, up to this many worker processes, each with
        ``job.workers // processes`` threads.
    overwrite
        Redo items whose finished output was made from another file or with other settings.
    on_result
        Called with each :class:`SlideResult` as it completes (progress reporting).

    Returns
    -------
    list[SlideResult]
        One per item of the shard (and per missing input), sorted by name.

    Raises
    ------
    ConfigError
        No item found, two items would write to one name, a bad shard, or ``out_dir`` is not a
        writable folder.
    """
    from histoxmodal.progress import progress

    if isinstance(shard, str):
        shard = parse_shard(shard)
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    items, missing = job.find(inputs)
    if not items and not missing:
        raise ConfigError(job.nothing_found(inputs))
    job.prepare()
    out = check_out_dir(out_dir)
    _check_names(job, items, out)
    if shard is not None:
        k, n = shard
        items = items[k::n]
    results = [
        SlideResult(str(p), output_name(p), STATUS_FAILED, reason=f"file not found: {p}")
        for p in missing
    ]
    for r in results:
        if on_result:
            on_result(r)
    with StopOnSignals():
        if processes <= 1 or len(items) <= 1:
            for item in progress(items, total=len(items), desc="slides", unit="slide",
                                 log_items=True):  # fmt: skip
                r = run_one(job, item, out, overwrite=overwrite)
                results.append(r)
                if on_result:
                    on_result(r)
        else:
            n_proc = min(processes, len(items))
            per_process = copy.copy(job)
            per_process.workers = max(1, job.workers // n_proc)
            tasks = [(per_process, item, out, overwrite) for item in items]
            names = [job.layout.final(out, i.name).name for i in items]
            results += run_in_processes(
                run_task, tasks, names, out, n_proc, on_result,
                lock_names=[i.name + job.lock_suffix for i in items],
                describe=[(str(i.path), i.name) for i in items],
            )  # fmt: skip
    results.sort(key=lambda r: (r.name, r.slide))
    return results


def run_task(task: tuple) -> SlideResult:
    """:func:`run_one` on ``(job, item, out_dir, overwrite)``, in a worker process."""
    job, item, out_dir, overwrite = task
    return run_one(job, item, out_dir, overwrite=overwrite)


def _check_names(job: SlideJob, items: Iterable[JobItem], out: Path) -> None:
    seen: dict[str, JobItem] = {}
    for i in items:
        other = seen.setdefault(i.name, i)
        if other is not i:
            raise ConfigError(
                f"{other.path} and {i.path} would both write to {job.layout.final(out, i.name)}; "
                f"rename one or process them into different --out folders"
            )


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``"K/N"`` (0-based K) or ``"auto"`` (from SLURM array variables) into ``(K, N)``."""
    import os

    if text is None:
        return None
    if text == "auto":
        try:
            tid = int(os.environ["SLURM_ARRAY_TASK_ID"])
            lo = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            n = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                "--shard auto needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (run it as a "
                "SLURM array job), or give the shard explicitly, e.g. --shard 0/8"
            ) from exc
        return tid - lo, n
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise ConfigError(f"--shard {text!r}: expected K/N such as 0/8, or 'auto'") from exc
    if not (n >= 1 and 0 <= k < n):
        raise ConfigError(f"--shard {text!r}: need 0 <= K < N (K counts from 0)")
    return k, n


def exit_code(results: Iterable[SlideResult]) -> int:
    """``1`` when an item has no finished output (failed, or busy in another process), else
    ``0``: the exit status of a batch command."""
    return 1 if any(r.failed for r in results) else 0


__all__ = [
    "LOCK_DIR",
    "REDO",
    "REFUSE",
    "SKIP",
    "Done",
    "FileOutput",
    "FolderOutput",
    "JobItem",
    "SlideJob",
    "SlideResult",
    "check_out_dir",
    "exit_code",
    "parse_shard",
    "run_jobs",
    "run_one",
    "same_source",
]
