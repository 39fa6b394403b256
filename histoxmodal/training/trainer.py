"""The Lightning loop every training run shares: one ``Trainer`` factory and one fit call.

The workflow layer (:mod:`histoxmodal.workflows.train`) decides what goes into a run folder;
this module only runs Lightning inside it (its logs and checkpoints) and writes weights files.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from histoxmodal import keys
from histoxmodal.errors import ConfigError, WeightsError
from histoxmodal.fileutil import apply_umask

log = logging.getLogger(__name__)

#: in the environment of the processes Lightning starts for a multi-device fit: the pid of the
#: process that runs ``fit``, so each of them can die with it (:func:`die_with_parent`)
PARENT_PID_ENV = "HISTOXMODAL_FIT_PARENT_PID"


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> ``bf16-mixed`` / ``16-mixed`` on CUDA (by bf16 support), ``32-true`` else."""
    if precision != "auto":
        return precision
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def check_max_epochs(max_epochs: int | None, optim) -> int:
    """The epochs a run trains: ``max_epochs``, or the config's when it is ``None``; zero,
    negative or fractional counts are refused."""
    epochs = optim.max_epochs if max_epochs is None else max_epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        where = "max_epochs" if max_epochs is not None else "optim.max_epochs"
        raise ConfigError(f"{where}={epochs!r}: expected an integer >= 1 (epochs to train)")
    return epochs


def check_devices(devices: int | str, *, accelerator: str | None = None) -> int | str:
    """``devices`` as Lightning takes it: ``"auto"``, a count ``>= 1``, ``-1`` (all) or a list
    of device indices such as ``"0,1"``; digits given as a string become an int.

    With ``accelerator`` (``"cpu"``, or ``"auto"`` on a machine without a GPU) a count above
    ``os.cpu_count()`` is refused: Lightning starts one training process per CPU "device"."""
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices >= 1 or devices == -1:
            if accelerator is not None and devices > 1:
                _check_cpu_devices(devices, accelerator)
            return devices
    elif isinstance(devices, str):
        d = devices.strip()
        if d == "auto":
            return d
        if d.lstrip("-").isdigit():
            return check_devices(int(d), accelerator=accelerator)
        if re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", d):
            return d
    raise ConfigError(
        f"devices={devices!r}: expected auto, a number of devices >= 1, -1 (all) or device "
        "indices such as 0,1"
    )


def _check_cpu_devices(devices: int, accelerator: str) -> None:
    cores = os.cpu_count() or 1
    if devices <= cores or accelerator not in ("cpu", "auto"):
        return
    if accelerator == "auto":
        import torch

        mps = getattr(torch.backends, "mps", None)
        if torch.cuda.is_available() or (mps is not None and mps.is_available()):
            return  # Lightning trains on the GPUs, and says itself when there are too few
    raise ConfigError(
        f"devices={devices}: training on the CPU starts one process per device, and this "
        f"machine has {cores} CPU cores; give at most --devices {cores} (usually 1: one "
        "process already uses every core), or train on a GPU machine"
    )


def die_with_parent(parent_pid: int) -> bool:
    """Make this process receive SIGKILL when the process that started it exits (Linux's
    ``prctl(PR_SET_PDEATHSIG)``), so no training process outlives a killed ``fit``.

    Exits at once when ``parent_pid`` is already gone (it died before this call). Returns whether
    the kernel took the request (``False`` off Linux, where nothing is done).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError) as exc:
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
        return False
    if os.getppid() != parent_pid:  # the parent died before the request above was in place
        print(
            f"histoxmodal: the training process {parent_pid} that started this one "
            f"(pid {os.getpid()}) has exited; stopping",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)
    return ok


def die_with_fit_parent() -> None:
    """In a process Lightning started for a multi-device fit (it inherited
    :data:`PARENT_PID_ENV` from the ``fit`` that started it): die with that process."""
    parent = os.environ.get(PARENT_PID_ENV, "")
    if parent.isdigit() and int(parent) != os.getpid():
        die_with_parent(int(parent))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every random generator is reset to when epoch ``epoch`` starts."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**32)


def _reseed_each_epoch_callback(seed: int):
    """A callback that resets every random generator (Python, NumPy, torch, data-loader
    workers) to :func:`epoch_seed` when an epoch starts, before its data order is drawn.

    A run resumed from ``last.ckpt`` (written at the end of an epoch) then draws the same
    shuffles, augmentations and dropout masks as an uninterrupted run: together with the
    weights, optimizer, scheduler and loop state that Lightning restores, it trains the same
    model (tests/workflows/test_train.py checks it to float tolerance).
    """
    from lightning.pytorch.callbacks import Callback

    class ReseedEachEpoch(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            import lightning as L

            L.seed_everything(epoch_seed(seed, trainer.current_epoch), workers=True, verbose=False)

    return ReseedEachEpoch()


def atomic_checkpoint_io():
    """Lightning's checkpoint writer, made atomic: each checkpoint goes to a ``.partial`` file
    renamed into place, so a full disk or a kill mid-write leaves the previous ``last.ckpt``
    whole instead of a truncated one."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            path = Path(path)
            tmp = path.with_name(f".{path.name}.partial")
            try:
                super().save_checkpoint(checkpoint, tmp, storage_options)
                apply_umask(tmp)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    return AtomicCheckpointIO()


