"""Per-slide tiling outputs: ``coords.h5`` (CLAM/TRIDENT-compatible), the tile store, the overlay.

``coords.h5`` holds dataset ``coords`` (``(n, 2)`` int64 level-0 ``(x, y)``) whose attributes
follow both CLAM and TRIDENT: ``patch_level`` and ``patch_size`` are the level and the size at
that level to pass to ``read_region`` so that it returns exactly the tile's field of view (CLAM's
meaning; equal to the output tile size when the target resolution is a pyramid level, which is
TRIDENT's meaning), ``patch_size_level0`` is the side in level-0 pixels, and ``target_mpp``,
``level0_mpp``, ``tile_px``, ``overlap`` and magnifications are recorded too. Dataset
``tissue_fraction`` holds each tile's tissue fraction.

:func:`load_tiles` opens one slide's finished output folder as a :class:`TileSet`
(``hx.load_tiles``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histoxmodal import keys
from histoxmodal.reprs import THUMBNAIL_PX, fmt_mpp, html_card, safe_html, safe_repr
from histoxmodal.tiling.spec import TileGeometry

if TYPE_CHECKING:
    from histoxmodal.io.slide import SlideReader
    from histoxmodal.tiling.tissue import TissueMask


def coords_attrs(slide: SlideReader, geometry: TileGeometry, name: str) -> dict[str, object]:
    """The attributes written on the ``coords`` dataset."""
    spec = geometry.spec
    level_dim = slide.level_dimensions[geometry.read_level]
    return {
        "patch_size": geometry.read_px,
        "patch_level": geometry.read_level,
        "patch_size_level0": geometry.tile_px_level0,
        "downsample": [geometry.read_downsample, geometry.read_downsample],
        "level_dim": list(level_dim),
        "downsampled_level_dim": list(level_dim),
        "tile_px": spec.tile_px,
        "target_mpp": spec.target_mpp,
        "effective_mpp": geometry.effective_mpp,
        "level0_mpp": geometry.mpp,
        "target_magnification": 10.0 / spec.target_mpp,
        "level0_magnification": 10.0 / geometry.mpp,
        "overlap": spec.tile_px - spec.step_px,
        "step_size_level0": geometry.step_level0,
        "name": name,
    }


def write_coords(
    path: Path, coords: np.ndarray, fraction: np.ndarray, attrs: dict[str, object]
) -> None:
    """Write ``coords.h5``: datasets ``coords`` and ``tissue_fraction``; attributes on coords."""
    import h5py

    with h5py.File(path, "w") as f:
        d = f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        for k, v in attrs.items():
            d.attrs[k] = v
        f.create_dataset("tissue_fraction", data=np.asarray(fraction, np.float32))


def write_tiles(
    path: Path, coords: np.ndarray, tile_px: int, batches, attrs: dict[str, object]
) -> int:
    """Write the tile store ``tiles.h5``: dataset ``tiles`` ``(n, tile_px, tile_px, 3)`` uint8.

    One HDF5 chunk per tile, so ``f["tiles"][i]`` reads a single tile from disk. Pixels are stored
    uncompressed: they were already decoded from the slide, and recompressing would cost more
    than reading them.

    Returns
    -------
    int
        Number of tiles written.
    """
    import h5py

    n = len(coords)
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        d = f.create_dataset(
            "tiles",
            shape=(n, tile_px, tile_px, 3),
            dtype=np.uint8,
            chunks=(1, tile_px, tile_px, 3) if n else None,
        )
        for k, v in attrs.items():
            d.attrs[k] = v
        i = 0
        for batch in batches:
            d[i : i + len(batch)] = batch
            i += len(batch)
    return i


#: overlay colours (RGB): tissue tint and outline, kept tiles, tiles left out
TISSUE_RGB = (0, 170, 80)
TILE_RGB = (30, 70, 230)
EXCLUDED_RGB = (240, 130, 0)
#: opacity of the tissue tint: the H&E stays visible under it
TISSUE_ALPHA = 0.3


def _font(size: int):
    """A font that has µ and ²: DejaVu Sans from the system or matplotlib, else Pillow's own
    (whose missing glyphs :func:`_text` replaces)."""
    from PIL import ImageFont

    candidates = ["DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
    # matplotlib's bundled copy, found without importing matplotlib (70 ms)
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(str(Path(folder) / "mpl-data/fonts/ttf/DejaVuSans.ttf"))
    for c in candidates:
        try:
            return ImageFont.truetype(c, size), True
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size), False
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default(), False


def _text(text: str, unicode_ok: bool) -> str:
    return text if unicode_ok else text.replace("µ", "u").replace("²", "2")


def _nice_um(um: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k µm) at most ``um``."""
    k = 10 ** np.floor(np.log10(max(um, 1e-9)))
    return float(max(m * k for m in (1, 2, 5) if m * k <= um))


