"""Robust image reading: any file a user's dataset holds becomes an RGB image or a clear error naming it."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from uniemo.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: Decompression-bomb guard: larger images are refused (Pillow's own limit, stated here so it is one place).
MAX_IMAGE_PIXELS = 89_478_485


#: A JPEG is decoded at 1/2, 1/4 or 1/8 scale only while its shorter side stays at least this factor above every
#: size it will be resized to: training's random crop (≥ 80 % of the area, aspect 3/4–4/3, so a side ≥ 0.77 of the
#: shorter one) then still downsamples, and decoding a 500×375 photo for a 64 px model takes a third of the time.
DRAFT_MARGIN = 1.3


def draft_size(*sizes: int | None) -> int:
    """The ``draft_size`` for :func:`load_image` when the image will be resized to each of ``sizes`` (e.g. the
    CLIP input and the diffusion resolution): no view is ever upsampled from a reduced-scale decode."""
    return math.ceil(DRAFT_MARGIN * max(s or 0 for s in sizes))


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has an image file extension."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB: alpha over white, 16-bit and float scaled, CMYK and palette mapped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float32)
        if image.mode == "F":
            top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
        else:
            top = 255.0 if arr.size and arr.max() <= 255 else 65535.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Reads an image file as 8-bit RGB with its EXIF orientation applied (first frame of animations).

    Args:
        path: the image file.
        draft_size: a JPEG is decoded directly at the smallest of 1/1, 1/2, 1/4, 1/8 scale whose sides stay
            ≥ this many pixels (libjpeg's DCT scaling: several times faster for large photos). None decodes
            at full size.

    Raises:
        DataError: the file is missing, empty, not an image, truncated, or larger than ``MAX_IMAGE_PIXELS``.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_IMAGE_PIXELS:  # formats that Pillow's own guard misses
                    raise Image.DecompressionBombError(f"{opened.width}x{opened.height}")
                opened.seek(0)
                if draft_size and opened.format == "JPEG":
                    opened.draft("RGB", (draft_size, draft_size))
                opened.load()
                image = ImageOps.exif_transpose(opened)
                image = _to_rgb(image)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        size = path.stat().st_size if path.exists() else 0
        what = "is empty (0 bytes)" if size == 0 else "is not an image Pillow can read"
        raise DataError(f"image {path} {what}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"image {path} has more pixels than the limit of {MAX_IMAGE_PIXELS:,} (a decompression-bomb guard); "
            "downscale it first"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"image {path} cannot be decoded ({err}); it may be truncated or corrupt") from None
    if image.width < 1 or image.height < 1:
        raise DataError(f"image {path} has no pixels")
    return image
