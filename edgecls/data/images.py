"""Read any supported image file as an 8-bit RGB PIL image, the same way everywhere."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edgecls.data.shards.member import open_source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# A decompression bomb is refused rather than decoded (PIL default is ~89 Mpx warning).
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def has_image_extension(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer / float grayscale modes scaled to 8 bits (not clipped)."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return Image.fromarray(arr)
    arr = arr.astype(np.float64)
    if img.mode.startswith("I;16") or arr.max() > 255:
        top = 65535.0 if arr.max() <= 65535 else float(arr.max())
        arr = arr / top * 255.0
    elif img.mode == "F" and arr.max() <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image (grayscale, RGBA, palette, CMYK, 16-bit, EXIF-rotated) to upright RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _to_8bit(img)
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path, *, jpeg_shrink: int = 1) -> Image.Image:
    """Decode a file (a path, or a `Member` of a tar shard) and return RGB; raises OSError/ValueError on a bad image.

    `jpeg_shrink` > 1 decodes a JPEG at up to that fraction of its size (DCT scaling): every
    entropy-coded byte is still read, so truncation and corrupt data are still found, cheaper.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(open_source(path)) as img:
            if jpeg_shrink > 1 and img.format == "JPEG":
                img.draft(None, (max(1, img.width // jpeg_shrink), max(1, img.height // jpeg_shrink)))
            img.load()
            return to_rgb(img)


def load_rgb_bytes(data: bytes) -> Image.Image:
    """Same as load_rgb for an in-memory file (HTTP uploads)."""
    import io

    return load_rgb(io.BytesIO(data))


def check_image(path: str | os.PathLike) -> str | None:
    """Return None when the file decodes as an image, else a short reason."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            return "zero-byte file"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    try:
        load_rgb(p, jpeg_shrink=8)  # every byte is decoded; full-size pixels are not needed
    except Image.DecompressionBombWarning:
        return f"too many pixels (over {MAX_PIXELS:,})"
    except Image.DecompressionBombError:
        return f"too many pixels (over {MAX_PIXELS:,})"
    except Image.UnidentifiedImageError:
        return "not an image (unrecognized format)"
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return f"corrupt or truncated: {exc}"
    return None
