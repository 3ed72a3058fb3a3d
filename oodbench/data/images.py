"""Robust image decoding: every file-based source reads images through `load_image`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from oodbench.data.base import UnreadableImage

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_MODES = {"I", "F"}  # 32-bit int / float single channel


def load_image(path: str | Path) -> Image.Image:
    """Decode the image at `path` into an RGB PIL image (first frame of animations).

    Conversions: alpha (RGBA, LA, palette with transparency) is composited on white;
    16-bit and 32-bit single-channel images are scaled to 8 bit (see `to_rgb`); CMYK,
    grayscale and the rest go through Pillow's own conversion. EXIF orientation is not
    applied, as in torchvision's and OpenOOD's loaders, so features match theirs.

    Truncated files are refused as long as `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is off
    (Pillow's default; oodbench never turns it on).

    Raises:
        UnreadableImage: the file is missing, empty, truncated or not a decodable image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImage(f"Cannot read image {path}: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to RGB (see `load_image` for the rules)."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        return _on_white(image.convert("RGBA"))
    if image.mode.startswith("I;16"):
        return _gray_to_rgb(np.asarray(image, dtype=np.float64) / 257.0)
    if image.mode in _WIDE_MODES:
        return _gray_to_rgb(_wide_to_8bit(np.asarray(image, dtype=np.float64)))
    return image.convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_to_8bit(values: np.ndarray) -> np.ndarray:
    """Values already in 0..255 are kept; larger ranges are read as 16 bit (0..65535)."""
    return values / 257.0 if values.max(initial=0) > 255 else values


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
