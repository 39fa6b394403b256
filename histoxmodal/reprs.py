"""Notebook-friendly representations: one-line reprs and small self-contained HTML blocks.

Used by the slide, tissue-mask, tile-set and run objects. Nothing here raises out of a repr:
:func:`safe_repr` and :func:`safe_html` fall back to a minimal text form on any error.
"""

from __future__ import annotations

import base64
import functools
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: the longest side of an inline thumbnail, in pixels
THUMBNAIL_PX = 256


def short_path(path: str | Path, max_len: int = 48) -> str:
    """``path`` as given, or ``…/parent/name`` when longer than ``max_len`` characters.

    Parameters
    ----------
    path
        Any path.
    max_len
        The longest string returned as is.

    Returns
    -------
    str
        The path, shortened to its last two parts when too long.
    """
    s = str(path)
    if len(s) <= max_len:
        return s
    parts = Path(s).parts
    return "…/" + "/".join(parts[-2:]) if len(parts) > 2 else s


def short_list(items: Sequence[object], max_items: int = 3) -> str:
    """``items`` as a list literal, or its first ``max_items`` and ``… (n in all)`` when longer.

    Parameters
    ----------
    items
        The values (shown with ``repr``).
    max_items
        The most values shown.

    Returns
    -------
    str
        ``"['a', 'b']"`` or ``"['a', 'b', 'c', … (7 in all)]"``.
    """
    items = list(items)
    if len(items) <= max_items:
        return repr(items)
    shown = ", ".join(repr(v) for v in items[:max_items])
    return f"[{shown}, … ({len(items)} in all)]"


def fmt_mpp(mpp: float | None) -> str:
    """A pixel size for display, ``"0.499 µm/px"`` or ``"? µm/px"`` when unknown."""
    return f"{mpp:.4g} µm/px" if mpp else "? µm/px"


def png_data_uri(image: np.ndarray, max_side: int = THUMBNAIL_PX) -> str:
    """A ``data:image/png;base64,…`` URI of ``image``, shrunk to at most ``max_side`` pixels.

    Parameters
    ----------
    image
        ``(h, w, 3)`` or ``(h, w)`` uint8.
    max_side
        The longest side of the encoded image.

    Returns
    -------
    str
        The data URI, for an ``<img src=…>``.
    """
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image))
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def html_card(
    title: str, rows: Sequence[tuple[str, object]], image: np.ndarray | None = None
) -> str:
    """A small HTML block: a bold title, a two-column table of facts and an optional thumbnail.

    Parameters
    ----------
    title
        The heading (escaped).
    rows
        ``(label, value)`` pairs; values are converted with ``str`` and escaped.
    image
        An RGB image shown beside the table as an inline PNG (:func:`png_data_uri`).

    Returns
    -------
    str
        Self-contained HTML (no external files, scripts or styles sheets).
    """
    cells = "".join(
        f'<tr><th style="text-align:left;padding-right:1em">{html.escape(str(k))}</th>'
        f'<td style="text-align:left">{html.escape(str(v))}</td></tr>'
        for k, v in rows
    )
    table = f"<table>{cells}</table>"
    img = ""
    if image is not None:
        uri = png_data_uri(image)
        img = (
            f'<img src="{uri}" alt="thumbnail" '
            f'style="max-width:{THUMBNAIL_PX}px;max-height:{THUMBNAIL_PX}px">'
        )
    return (
        f'<div class="histoxmodal-repr"><strong>{html.escape(title)}</strong>'
        f'<div style="display:flex;gap:1em;align-items:flex-start">{table}{img}</div></div>'
    )


def _fallback(self: object) -> str:
    return f"<{type(self).__name__} object at {id(self):#x}>"


def safe_repr(fn: Callable[[Any], str]) -> Callable[[Any], str]:
    """Decorate a ``__repr__`` so that an error gives ``<Class object at 0x…>``, never raises."""

    @functools.wraps(fn)
    def wrapper(self: Any) -> str:
        try:
            return fn(self)
        except Exception:
            return _fallback(self)

    return wrapper


def safe_html(fn: Callable[[Any], str]) -> Callable[[Any], str]:
    """Decorate a ``_repr_html_`` so that an error gives the escaped text repr, never raises."""

    @functools.wraps(fn)
    def wrapper(self: Any) -> str:
        try:
            return fn(self)
        except Exception:
            try:
                text = repr(self)
            except Exception:
                text = _fallback(self)
            return f"<pre>{html.escape(text)}</pre>"

    return wrapper
