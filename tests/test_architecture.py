"""The package's shape: the import contracts in ``pyproject.toml`` and a light ``import``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What `import histoxmodal` and `histoxmodal --help` must leave unimported: each costs from a
# tenth of a second (h5py) to several seconds (torch, scanpy) before the first line of output.
HEAVY = ("torch", "lightning", "scanpy", "anndata", "openslide", "cv2", "h5py", "timm")


def test_import_contracts():
    """``lint-imports`` over the ``[tool.importlinter]`` contracts; its report on failure."""
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra")
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            # No .import_linter_cache/ left in the working tree.
            "--no-cache",
        ],
        cwd=ROOT,  # lint-imports reads ./pyproject.toml
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, f"import contracts broken:\n{res.stdout}\n{res.stderr}"


def _loaded_after(code: str) -> list[str]:
    """The :data:`HEAVY` modules in ``sys.modules`` when a fresh interpreter running ``code``
    exits (also when it exits through ``SystemExit``, as ``--help`` does)."""
    probe = (
        "import atexit, json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "atexit.register(lambda: print('\\nLOADED=' + json.dumps("
        "[m for m in heavy if m in sys.modules])))\n" + code
    )
    res = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("LOADED=")]
    assert lines, f"the probe did not finish:\n{res.stdout}\n{res.stderr}"
    return json.loads(lines[-1].removeprefix("LOADED="))


def test_import_histoxmodal_is_light():
    assert _loaded_after("import histoxmodal\n") == []


@pytest.mark.parametrize("argv", [["--help"], ["build", "--help"], ["train", "--help"]])
def test_cli_help_is_light(argv: list[str]):
    code = (
        f"sys.argv = ['histoxmodal', *{argv!r}]\n"
        "from histoxmodal.cli.main import main\n"
        "sys.exit(main())\n"
    )
    assert _loaded_after(code) == []


def _private_imports_across_packages() -> list[str]:
    """``module: from X import _name`` (or ``import X._mod``) where X is another subpackage."""
    import ast

    found = []
    pkg = ROOT / "histoxmodal"
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts
        here = ".".join(parts[:2]) if len(parts) > 2 else parts[0]  # histoxmodal.<subpackage>
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("histoxmodal"):
                mod = node.module or ""
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names if a.name.startswith("histoxmodal")]
                if not mods:
                    continue
                mod, names = mods[0], []
            else:
                continue
            if mod == here or mod.startswith(here + "."):
                continue  # inside its own package
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in mod.split(".") if p.startswith("_")]
            if private:
                found.append(f"{'/'.join(parts)}.py: {mod} {private}")
    return found


def test_no_private_name_is_imported_across_packages():
    assert _private_imports_across_packages() == []
