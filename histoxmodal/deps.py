"""Optional dependencies: a clear message naming the extra to install, instead of an ImportError."""

from __future__ import annotations

import importlib.util

from histoxmodal.errors import MissingDependencyError as MissingDependencyError

#: extra name -> import names it provides
EXTRAS = {
    "wsi": ("openslide", "tifffile", "imagecodecs", "h5py", "cv2"),
    "spatial": ("anndata", "scanpy", "pandas", "scipy", "pyarrow", "yaml", "torchstain"),
    "torch": ("torch", "timm", "safetensors"),
    "scvi": ("scvi",),
    "drvi": ("scvi", "drvi"),
    "metrics": ("scib_metrics",),
    "medical": ("pydicom", "wfdb", "nibabel", "monai"),
    "spatialdata": ("spatialdata",),
}


def require_extra(extra: str, feature: str) -> None:
    """Raise :class:`MissingDependencyError` unless every module of ``extra`` is importable."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"{feature} needs {', '.join(missing)}: install them with "
            f"pip install 'histoxmodal[{extra}]'"
        )