def caption_height(width: int) -> int:
    """Height in pixels of the caption band :func:`write_overlay` adds below an image of
    ``width`` pixels (two lines of text)."""
    return 2 * (_font_px(width) + 6) + 8


def _font_px(width: int) -> int:
    return int(np.clip(width / 70, 11, 18))


def render_overlay(
    thumbnail: np.ndarray,
    tissue: TissueMask,
    coords: np.ndarray,
    size_level0: int,
    *,
    excluded: np.ndarray | None = None,
    mpp: float | None = None,
    caption: str = "",
) -> np.ndarray:
    """The overlay image: ``thumbnail`` with the tissue mask tinted at :data:`TISSUE_ALPHA`
    (the morphology shows through) and outlined, kept tiles outlined in blue, ``excluded``
    tiles in orange, a legend, a scale bar in µm (when ``mpp`` is known) and ``caption`` in a
    band below.

    Parameters
    ----------
    thumbnail
        ``(h, w, 3)`` RGB image of the whole slide (any size; the mask is resampled to it).
    tissue
        The mask, whose ``downsample`` maps it to level 0.
    coords, size_level0
        Kept tiles, level-0 ``(x, y)`` and side.
    excluded
        ``(m, 2)`` level-0 origins of grid tiles touching tissue but left out.
    mpp
        Level-0 µm per pixel.
    caption
        Up to two lines of text (``\\n``-separated).

    Returns
    -------
    np.ndarray
        ``(h + caption_height(w), w, 3)`` uint8.
    """
    import cv2
    from PIL import Image, ImageDraw

    img = np.asarray(thumbnail, np.uint8)[..., :3].astype(np.float32)
    oh, ow = img.shape[:2]
    mask = cv2.resize(tissue.mask.astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST)
    sel = mask.astype(bool)
    img[sel] = img[sel] * (1 - TISSUE_ALPHA) + np.float32(TISSUE_RGB) * TISSUE_ALPHA
    out = img.astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, TISSUE_RGB, 2)
    mh, mw = tissue.mask.shape
    sx, sy = ow / (mw * tissue.downsample[0]), oh / (mh * tissue.downsample[1])
    for tiles, colour in ((excluded, EXCLUDED_RGB), (coords, TILE_RGB)):
        for x, y in np.asarray(tiles if tiles is not None else [], np.int64).reshape(-1, 2):
            p0 = (int(x * sx), int(y * sy))
            p1 = (int((x + size_level0) * sx), int((y + size_level0) * sy))
            cv2.rectangle(out, p0, p1, colour, 1)
    band = caption_height(ow)
    canvas = Image.new("RGB", (ow, oh + band), "white")
    canvas.paste(Image.fromarray(out), (0, 0))
    draw = ImageDraw.Draw(canvas, "RGBA")
    fpx = _font_px(ow)
    font, uni = _font(fpx)
    # legend, top right
    items = (("tissue", TISSUE_RGB), ("tiles", TILE_RGB), ("excluded", EXCLUDED_RGB))
    text_w = max(draw.textlength(t, font=font) for t, _ in items)
    lw, lh = int(text_w + 2.2 * fpx + 12), len(items) * (fpx + 6) + 8
    x0, y0 = ow - lw - 6, 6
    draw.rectangle((x0, y0, x0 + lw, y0 + lh), fill=(255, 255, 255, 215), outline=(90, 90, 90))
    for i, (text, colour) in enumerate(items):
        y = y0 + 6 + i * (fpx + 6)
        box = (x0 + 6, y + 1, x0 + 6 + int(1.4 * fpx), y + fpx - 1)
        if text == "tissue":
            draw.rectangle(box, fill=(*colour, 110), outline=colour, width=2)
        else:
            draw.rectangle(box, outline=colour, width=2)
        draw.text((x0 + 12 + 1.4 * fpx, y - 1), text, fill="black", font=font)
    # scale bar, bottom left of the image
    if mpp:
        um_px = mpp * (tissue.mask.shape[1] * tissue.downsample[0]) / ow
        bar_um = _nice_um(0.2 * ow * um_px)
        bar_px = round(bar_um / um_px)
        bx, by = 10, oh - 12
        label = _text(f"{bar_um:g} µm", uni)
        tw = draw.textlength(label, font=font)
        draw.rectangle((bx - 5, by - fpx - 10, bx + max(bar_px, tw) + 5, by + 6),
                       fill=(255, 255, 255, 200))  # fmt: skip
        draw.rectangle((bx, by - 1, bx + bar_px, by + 3), fill="black")
        draw.text((bx + (bar_px - tw) / 2, by - fpx - 6), label, fill="black", font=font)
    for i, line in enumerate(caption.splitlines()[:2]):
        draw.text((6, oh + 4 + i * (fpx + 6)), _text(line, uni), fill="black", font=font)
    return np.asarray(canvas)


