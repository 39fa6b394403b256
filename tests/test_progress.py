"""progress_enabled: bars on a terminal and in Jupyter, none in pipes or CI (issue 13)."""

from __future__ import annotations

import io
import sys
import types

import pytest

from histoxmodal import progress as progress_mod
from histoxmodal.progress import in_jupyter, progress, progress_enabled


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


class ZMQInteractiveShell:
    """Named like ipykernel's shell; what get_ipython() returns inside a kernel."""

    kernel = object()


class TerminalInteractiveShell:
    """Named like IPython's terminal shell: no kernel."""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    """No CI, no override, no kernel; returns a helper to set stderr (tty or pipe)."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("HISTOXMODAL_PROGRESS", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))

    def stderr(tty: bool) -> _Stream:
        s = _Stream(tty)
        monkeypatch.setattr(sys, "stderr", s)
        return s

    return stderr


def _kernel(monkeypatch: pytest.MonkeyPatch, shell: object) -> None:
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


def _run(n: int = 5) -> list[int]:
    return list(progress(range(n), total=n, desc="tiling", unit="tile"))


def test_tty_shows_a_bar(env) -> None:
    err = env(tty=True)
    assert progress_enabled()
    assert _run() == [0, 1, 2, 3, 4]
    assert "tiling" in err.getvalue() and "0/5 [" in err.getvalue()


def test_pipe_is_quiet(env) -> None:
    err = env(tty=False)
    assert not in_jupyter()
    assert not progress_enabled()
    assert _run() == [0, 1, 2, 3, 4]
    assert "/5 [" not in err.getvalue()  # no bar (off a terminal, log lines instead)


def test_jupyter_kernel_shows_a_bar(env, monkeypatch: pytest.MonkeyPatch) -> None:
    err = env(tty=False)  # ipykernel's stderr is not a terminal
    _kernel(monkeypatch, ZMQInteractiveShell())
    assert in_jupyter()
    assert progress_enabled()
    monkeypatch.setattr(progress_mod.importlib.util, "find_spec", lambda name: None)
    assert _run() == [0, 1, 2, 3, 4]  # without ipywidgets: the text bar on stderr
    assert "tiling" in err.getvalue() and "0/5 [" in err.getvalue()


def test_jupyter_with_ipywidgets_uses_the_widget_bar(env, monkeypatch) -> None:
    env(tty=False)
    _kernel(monkeypatch, ZMQInteractiveShell())
    monkeypatch.setattr(progress_mod.importlib.util, "find_spec", lambda name: object())
    from tqdm.notebook import tqdm as notebook_tqdm

    assert progress_mod._bar_class() is notebook_tqdm


def test_any_shell_with_a_kernel_counts(env, monkeypatch: pytest.MonkeyPatch) -> None:
    env(tty=False)
    colab_like = types.SimpleNamespace(kernel=object())
    _kernel(monkeypatch, colab_like)
    assert in_jupyter()


def test_terminal_ipython_is_not_a_kernel(env, monkeypatch: pytest.MonkeyPatch) -> None:
    err = env(tty=False)
    _kernel(monkeypatch, TerminalInteractiveShell())  # ipykernel imported, terminal shell
    assert not in_jupyter()
    assert not progress_enabled()
    _run()
    assert "/5 [" not in err.getvalue()  # no bar (off a terminal, log lines instead)


def test_a_failing_get_ipython_is_not_a_kernel(env, monkeypatch: pytest.MonkeyPatch) -> None:
    env(tty=False)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))

    def boom():
        raise RuntimeError("no shell")

    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=boom))
    assert not in_jupyter()


@pytest.mark.parametrize("value", ["true", "1", "TRUE", "yes"])
def test_ci_with_a_kernel_is_quiet(env, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    err = env(tty=True)
    _kernel(monkeypatch, ZMQInteractiveShell())
    monkeypatch.setenv("CI", value)
    assert in_jupyter()
    assert not progress_enabled()
    _run()
    assert "/5 [" not in err.getvalue()  # no bar (off a terminal, log lines instead)


def test_override_off(env, monkeypatch: pytest.MonkeyPatch) -> None:
    err = env(tty=True)
    monkeypatch.setenv("HISTOXMODAL_PROGRESS", "0")
    assert not progress_enabled()
    _run()
    assert "/5 [" not in err.getvalue()  # no bar (off a terminal, log lines instead)


def test_demo_cli_asks_progress_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli demo passes the one decision to the workflow, not sys.stderr.isatty()."""
    import argparse

    import histoxmodal.workflows.demo as demo_wf
    from histoxmodal.cli import demo as demo_cli

    seen: dict[str, object] = {}

    def fake_demo(out, **kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(demo_wf, "demo", fake_demo)
    monkeypatch.setattr("histoxmodal.deps.require_extra", lambda *a, **k: None)
    monkeypatch.setattr(progress_mod, "progress_enabled", lambda: "decided")
    args = argparse.Namespace(
        out="x", src=None, medical=False, seed=0, workers=1, max_epochs=1, patients=4
    )
    with pytest.raises(SystemExit):
        demo_cli.run(args)
    assert seen["progress_bar"] == "decided"


def test_off_a_terminal_a_loop_logs_where_it_is(env, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    env(tty=False)
    with caplog.at_level(logging.INFO, logger="histoxmodal.progress"):
        assert list(progress(range(5), total=5, desc="tiling", unit="tile", log_items=True)) == [
            0,
            1,
            2,
            3,
            4,
        ]
        assert _run(5) == [0, 1, 2, 3, 4]  # an inner loop (batches): silent
        lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [f"tiling: {i}/5 tile" for i in range(1, 6)]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="histoxmodal.progress"):
        list(progress(range(1000), total=1000, desc="slides", unit="slide", log_items=True))
        assert 20 <= len(caplog.records) <= 21  # a long loop: about LOG_LINES lines
        list(progress(range(10)))  # no desc: silent
        assert len(caplog.records) <= 21
