"""Real MNIST digits encoded in every image form the endpoint accepts, for decoding and fuzz tests.

Each form is what some real tool writes: drawing apps export a stroke on a transparent canvas (any stroke
colour, anti-aliased edges), scanners and phones write dark-on-light JPEGs (CMYK from print workflows, EXIF
rotation from phones), and imaging tools write 16-bit, palette, WebP, BMP and TIFF files.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

SIZE = 112  # upscaled forms: big enough for resampling to anti-alias the edges


def _encode(picture: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _up(digit: np.ndarray, size: int = SIZE) -> Image.Image:
    return Image.fromarray(digit, mode="L").resize((size, size), Image.Resampling.BILINEAR)


def _on_transparent(ink: Image.Image, colour: tuple[int, int, int], alpha_scale: float = 1.0) -> Image.Image:
    """A stroke of one colour on a fully transparent canvas; the digit's intensity is the alpha."""
    picture = Image.new("RGBA", ink.size, (*colour, 255))
    picture.putalpha(Image.eval(ink, lambda v: round(v * alpha_scale)))
    return picture


def _dark_on_light(digit: np.ndarray, size: int = SIZE) -> Image.Image:
    return Image.eval(_up(digit, size), lambda v: 255 - v)


def _palette_transparent(digit: np.ndarray) -> bytes:
    """A palette PNG: index = grey level, index 0 (the background) fully transparent."""
    picture = Image.fromarray(digit, mode="L").convert("P")
    picture.putpalette([c for v in range(256) for c in (v, v, v)])
    return _encode(picture, "PNG", transparency=0)


def _exif_rotated(digit: np.ndarray) -> bytes:
    """A phone JPEG: pixels stored rotated, EXIF Orientation=6 says "rotate 90 degrees clockwise to view"."""
    stored = _dark_on_light(digit).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(stored, "JPEG", quality=92, exif=exif.tobytes())


def _grey16(digit: np.ndarray) -> bytes:
    values = np.asarray(_up(digit), dtype=np.uint16) * 257
    return _encode(Image.fromarray(values), "PNG")  # mode I;16


# name -> (content type, encoder of one 28x28 uint8 MNIST digit)
FORMS: dict[str, tuple[str, Callable[[np.ndarray], bytes]]] = {
    "png 28x28": ("image/png", lambda d: _encode(Image.fromarray(d, mode="L"), "PNG")),
    "png upscaled rgb dark-on-light": ("image/png", lambda d: _encode(_dark_on_light(d).convert("RGB"), "PNG")),
    "transparent black stroke": ("image/png", lambda d: _encode(_on_transparent(_up(d), (0, 0, 0)), "PNG")),
    "transparent white stroke": ("image/png", lambda d: _encode(_on_transparent(_up(d), (255, 255, 255)), "PNG")),
    "transparent red stroke": ("image/png", lambda d: _encode(_on_transparent(_up(d), (220, 20, 30)), "PNG")),
    "transparent yellow stroke": ("image/png", lambda d: _encode(_on_transparent(_up(d), (250, 230, 40)), "PNG")),
    "transparent 28x28 blue stroke": ("image/png", lambda d: _encode(
        _on_transparent(Image.fromarray(d, mode="L"), (30, 60, 200)), "PNG")),
    "semi-transparent stroke": ("image/png", lambda d: _encode(_on_transparent(_up(d), (0, 0, 0), 0.6), "PNG")),
    "opaque rgba dark-on-light": ("image/png", lambda d: _encode(_dark_on_light(d).convert("RGBA"), "PNG")),
    "opaque rgba light-on-dark": ("image/png", lambda d: _encode(_up(d).convert("RGBA"), "PNG")),
    "palette with transparency": ("image/png", _palette_transparent),
    "grey+alpha (LA) black stroke": ("image/png", lambda d: _encode(
        Image.merge("LA", (Image.new("L", (SIZE, SIZE), 0), _up(d))), "PNG")),
    "16-bit grey png": ("image/png", _grey16),
    "jpeg dark-on-light": ("image/jpeg", lambda d: _encode(_dark_on_light(d).convert("RGB"), "JPEG", quality=90)),
    "jpeg exif-rotated": ("image/jpeg", _exif_rotated),
    "jpeg cmyk": ("image/jpeg", lambda d: _encode(_dark_on_light(d).convert("CMYK"), "JPEG", quality=92)),
    "webp lossless transparent": ("image/webp", lambda d: _encode(
        _on_transparent(_up(d), (20, 20, 20)), "WEBP", lossless=True)),
    "webp lossy dark-on-light": ("image/webp", lambda d: _encode(_dark_on_light(d).convert("RGB"), "WEBP",
                                                                quality=90)),
    "bmp": ("image/bmp", lambda d: _encode(_dark_on_light(d).convert("RGB"), "BMP")),
    "tiff rgba transparent": ("image/tiff", lambda d: _encode(_on_transparent(_up(d), (0, 0, 0)), "TIFF")),
    "tiff 16-bit": ("image/tiff", lambda d: _encode(Image.fromarray(np.asarray(_up(d), np.uint16) * 257),
                                                    "TIFF")),
}


def digit_forms(digit: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """The digit in every form: name -> (body, content type)."""
    digit = np.asarray(digit, dtype=np.uint8)
    return {name: (encode(digit), content_type) for name, (content_type, encode) in FORMS.items()}
