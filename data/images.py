"""Every image the project reads (training, validation, extraction, figures) is decoded here.

The released loaders read images with ``cv2.imread(path)`` (``IMREAD_COLOR``) and flip BGR to RGB. Pillow
gives the same pixels once two things are done as OpenCV does them:

- the EXIF orientation tag is applied (OpenCV rotates/mirrors a JPEG by its tag; Pillow leaves it to
  ``ImageOps.exif_transpose``);
- everything becomes 8-bit, 3-channel RGB: grey is repeated into three channels, a palette image is
  expanded to its colours, an alpha channel (RGBA, LA, a palette's transparency) is dropped without
  compositing onto any background, and 16-bit samples keep their high byte (``value >> 8``, which is
  what OpenCV's 16-to-8-bit conversion does; Pillow's own ``convert`` would clip them at 255 instead).

Where the two libraries may still differ (checked against opencv-python-headless 5.0 on generated files:
all eight orientations, grey, palette, RGBA, LA and 16-bit grey/RGB PNGs give identical pixels):
- CMYK / YCCK JPEGs: OpenCV and Pillow convert CMYK to RGB by different formulas (up to 2 levels on a
  Pillow-written CMYK JPEG; Adobe-inverted files were not checked);
- JPEG decoding itself: the bundled libjpeg builds may use different IDCT / chroma-upsampling settings,
  which can move values by a level or two;
- orientation tags outside JPEG (a PNG eXIf chunk, WebP, TIFF) are applied here, but only by OpenCV
  versions whose decoder for that format reads EXIF;
- formats OpenCV cannot read (e.g. GIF before OpenCV 4.7) are read here, first frame only.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow modes holding more than 8 bits per grey sample (16-bit PNGs open as one of these)
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(img: Image.Image, alpha_background: tuple[int, int, int] | None = None) -> Image.Image:
    """An opened image as ``cv2.imread(IMREAD_COLOR)`` (then BGR->RGB) would give it: EXIF orientation
    applied, 8-bit RGB, alpha dropped (not composited).

    ``alpha_background``: composite transparent pixels onto this colour instead of dropping the alpha (the
    sketch-search app does so for uploaded queries, whose transparent paper would otherwise turn black).
    """
    try:
        img = ImageOps.exif_transpose(img)
    except (ValueError, TypeError, KeyError, SyntaxError, struct.error):
        pass                          # unreadable EXIF: OpenCV ignores it too and keeps the stored orientation
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if alpha_background is not None and has_alpha:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*alpha_background, 255)), rgba).convert("RGB")
    if img.mode in _WIDE_GREY_MODES:
        grey = (np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    if img.mode == "P" or img.mode == "PA":
        img = img.convert("RGBA")     # palette colours; the transparency goes with the alpha below
    return img.convert("RGB")         # L, 1, LA, RGBA, RGBX, CMYK, YCbCr -> RGB; alpha is discarded


def read_rgb(path: str | Path, alpha_background: tuple[int, int, int] | None = None) -> Image.Image:
    """Read ``path`` as 8-bit RGB the way the released loader's ``cv2.imread`` does (see the module doc);
    ``alpha_background`` as for :func:`to_rgb`.

    Raises what ``PIL.Image.open`` raises (FileNotFoundError, UnidentifiedImageError, OSError).
    """
    with Image.open(path) as img:
        img.load()
        return to_rgb(img, alpha_background)


def read_problem(exc: BaseException) -> tuple[str, str] | None:
    """What a :func:`read_rgb` failure means, for messages: ("does not exist", "") or ("cannot be decoded",
    the detail); None when ``exc`` is not an image-reading failure."""
    if isinstance(exc, FileNotFoundError):
        return "does not exist", ""
    if isinstance(exc, UnidentifiedImageError):
        return "cannot be decoded", "not an image Pillow can read"
    if isinstance(exc, (OSError, SyntaxError, ValueError)):
        return "cannot be decoded", str(exc)
    return None
