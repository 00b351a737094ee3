"""Atomic file writes and the image formats the pipeline reads and writes."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place.

    A crash leaves either the old file or none, never half of one, so reruns can trust what exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def remove_stale_parts(folder: Path, older_than: float | None = None) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` leaves when its process is killed
    (``.<name>.<random>.part``) anywhere under ``folder``; returns the deleted paths.

    A SIGKILL gives atomic_write no chance to clean up, so without this such files stay for ever.
    With ``older_than`` (a time.time() value) only files last modified before it go: a file being
    written at this moment by a live process is newer. Call it before any process of the current
    run writes into ``folder``."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.rglob(".*.part"):
        try:
            if not path.is_file() or (older_than is not None and path.stat().st_mtime >= older_than):
                continue
            path.unlink()
            removed.append(path)
        except FileNotFoundError:  # renamed into place or removed by its writer meanwhile
            continue
    return removed


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: 256 RGB triples (index 255 is ignore, drawn light)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def colorize(label: np.ndarray) -> np.ndarray:
    """RGB picture of a label map with the VOC colours."""
    return voc_palette()[label]


EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the stored pixels as a viewer displays them
# (the table of PIL.ImageOps.exif_transpose)
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# orientations 5-8 turn the picture a quarter: the displayed height is the stored width
QUARTER_TURN_ORIENTATIONS = (5, 6, 7, 8)
# errors PIL raises for files it cannot make sense of (some plugins raise SyntaxError)
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8, 1 = as stored) of an opened image, from its header alone.

    A PNG's eXIf chunk counts only when it comes before the pixel data (where the PNG spec puts
    it): finding a later one would decode the whole image, and ``image_size`` (header only) and
    ``read_image`` must always agree. A broken EXIF block counts as no orientation."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        orientation = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # EXIF parsers raise many kinds of error on a broken block
        return 1
    return orientation if orientation in EXIF_TRANSPOSE else 1


def _grey_to_uint8(values: np.ndarray, bits: int | None) -> np.ndarray:
    """Greyscale of ``bits`` bits per pixel scaled to 0..255 (the top value maps to 255); with
    ``bits`` None (float or out-of-range data) the image's own range is stretched to 0..255."""
    values = values.astype(np.float64)
    if bits is not None:
        top = float(2**bits - 1)
        return np.rint(values * (255.0 / top)).astype(np.uint8)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if low >= 0.0 and high <= 1.0:  # a float image in 0..1
        low, high = 0.0, 1.0
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.rint((values - low) * scale).astype(np.uint8)


def image_to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a decoded PIL image of any mode.

    16-bit greyscale ('I;16*', or 'I' holding values within 0..65535, as 16-bit PNGs open) is
    scaled by its bit depth (65535 -> 255), never clipped; float or wider integer data is stretched
    from its own range. A picture with transparency (RGBA, LA, PA, a tRNS colour) is shown over
    white, as a viewer on a white page shows it. Palette, 1-bit, CMYK and YCbCr images go through
    PIL's own conversion."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(img)
        sixteen_bit = mode.startswith("I;16") or (
            mode == "I" and (not values.size or (values.min() >= 0 and values.max() <= 65535))
        )
        grey = _grey_to_uint8(values, 16 if sixteen_bit else None)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[..., 3:]
        over_white = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return over_white.astype(np.uint8)
    if mode == "RGB":
        return np.array(img)
    try:
        return np.array(img.convert("RGB"))
    except ValueError as err:
        raise ValueError(f"image mode {mode} cannot be converted to RGB: {err}") from err


