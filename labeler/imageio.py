"""Decoding images to RGB arrays: EXIF orientation, odd modes, reduced-size JPEG decoding.

Every step reads pixels through :func:`decode_image` (or :func:`load_rgb`), so ingest's
"is this file usable" check and detection see exactly the same thing:

* EXIF orientation is applied; sizes are reported after orientation.
* Every mode becomes 8-bit RGB: CMYK (Adobe inverted CMYK included), 16-bit grayscale
  (scaled, not clipped), grayscale, palette, and anything with alpha (composited on white).
* JPEGs are decoded with libjpeg's DCT scaling (``Image.draft``) when a smaller result is
  enough: a 1/2 or 1/4 decode costs about half of a full one.
* Decompression bombs are refused *before* pixels are allocated: an image whose header
  claims more than ``max_pixels`` (default ``PIL.Image.MAX_IMAGE_PIXELS``) raises
  :class:`ImageDecodeError`. The global limit is never switched off.

Undecodable input raises :class:`ImageDecodeError`, a ``ValueError`` whose message is one
line naming the file.

>>> dec = decode_image("photo.jpg", max_side=512)  # doctest: +SKIP
>>> dec.rgb.shape, dec.scale  # doctest: +SKIP
((384, 512, 3), (2.0, 2.0))
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from labeler.errors import LabelerError

log = logging.getLogger(__name__)

#: File name extensions (lower case, with the dot) that ``labeler ingest`` looks at.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)  # GIF: the first frame

#: Leading bytes of the formats above (``looks_like_image``): checked before a file is read.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
)


def looks_like_image(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file, >= 12) starts like a supported image."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(m) for m in _MAGIC)


# EXIF orientation values that swap width and height.
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})

Source = str | os.PathLike[str] | bytes | IO[bytes]


class ImageDecodeError(LabelerError, ValueError):
    """A file could not be decoded into an RGB image (message: one line naming the file)."""


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An RGB image and how it maps back to the original (oriented) image.

    ``rgb`` is ``(H, W, 3)`` uint8. ``scale = (sx, sy)``: original pixels per decoded pixel,
    so a point ``(x, y)`` in ``rgb`` is ``(x * sx, y * sy)`` in the original image.
    ``width``/``height`` are the original size after EXIF orientation.
    """

    rgb: np.ndarray
    scale: tuple[float, float]
    width: int
    height: int
    format: str

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` points from decoded pixels to original pixels."""
        return np.asarray(points, dtype=np.float32) * np.asarray(self.scale, dtype=np.float32)


def _name(source: Source, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return display_path(os.fspath(source))
    return "<bytes>"


def display_path(path: str | bytes) -> str:
    """A printable, valid-UTF-8 version of a file name (undecodable bytes as ``\\xNN``)."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def _oriented_size(img: object, width: int, height: int) -> tuple[int, int]:
    try:
        orientation = img.getexif().get(0x0112, 1)  # type: ignore[attr-defined]
    except Exception:  # broken EXIF must not make a decodable image unusable
        orientation = 1
    if orientation in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def _to_rgb(img: object) -> np.ndarray:
    """Any PIL image -> ``(H, W, 3)`` uint8 (16-bit scaled, alpha composited on white)."""
    from PIL import Image

    assert isinstance(img, Image.Image)
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float32)
        # 16-bit data (I;16*, or 16-bit PNGs that Pillow opens as "I"): scale 0..65535 -> 0..255.
        if mode != "I" or arr.max(initial=0) > 255:
            arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if hi > 1.0 or lo < 0.0:  # arbitrary float range: stretch to 0..255
            arr = (arr - lo) / max(hi - lo, 1e-12)
        gray = np.clip(np.rint(np.nan_to_num(arr) * 255), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def decode_image(
    source: Source,
    *,
    max_side: int | None = None,
    min_side: int | None = None,
    max_pixels: int | None = None,
    name: str | None = None,
) -> DecodedImage:
    """Decode ``source`` (a path, bytes or a binary file object) to 8-bit RGB.

    ``max_side``: when given, the result's longest side is at most this many pixels (JPEGs
    use DCT-scaled decoding first, then a resize). ``min_side``: any result whose longest
    side is at least this is fine; JPEGs are decoded at the cheapest DCT scale (1/2, 1/4,
    1/8) that keeps it, other formats at full size, never resized (the fast path for a
    detector that resizes internally anyway). Give at most one of the two. ``max_pixels`` (default
    ``PIL.Image.MAX_IMAGE_PIXELS``) refuses larger images before decoding them. ``name`` is
    used in error messages for bytes/file-object input.

    Raises :class:`ImageDecodeError` (one line naming the file) for anything undecodable.
    """
    from PIL import Image, ImageOps

    label = _name(source, name)
    for what, value in (("max_side", max_side), ("min_side", min_side)):
        if value is not None and value < 1:
            raise ValueError(f"{what} must be a positive number of pixels, got {value}")
    if max_side is not None and min_side is not None:
        raise ValueError("give max_side or min_side, not both")
    target = max_side if max_side is not None else min_side
    with _decode_errors(label), _open_checked(source, label, max_pixels) as img:
        raw_w, raw_h = img.size
        width, height = _oriented_size(img, raw_w, raw_h)
        fmt = img.format or "?"
        if target is not None and fmt == "JPEG" and max(raw_w, raw_h) > target:
            r = target / max(raw_w, raw_h)
            img.draft("RGB", (max(1, math.ceil(raw_w * r)), max(1, math.ceil(raw_h * r))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        out = ImageOps.exif_transpose(img) or img
        if max_side is not None and max(out.size) > max_side:
            r = max_side / max(out.size)
            size = (max(1, round(out.size[0] * r)), max(1, round(out.size[1] * r)))
            if out.mode not in ("RGB", "L", "RGBA", "LA", "CMYK", "P", "1"):
                out = Image.fromarray(_to_rgb(out))
            if out.mode in ("P", "1"):
                out = out.convert("RGBA" if "transparency" in out.info else "RGB")
            out = out.resize(size, Image.BILINEAR, reducing_gap=2.0)
        rgb = np.ascontiguousarray(_to_rgb(out))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ImageDecodeError(f"{label}: decoded to an unusable array of shape {rgb.shape}")
    h, w = rgb.shape[:2]
    return DecodedImage(
        rgb=rgb, scale=(width / w, height / h), width=width, height=height, format=fmt
    )


def image_size(
    source: Source, *, max_pixels: int | None = None, name: str | None = None
) -> tuple[int, int, str]:
    """``(width, height, format)`` of ``source`` after EXIF orientation, from the header only:
    no pixel is decoded (a file whose pixels are damaged passes; :func:`decode_image` finds
    it). Raises :class:`ImageDecodeError` like :func:`decode_image` for everything the
    header shows (not an image, a decompression bomb, a truncated header)."""
    label = _name(source, name)
    with _decode_errors(label), _open_checked(source, label, max_pixels) as img:
        width, height = _oriented_size(img, *img.size)
        return width, height, img.format or "?"


@contextlib.contextmanager
def _open_checked(source: Source, label: str, max_pixels: int | None) -> Iterator[Any]:
    """``PIL.Image.open`` of ``source``, refusing images over ``max_pixels`` (default
    ``PIL.Image.MAX_IMAGE_PIXELS``) before any pixel is decoded."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    fp: object = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(fp)  # type: ignore[arg-type]
    with img:
        raw_w, raw_h = img.size
        if limit and raw_w * raw_h > limit:
            raise ImageDecodeError(
                f"{label}: refused, {raw_w}x{raw_h} = {raw_w * raw_h:,} pixels is over the "
                f"limit of {limit:,} (decompression-bomb guard; raise "
                "PIL.Image.MAX_IMAGE_PIXELS if the file is genuine)"
            )
        yield img


@contextlib.contextmanager
def _decode_errors(label: str) -> Iterator[None]:
    """Turn what PIL raises for a bad file into one-line :class:`ImageDecodeError` s."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        msg = " ".join(str(exc).split())
        raise ImageDecodeError(
            f"{label}: refused ({msg}); raise PIL.Image.MAX_IMAGE_PIXELS if the file is genuine"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{label}: not an image (no known image format)") from None
    except FileNotFoundError:
        raise ImageDecodeError(f"{label}: file not found") from None
    except PermissionError:
        raise ImageDecodeError(f"{label}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageDecodeError(f"{label}: cannot decode ({msg})") from None


def load_rgb(path: str | os.PathLike[str], *, max_side: int | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of ``path``; see :func:`decode_image` for the scale factor.

    >>> load_rgb("face.png", max_side=256).shape  # doctest: +SKIP
    (256, 256, 3)
    """
    return decode_image(path, max_side=max_side).rgb


def encode_jpeg(rgb: np.ndarray, *, quality: int = 92) -> bytes:
    """JPEG bytes of an ``(H, W, 3)`` uint8 RGB array."""
    import cv2

    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError(f"cannot encode an array of shape {rgb.shape} as JPEG")
    return buf.tobytes()


def decode_crop_bytes(data: bytes) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a crop's JPEG bytes, decoded whole as
    :func:`labeler.embeddings.embed.load_crop` decodes the crop files (so features computed
    from these pixels equal those computed from the files)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def write_jpeg(path: Path, rgb: np.ndarray, *, quality: int = 92) -> None:
    """Write ``rgb`` as JPEG: a crash leaves either no file or a complete one (no fsync)."""
    write_bytes(path, encode_jpeg(rgb, quality=quality))


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically without fsync (:func:`labeler._io.atomic_write_bytes`):
    a crash leaves either no file or a complete one. Safe from several threads."""
    from labeler._io import atomic_write_bytes

    atomic_write_bytes(path, data, fsync=False)
