"""The Lightning loop's guards: no more CPU processes than cores, and no training process that
outlives the one that started it (issue 26, item 11)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from histoxmodal.errors import ConfigError
from histoxmodal.training.trainer import PARENT_PID_ENV, check_devices, die_with_parent

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
CORES = os.cpu_count() or 1


def test_more_cpu_devices_than_cores_is_refused():
    with pytest.raises(ConfigError, match=rf"devices={CORES + 1}: .* {CORES} CPU cores"):
        check_devices(CORES + 1, accelerator="cpu")
    with pytest.raises(ConfigError, match=rf"give at most --devices {CORES}"):
        check_devices(str(CORES + 98), accelerator="cpu")
    assert check_devices(str(CORES), accelerator="cpu") == CORES
    assert check_devices(1, accelerator="cpu") == 1
    assert check_devices(CORES + 1) == CORES + 1  # the accelerator unknown: Lightning decides


def test_auto_accelerator_counts_cores_only_without_a_gpu():
    torch = pytest.importorskip("torch")
    mps = getattr(torch.backends, "mps", None)
    if torch.cuda.is_available() or (mps is not None and mps.is_available()):
        assert check_devices(CORES + 1, accelerator="auto") == CORES + 1
    else:
        with pytest.raises(ConfigError, match=f"devices={CORES + 1}"):
            check_devices(CORES + 1, accelerator="auto")
    assert check_devices(CORES + 1, accelerator="gpu") == CORES + 1  # Lightning's own check


def _state(pid: int) -> str | None:
    """``/proc/<pid>`` state letter, ``None`` once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[0]


def _gone(pid: int, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _state(pid) in (None, "Z", "X"):
            return True
        time.sleep(0.1)
    return False


CHILD = """
import sys, time
from histoxmodal.training.trainer import die_with_parent
assert die_with_parent(int(sys.argv[1]))
print("ready", flush=True)
time.sleep(120)
"""

MIDDLE = f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}, str(os.getpid())],
                         stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
time.sleep(120)
"""


@linux_only
def test_a_child_dies_with_its_parent_on_kill_9():
    """The second ``--devices 2`` process lived 1-2 minutes after kill -9 of the main one."""
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        line = middle.stdout.readline().strip()
        assert line.isdigit(), f"the child did not start: {line!r}"
        child = int(line)
        assert _state(child) not in (None, "Z")
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait(timeout=10)
        assert _gone(child), f"process {child} outlived its killed parent {middle.pid}"
    finally:
        middle.kill()
        middle.wait()
        if child is not None and _state(child) not in (None, "Z", "X"):
            os.kill(child, signal.SIGKILL)


@linux_only
def test_a_child_whose_parent_is_already_gone_exits():
    code = "from histoxmodal.training.trainer import die_with_parent; die_with_parent(999999999)"
    res = subprocess.run(
        [sys.executable, "-c", code + "; print('still here')"], capture_output=True, text=True
    )
    assert res.returncode == 1 and "still here" not in res.stdout
    assert "the training process 999999999 that started this one" in res.stderr


PDEATHSIG = """
import ctypes, os
from histoxmodal.training.config import OptimConfig
from histoxmodal.training.trainer import make_trainer
make_trainer(__import__("pathlib").Path(os.environ["ROOT"]), OptimConfig(), accelerator="cpu",
             devices=1)
sig = ctypes.c_int(0)
ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
print(sig.value)
"""


@linux_only
def test_a_process_lightning_starts_for_a_device_is_tied_to_the_fit(tmp_path):
    """Lightning starts the other devices' processes by running the command line again, with
    the fitting process's environment: such a process asks for SIGKILL when that one dies."""
    pytest.importorskip("lightning")
    env = {**os.environ, "ROOT": str(tmp_path), PARENT_PID_ENV: str(os.getpid())}
    res = subprocess.run(
        [sys.executable, "-c", PDEATHSIG], capture_output=True, text=True, env=env, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == str(int(signal.SIGKILL))
    # an ordinary process (no fit above it) is left alone
    env.pop(PARENT_PID_ENV)
    res = subprocess.run([sys.executable, "-c", PDEATHSIG], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == "0"


def test_the_fit_names_its_process_only_while_fitting(tmp_path):
    from histoxmodal.training.trainer import fit_module

    seen = []

    class FakeTrainer:
        is_global_zero = True

        def fit(self, *args, **kwargs):
            seen.append(os.environ.get(PARENT_PID_ENV))

    assert PARENT_PID_ENV not in os.environ
    assert fit_module(None, None, None, tmp_path, None, resume=False, trainer=FakeTrainer())
    assert seen == [str(os.getpid())] and PARENT_PID_ENV not in os.environ


def test_die_with_parent_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert die_with_parent(os.getppid()) is False


def test_every_trainer_ties_its_processes_to_the_fit_and_pickles_for_ddp_spawn(tmp_path):
    import pickle

    pytest.importorskip("lightning")
    from histoxmodal.training.callbacks import DieWithParent
    from histoxmodal.training.config import OptimConfig
    from histoxmodal.training.trainer import make_trainer

    trainer = make_trainer(tmp_path, OptimConfig(), accelerator="cpu", devices=1)
    tied = [c for c in trainer.callbacks if isinstance(c, DieWithParent)]
    assert len(tied) == 1
    assert isinstance(pickle.loads(pickle.dumps(tied[0])), DieWithParent)