def read_image(path: Path) -> np.ndarray:
    """An image file as displayed: RGB uint8 (H, W, 3), its EXIF orientation applied (a phone
    photo stored sideways comes out upright) and any pixel mode converted (see ``image_to_rgb``).
    Its shape is always ``image_size(path) + (3,)``."""
    try:
        with Image.open(path) as img:
            orientation = exif_orientation(img)
            img.load()
            shown = img.transpose(EXIF_TRANSPOSE[orientation]) if orientation != 1 else img
            return image_to_rgb(shown)
    except IMAGE_ERRORS as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as displayed, from its header without decoding pixels: EXIF
    orientations 5-8 (a quarter turn) swap the stored sides."""
    try:
        with Image.open(path) as img:
            if exif_orientation(img) in QUARTER_TURN_ORIENTATIONS:
                return img.width, img.height
            return img.height, img.width
    except IMAGE_ERRORS as err:
        raise OSError(f"cannot read image {path}: {err}") from err


_PALETTE_LOOKUP: dict[int, int] = {}


def _packed_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def rgb_to_class_ids(rgb: np.ndarray) -> np.ndarray:
    """Class ids (H, W) uint8 of an RGB mask drawn in the VOC colours (``voc_palette``).

    A mask whose pixels are all grey (R = G = B) and not all VOC colours gives its grey values (a
    greyscale mask saved as RGB). Otherwise a colour outside the palette is a ValueError naming
    the first such colour in reading order and where it is."""
    if not _PALETTE_LOOKUP:
        _PALETTE_LOOKUP.update({int(c): i for i, c in enumerate(_packed_rgb(voc_palette()))})
    height, width = rgb.shape[:2]
    packed = _packed_rgb(rgb[..., :3]).reshape(-1)
    colours, inverse = np.unique(packed, return_inverse=True)
    ids = np.array([_PALETTE_LOOKUP.get(int(c), -1) for c in colours], dtype=np.int16)
    if (ids >= 0).all():
        return ids[inverse.reshape(-1)].reshape(height, width).astype(np.uint8)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.array(rgb[..., 0], dtype=np.uint8)
    first = int(np.flatnonzero(ids[inverse.reshape(-1)] < 0)[0])
    row, col = divmod(first, width)
    colour = tuple(int(v) for v in rgb[row, col, :3])
    raise ValueError(
        f"RGB mask colour {colour} (row {row}, column {col}; {int((ids < 0).sum())} "
        f"colours in all) is not in the VOC palette: draw masks in the VOC colours or "
        f"save them as palette or greyscale PNGs of class ids"
    )


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as class ids (H, W) uint8: a palette PNG's indices, a greyscale PNG's values
    (a 16-bit one too, while every value is within 0..255), or an RGB(A) PNG drawn in the VOC
    colours mapped back to their indices (``rgb_to_class_ids``). Anything else is an OSError
    naming the file and what is wrong."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("P", "L", "1"):
                return np.array(img, dtype=np.uint8)
            if mode.startswith("I"):
                values = np.asarray(img)
                if values.size and (values.min() < 0 or values.max() > 255):
                    bad = int(values.max()) if values.max() > 255 else int(values.min())
                    raise ValueError(
                        f"{mode} mask holds value {bad}: class ids must be 0..255 "
                        f"(0 background, 1..C classes, 255 ignore)"
                    )
                return values.astype(np.uint8)
            if mode in ("RGB", "RGBA"):
                return rgb_to_class_ids(np.asarray(img))
            raise ValueError(f"mode {mode}: expected a palette, greyscale or VOC-coloured RGB PNG of class ids")
    except IMAGE_ERRORS as err:
        raise OSError(f"cannot read label image {path}: {err}") from err


def _png_bytes(img: Image.Image, handle: io.BufferedWriter) -> None:
    img.save(handle, format="PNG", optimize=False, compress_level=6)


def write_label_png(path: Path, label: np.ndarray) -> None:
    """Write class ids as a palette PNG with the VOC colour map."""
    img = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    atomic_write(path, lambda handle: _png_bytes(img, handle))


def write_gray_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 (H, W) array as an 8-bit greyscale PNG."""
    img = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L")
    atomic_write(path, lambda handle: _png_bytes(img, handle))


def write_rgb(path: Path, rgb: np.ndarray, quality: int = 90) -> None:
    """Write an RGB uint8 array; JPEG or PNG by the file's suffix."""
    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB")
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    atomic_write(path, lambda handle: img.save(handle, format=fmt, quality=quality))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