#: the detection's own thumbnail is reused for the overlay when its longer side is at least this
#: share of the overlay's (a 12 mm section at 8 µm/px: 1,500 of 1,536 px), instead of reading
#: the slide a second time
OVERLAY_REUSE_FRACTION = 0.75
#: zlib level of ``overlay.png``: level 1 encodes 2.3x faster than Pillow's default 6 for a
#: 21 % larger file (1536 x 1208 px overlay: 0.057 s / 1.2 MB against 0.132 s / 1.0 MB)
OVERLAY_PNG_LEVEL = 1


def overlay_thumbnail(slide: SlideReader, tissue: TissueMask, max_side: int) -> np.ndarray:
    """The RGB image an overlay is drawn on, at most ``max_side`` pixels long.

    The thumbnail tissue detection already read (``tissue.thumbnail``) when its longer side
    reaches :data:`OVERLAY_REUSE_FRACTION` of the overlay's (``max_side``, or the slide's when
    smaller), shrunk with area averaging if larger; otherwise a new thumbnail from the slide.
    """
    import cv2

    W, H = slide.dimensions
    thumb = tissue.thumbnail
    side = min(max_side, max(W, H))
    if thumb is not None and max(thumb.shape[:2]) >= OVERLAY_REUSE_FRACTION * side:
        h, w = thumb.shape[:2]
        scale = max_side / max(h, w)
        if scale >= 1:
            return thumb
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return cv2.resize(thumb, size, interpolation=cv2.INTER_AREA)
    return slide.get_thumbnail(max_size=side)


def write_overlay(
    path: Path,
    thumbnail: np.ndarray,
    tissue: TissueMask,
    coords: np.ndarray,
    size_level0: int,
    *,
    excluded: np.ndarray | None = None,
    mpp: float | None = None,
    caption: str = "",
) -> None:
    """Write :func:`render_overlay` as a PNG at ``path``."""
    from PIL import Image

    img = render_overlay(
        thumbnail, tissue, coords, size_level0, excluded=excluded, mpp=mpp, caption=caption
    )
    try:
        Image.fromarray(img).save(path, format="PNG", compress_level=OVERLAY_PNG_LEVEL)
    except OSError as exc:
        raise OSError(f"could not write the overlay PNG {path}: {exc}") from exc


