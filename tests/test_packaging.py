"""A built wheel, installed non-editable, carries its recipes and example configs."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("her2st", "visium", "xenium", "h5ad", "cohort")
CONFIGS = ("her2st", "her2st_ensemble", "her2st_small", "cohort_symile", "frozen_uni_local")


def _run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_wheel_installs_with_recipes_and_configs(tmp_path: Path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "HISTOXMODAL_RECIPES")
    }
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")

    # Build from a copy: an in-tree build reuses build/lib and the egg-info's SOURCES.txt, so a
    # file that left the package could still end up in the wheel.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "histoxmodal", src / "histoxmodal", ignore=shutil.ignore_patterns("__pycache__")
    )
    for f in ROOT.iterdir():
        if f.is_file():
            shutil.copy2(f, src / f.name)
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            src,
            "-w",
            dist,
        ],
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = dist.glob("histoxmodal-*.whl")

    # A venv of its own whose site-packages comes first, then this environment's dependencies
    # through a .pth of plain paths. Plain path lines do not run the .pth files in those folders,
    # so the editable install's finder for the checkout is not installed there.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=env)
    py = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    own = Path(_run([py, "-c", purelib], cwd=tmp_path, env=env).strip())
    deps = dict.fromkeys(
        [
            *site.getsitepackages(),
            sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"],
        ]
    )
    (own / "_ci_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    # --ignore-installed: the checkout's editable install is visible through the .pth; it is
    # neither uninstalled nor taken to satisfy the requirement.
    _run(
        [py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel],
        cwd=tmp_path,
        env=env,
    )

    where = _run(
        [
            py,
            "-c",
            "import histoxmodal\n"
            "from histoxmodal.data.recipes import list_recipes\n"
            "from histoxmodal.workflows.config_files import bundled_configs\n"
            "print(histoxmodal.__file__)\n"
            "for p in [*list_recipes().values(), *bundled_configs().values()]: print(p)",
        ],
        cwd=tmp_path,
        env=env,
    ).splitlines()
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where), where
    assert not any(Path(p).resolve().is_relative_to(ROOT) for p in where), where

    recipes = _run([venv / "bin" / "histoxmodal", "build", "--list"], cwd=tmp_path, env=env)
    assert {line.split()[0] for line in recipes.splitlines() if line.strip()} >= set(RECIPES)
    configs = _run([venv / "bin" / "histoxmodal", "train", "--list"], cwd=tmp_path, env=env)
    assert {line.split()[0] for line in configs.splitlines() if line.strip()} >= set(CONFIGS)