def _is_loss(name: str) -> bool:
    return name.endswith("loss") and name.startswith(("train/", "val/"))


def epoch_log_callback(shown: Callable[[str], bool] = _is_loss):
    """Off a terminal (no progress bar): one INFO line per epoch with its losses (the logged
    metrics ``shown`` selects by name), so a SLURM or nohup log shows where training is."""
    import time

    from lightning.pytorch.callbacks import Callback

    class EpochLog(Callback):
        t0 = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.is_global_zero:
                return
            values = [
                f"{k} {float(v):.4f}"
                for k, v in sorted(trainer.callback_metrics.items())
                if shown(k)
            ]
            logging.getLogger("histoxmodal.progress").info(
                "epoch %d/%d: %s (%.1f s)",
                trainer.current_epoch + 1, trainer.max_epochs,
                ", ".join(values) or "no loss logged", time.perf_counter() - self.t0,
            )  # fmt: skip

    return EpochLog()


def checkpoint_position(path: str | Path) -> tuple[int, int]:
    """``(epoch, global_step)`` stored in a Lightning checkpoint, read with
    ``torch.load(weights_only=True)``.

    Raises
    ------
    WeightsError
        The file is truncated, not a checkpoint, or carries objects other than tensors and
        plain data (a pickle payload is refused by ``weights_only``).
    """
    import torch

    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return int(ckpt["epoch"]), int(ckpt["global_step"])
    except Exception as exc:  # torch raises many types for a bad or hostile file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(
            f"--resume: {path} is not a readable checkpoint of this run ({first}); it is "
            "truncated, corrupt or not written by histoxmodal. Train again without --resume "
            "into a new --out"
        ) from exc


def _check_accelerator(accelerator: str) -> None:
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        mps = getattr(torch.backends, "mps", None)
        if accelerator == "gpu" and mps is not None and mps.is_available():
            return
        raise ConfigError(
            f"accelerator={accelerator!r}: this machine has no usable GPU "
            "(torch.cuda.is_available() is False); use --accelerator cpu or auto"
        )


def make_trainer(
    root: Path,
    optim,
    *,
    max_epochs: int | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    enable_progress_bar: bool = False,
    resume: bool = False,
):
    """The Lightning ``Trainer`` of every training run: CSV and TensorBoard logs under ``root``,
    checkpoints in ``root/checkpoints`` (``last.ckpt`` for resuming), precision and gradient
    accumulation from ``optim`` (:class:`~histoxmodal.training.config.OptimConfig`).

    ``max_epochs=None`` trains the config's epochs. With ``resume`` the rows already in
    ``csv/metrics.csv`` are kept and the resumed epochs appended. Options Lightning cannot use
    here (no GPU, bad ``devices``) raise :class:`~histoxmodal.errors.ConfigError`; nothing is
    written under ``root`` until ``fit``.
    """
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from histoxmodal.training.callbacks import DieWithParent

    # a process Lightning started by running the command line again gets here before its
    # distributed set-up, where it would otherwise wait for a dead parent
    die_with_fit_parent()
    epochs = check_max_epochs(max_epochs, optim)
    devices = check_devices(devices, accelerator=accelerator)
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ConfigError(f"num_nodes={num_nodes!r}: expected an integer >= 1")
    _check_accelerator(accelerator)
    if resume:
        epoch, _ = checkpoint_position(last_checkpoint(root))
        csv_logger = _appending_csv_logger(keep_epochs=epoch)(root, name="csv", version="")
    else:
        csv_logger = CSVLogger(root, name="csv", version="")
    try:
        return L.Trainer(
            default_root_dir=root,
            max_epochs=epochs,
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            precision=resolve_precision(optim.precision, accelerator),
            accumulate_grad_batches=optim.accumulate,
            log_every_n_steps=1,
            logger=[csv_logger, TensorBoardLogger(root, name="tensorboard", version="")],
            callbacks=[
                # only last.ckpt, always under that name: a copied or moved run would otherwise
                # write last-v1.ckpt beside the stale one and the next resume read the stale one
                ModelCheckpoint(
                    dirpath=root / keys.RUN_CHECKPOINT_DIR,
                    save_last=True,
                    enable_version_counter=False,
                ),
                DieWithParent(),  # its setup runs in every process of the fit
                _reseed_each_epoch_callback(optim.seed),
                *([] if enable_progress_bar else [epoch_log_callback()]),
            ],
            enable_progress_bar=enable_progress_bar,
            enable_model_summary=False,
            plugins=[atomic_checkpoint_io()],
        )
    except (MisconfigurationException, ValueError, TypeError, ImportError) as exc:
        raise _lightning_error(exc, accelerator, devices, num_nodes) from exc


