"""What the image steps share: the sizes to render, probing and rendering with Pillow.

Kept apart from the step files so each can be tested without a queue, and named
``picture_kit`` because every example's steps folder goes on ``sys.path``.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import IO, Any, cast

from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest image accepted, in pixels: Pillow decodes into memory, and a small file can
#: declare a huge canvas (a decompression bomb). ``IMAGES_MAX_PIXELS`` overrides it.
MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Size:
    name: str
    box: int  # the longest side, in pixels (never upscaled)
    priority: str  # the thumbnail first: a page can show it while the large ones render


SIZES = (Size("thumb", 160, "high"), Size("medium", 800, "normal"), Size("large", 1600, "low"))


class BadImage(Exception):
    """The bytes are no image Pillow can decode, or too big to: the same bytes fail every time."""

    retryable = False


def max_pixels() -> int:
    return int(os.environ.get("IMAGES_MAX_PIXELS", MAX_PIXELS))


def _decode(fh: IO[bytes]) -> Image.Image:
    """Open and fully decode, or raise ``BadImage`` saying why."""
    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fh)
            width, height = img.size
            if width * height > limit:
                raise BadImage(
                    f"decompression bomb: {width}x{height} is {width * height:,} pixels, "
                    f"over the limit of {limit:,} (IMAGES_MAX_PIXELS)"
                )
            img.load()  # a truncated or corrupt body fails here, not in every render
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"corrupt image: {exc}") from None
    return img


def probe(fh: IO[bytes]) -> dict[str, Any]:
    """Format, size as displayed (EXIF orientation applied) and alpha, after a full decode."""
    img = _decode(fh)
    width, height = img.size
    if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated a quarter turn: displayed sideways
        width, height = height, width
    return {"format": img.format, "width": width, "height": height, "alpha": has_alpha(img)}


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float greyscale image as 8-bit greyscale (``L``), its levels scaled, not clipped.

    Pillow's ``convert("RGB")`` clips such values at 255: a 16-bit PNG came out almost all
    white, a float TIFF all black. 16-bit images keep their brightness (a 256th of each
    value); 32-bit and float ones, whose range has no fixed top, are stretched from their
    darkest to their brightest value.
    """
    if img.mode.startswith("I;16"):
        return img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if img.mode in ("I", "F"):
        lo, hi = cast("tuple[float, float]", img.getextrema())  # one band: (lowest, highest)
        if hi == lo:
            return Image.new("L", img.size, 0 if hi <= 0 else 255)
        scale = 255 / (hi - lo)
        return img.point(lambda v: v * scale - lo * scale).convert("L")
    return img


def render(fh: IO[bytes], box: int) -> tuple[bytes, str, tuple[int, int]]:
    """The image upright (EXIF orientation applied), fit in ``box``×``box``: WebP when it has
    alpha (kept), else JPEG. Returns ``(bytes, content type, (width, height))``."""
    img = _eight_bit(ImageOps.exif_transpose(_decode(fh)))
    alpha = has_alpha(img)
    img = img.convert("RGBA" if alpha else "RGB")
    img.thumbnail((box, box), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if alpha:
        img.save(out, "WEBP", quality=85, method=4)
        return out.getvalue(), "image/webp", img.size
    img.save(out, "JPEG", quality=85, optimize=True, progressive=True)
    return out.getvalue(), "image/jpeg", img.size
