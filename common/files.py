"""Atomic file writes and the image formats the pipeline reads and writes."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable

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


def read_image(path: Path) -> np.ndarray:
    """An image file as an RGB uint8 array (H, W, 3)."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, ValueError) as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as its indices (palette PNG) or its grey values (H, W) uint8."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "1", "I", "I;16"):
                raise ValueError(f"mode {img.mode}: expected a palette or greyscale PNG of class ids")
            return np.array(img, dtype=np.uint8)
    except (OSError, ValueError) as err:
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
