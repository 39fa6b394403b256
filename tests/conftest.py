"""Shared fixtures: the real sample data folder, small generated slides, and no network."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def data_root() -> Path:
    """``HISTOXMODAL_TEST_DATA``, defaulting to ``../shared/data`` beside the project."""
    return Path(os.environ.get("HISTOXMODAL_TEST_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real sample data; skipped with a reason when absent, a failure in CI."""
    d = data_root()
    if not d.is_dir():
        msg = (
            f"real sample data not found at {d}: set HISTOXMODAL_TEST_DATA to the folder "
            f"described in shared/data/README.md"
        )
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def cmu_svs(data_dir: Path) -> Path:
    return data_dir / "wsi" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def small_slide(tmp_path_factory: pytest.TempPathFactory):
    """A 3072 x 2048 synthetic slide at 0.25 µm/px with levels at 1, 2, 4, 8."""
    from histoxmodal.testing import make_synthetic_slide

    path = tmp_path_factory.mktemp("slides") / "small.tif"
    return make_synthetic_slide(
        path,
        width=3072,
        height=2048,
        mpp=0.25,
        tile=256,
        level_downsample=2,
        min_level_size=384,
        n_sections=2,
        seed=3,
    )


@pytest.fixture(scope="session")
def blank_slide(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic slide of empty glass."""
    from histoxmodal.testing import make_synthetic_slide

    path = tmp_path_factory.mktemp("slides") / "blank.tif"
    return make_synthetic_slide(path, width=2048, height=1536, tissue=False, seed=4)


@pytest.fixture(scope="session")
def her2st_paired(data_dir, tmp_path_factory):
    """The her2st paired dataset (5 sections with images, no count filter): (folder, manifest)."""
    from histoxmodal.data.recipes import find_samples, load_recipe
    from histoxmodal.workflows.build import PairedConfig, build_paired

    out = tmp_path_factory.mktemp("paired") / "her2st"
    refs = find_samples(load_recipe("her2st"), [data_dir / "her2st"])
    manifest = build_paired(refs, out, PairedConfig(min_counts=0), recipe="her2st", workers=2)
    return out, manifest


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that tries to reach another host fails (loopback stays allowed)."""
    real_connect = socket.socket.connect

    def guarded(self, address):  # type: ignore[no-untyped-def]
        host = address[0] if isinstance(address, tuple) else address
        if (
            isinstance(host, str)
            and host not in ("127.0.0.1", "localhost", "::1")
            and self.family in (socket.AF_INET, socket.AF_INET6)
        ):
            raise RuntimeError(f"network access in a test: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