def _lightning_error(exc: Exception, accelerator, devices, num_nodes) -> ConfigError:
    msg = " ".join(str(exc).split())
    return ConfigError(
        f"Lightning cannot train with accelerator={accelerator!r}, devices={devices!r}, "
        f"num_nodes={num_nodes}: {msg}"
    )


def _appending_csv_logger(keep_epochs: int):
    """A ``CSVLogger`` that keeps the rows already in ``metrics.csv`` (Lightning's deletes
    the file when it opens the folder): a resumed run appends its epochs to the earlier ones.

    Only rows of epochs ``<= keep_epochs`` (those the checkpoint holds) are kept: a run killed
    during a later epoch logged steps that the resumed run trains again."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.loggers.logger import rank_zero_experiment

    class AppendingWriter(ExperimentWriter):
        def __init__(self, log_dir: str) -> None:
            path = Path(log_dir) / self.NAME_METRICS_FILE
            rows = []
            if path.is_file():
                with path.open(newline="", encoding="utf-8") as f:
                    rows = [
                        {k: v for k, v in r.items() if v != ""}
                        for r in csv.DictReader(f)
                        if _epoch_of(r) <= keep_epochs
                    ]
            with warnings.catch_warnings():
                # "previous log files will be deleted": they are written back just below
                warnings.filterwarnings("ignore", message=".*log files in this directory")
                super().__init__(log_dir)
            if rows:
                # written back at once, so a resume killed before its first flush loses nothing
                self.metrics = rows
                self.save()

    class AppendingCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return AppendingCSVLogger


def _epoch_of(row: dict[str, str]) -> float:
    try:
        return float(row.get("epoch") or "nan")
    except ValueError:
        return float("nan")


def last_checkpoint(root: str | Path) -> Path:
    """Where :func:`make_trainer` keeps the checkpoint a resumed run continues from."""
    return Path(root) / keys.RUN_CHECKPOINT_DIR / keys.RUN_LAST_CHECKPOINT


def fit_module(
    module, train_dl, val_dl, root: Path, optim, *, resume: bool, trainer=None, **trainer_kw
) -> bool:
    """Fit ``module`` with ``trainer`` (default a new :func:`make_trainer` in ``root``),
    continuing its last checkpoint when ``resume``. Returns whether this process is the main
    one (the one that writes outputs)."""
    if trainer is None:
        trainer = make_trainer(root, optim, resume=resume, **trainer_kw)
    ckpt = str(last_checkpoint(root)) if resume else None
    # the processes Lightning starts for other devices inherit the variable and die with this
    # one (see make_trainer); set only while fitting, so no later process mistakes it as its own
    own = PARENT_PID_ENV not in os.environ
    if own:
        os.environ[PARENT_PID_ENV] = str(os.getpid())
    try:
        with sigterm_interrupts():
            trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt)
    finally:
        if own:
            os.environ.pop(PARENT_PID_ENV, None)
    return bool(trainer.is_global_zero)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Turn Lightning's reaction to SIGTERM into :class:`~histoxmodal.errors.Interrupted`.

    Lightning stops a fit on SIGTERM (SLURM preemption, ``kill``) by raising
    ``SIGTERMException``, a ``SystemExit`` without a code: the process would exit 0 as if
    training had finished. Raised instead, ``Interrupted(SIGTERM)`` makes the command line say
    the run was interrupted and exit 143; the last checkpoint is kept for ``--resume``.
    """
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from histoxmodal.errors import Interrupted

    try:
        yield
    except SIGTERMException:
        raise Interrupted(signal.SIGTERM) from None


def save_weights(module, path: str | Path) -> None:
    """Write the module's state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.partial")
    save_file(state, tmp)
    apply_umask(tmp)  # safetensors creates files 0600
    os.replace(tmp, path)


def load_weights(module, path: str | Path):
    """Load a safetensors state dict written by :func:`save_weights` into ``module``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({' '.join(str(exc).split())}); the run "
            "is incomplete or corrupt: train it again (or --resume it from its checkpoint)"
        ) from exc
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise WeightsError(
            f"{path}: the weights do not fit the run's config.json ({first}); the run is "
            "incomplete or corrupt"
        ) from exc
    return module