def read_manifest(folder: str | Path) -> dict | None:
    """The parsed ``manifest.json`` of one slide's output folder, or ``None`` when there is none
    (or it is unreadable: a folder without a finished manifest is not output)."""
    try:
        return json.loads((Path(folder) / keys.TILE_MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class TileSet:
    """The outputs of one tiled slide, opened for reading (see :func:`load_tiles`).

    Attributes
    ----------
    coords
        ``(n, 2)`` int64 level-0 ``(x, y)``.
    tissue_fraction
        ``(n,)`` float32.
    attrs
        Attributes of the ``coords`` dataset (patch size, level, mpp, ...).
    manifest
        The parsed ``manifest.json``.
    tiles
        ``(n, tile_px, tile_px, 3)`` uint8 HDF5 dataset read lazily by index, or ``None`` when the
        slide was tiled without ``save_tiles``.
    folder
        The slide's output folder (``OUT/<slide name>``) when opened with :func:`load_tiles`.
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    attrs: dict[str, object]
    manifest: dict[str, object]
    tiles: object | None = None
    folder: Path | None = None
    _file: object | None = None

    def _fact(self, key: str, default: object = None) -> object:
        return self.attrs.get(key, self.manifest.get(key, default))

    @safe_repr
    def __repr__(self) -> str:
        n = len(self.coords)
        name = self.manifest.get("name") or self.attrs.get("name") or "?"
        area = self.manifest.get("tissue_area_mm2")
        tissue = f", tissue {area:.2f} mm²" if isinstance(area, int | float) else ""
        stored = ", pixels stored" if self.tiles is not None else ""
        return (
            f"TileSet({n} tile{'' if n == 1 else 's'} of {self._fact('tile_px', '?')} px at "
            f"{fmt_mpp(self._fact('effective_mpp'))}, slide={name!r}{tissue}{stored})"
        )

    @safe_html
    def _repr_html_(self) -> str:
        """A table of the tile set's facts and its overlay (at most 256 px), for Jupyter."""
        m = self.manifest
        tile_px, size0 = self._fact("tile_px"), self._fact("patch_size_level0")
        mpp = self._fact("effective_mpp")
        tissue = m.get("tissue") if isinstance(m.get("tissue"), dict) else {}
        rows: list[tuple[str, object]] = [
            ("slide", m.get("slide", "?")),
            ("tiles", len(self.coords)),
            ("tile", f"{tile_px} px at {fmt_mpp(mpp)} (target {fmt_mpp(m.get('target_mpp'))})"),
        ]
        if isinstance(tile_px, int | float) and isinstance(mpp, int | float):
            rows.append(("tile side", f"{tile_px * mpp:.0f} µm ({size0} level-0 px)"))
        if isinstance(m.get("tissue_area_mm2"), int | float):
            rows.append(
                ("tissue", f"{m['tissue_area_mm2']:.2f} mm², {m.get('tissue_regions')} region(s)")
            )
        rule = f"min tissue {m.get('min_tissue')}"
        rows.append(("kept", f"{rule}, {tissue.get('method', m.get('tissue_source', '?'))}"))
        rows.append(("pixels", "stored (tiles.h5)" if self.tiles is not None else "not stored"))
        if self.folder is not None:
            rows.append(("folder", str(self.folder)))
        return html_card(repr(self), rows, self._thumbnail())

    def _thumbnail(self) -> np.ndarray | None:
        """``overlay.png`` (tile outlines already drawn) or the slide's thumbnail with outlines."""
        from PIL import Image, ImageDraw

        if self.folder is not None and (self.folder / keys.TILE_OVERLAY_FILE).is_file():
            with Image.open(self.folder / keys.TILE_OVERLAY_FILE) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                return np.asarray(im)
        slide = self.manifest.get("slide")
        if not slide or not Path(str(slide)).is_file():
            return None
        from histoxmodal.io.slide import open_slide

        reader = self.manifest.get("reader")
        with open_slide(str(slide), reader=reader, allow_implausible_mpp=True) as sl:
            thumb = sl.get_thumbnail(THUMBNAIL_PX)
            ds = sl.dimensions[0] / thumb.shape[1]
        im = Image.fromarray(thumb)
        draw = ImageDraw.Draw(im)
        side = float(self._fact("patch_size_level0") or 0) / ds
        for x, y in np.asarray(self.coords, dtype=np.float64) / ds:
            draw.rectangle([x, y, x + side, y + side], outline=(31, 119, 180))
        return np.asarray(im)

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.tiles is None:
            raise ValueError(
                "this slide was tiled without --save-tiles; read pixels from the slide with "
                "histoxmodal.iter_tiles, or re-run `histoxmodal tile --save-tiles --overwrite`"
            )
        return self.tiles[i]  # type: ignore[index]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._file = None

    def __enter__(self) -> TileSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_tiles(folder: str | Path) -> TileSet:
    """Open the outputs ``histoxmodal tile`` wrote for one slide.

    Parameters
    ----------
    folder
        ``OUT/<slide name>``.

    Raises
    ------
    FileNotFoundError
        No finished output there.
    ValueError
        The slide failed; the message gives the recorded reason.
    """
    import h5py

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder}: no {keys.TILE_MANIFEST_FILE}; was it tiled?")
    if manifest.get("status") == keys.STATUS_FAILED:
        raise ValueError(f"{folder}: tiling failed: {manifest.get('reason')}")
    with h5py.File(folder / keys.TILE_COORDS_FILE, "r") as f:
        coords = f["coords"][:]
        frac = f["tissue_fraction"][:]
        attrs = {
            k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f["coords"].attrs.items()
        }
    ts = TileSet(coords, frac, attrs, manifest, folder=folder)
    store = folder / keys.TILE_STORE_FILE
    if store.exists():
        ts._file = h5py.File(store, "r")
        ts.tiles = ts._file["tiles"]  # type: ignore[index]
    return ts
