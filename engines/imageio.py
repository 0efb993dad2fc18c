"""Read image files into RGB uint8 arrays, safely: size checked before decoding, clear errors.

Grey, RGBA (alpha dropped), 16-bit (scaled to 8-bit) and CMYK JPEGs all come out as
(H, W, 3) uint8 RGB. EXIF orientation is applied, so a phone photo enrols upright.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError

DEFAULT_MAX_PIXELS = 40_000_000


def work_pixels(width: int, height: int, upsample: int) -> int:
    """Pixels the detector works on: each upsampling doubles both sides (dlib's pyramid_up)."""
    return int(width) * int(height) * 4 ** max(0, int(upsample))


def check_work(width: int, height: int, upsample: int, max_work: int | None, name: str,
               key: str = "detector.max_work_pixels") -> None:  # fmt: skip
    """ImageError when width x height at `upsample` is more detector work than `max_work` allows (None: no budget;
    `key` names the setting the budget came from).

    The detector's memory and time grow with the upsampled pixel count, and a file of a few KB can declare
    millions of pixels, so the budget is checked on the header, before anything is decoded."""
    if max_work is None:
        return
    work = work_pixels(width, height, upsample)
    if work > max_work:
        side = int((max_work / 4 ** max(0, int(upsample))) ** 0.5)
        raise ImageError(
            f"{name}: {width}x{height} at upsample {upsample} is {work:,} pixels of detector work, more than the "
            f"budget of {max_work:,} ({key}); refused before decoding. Scale it down to about "
            f"{side}x{side} pixels" + (", or use upsample 0 for large photos" if upsample > 0 else "")
        )


class ImageError(InputError, ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


_MAGIC = [
    (b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"),
]  # fmt: skip


def image_format(header: bytes) -> str | None:
    """The file format named by the first bytes, or None when they name no known image format."""
    return next((name for magic, name in _MAGIC if header.startswith(magic)), None)


def declared_size(header: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG, PNG, GIF, BMP or WebP header, without decoding; None if unknown."""
    if header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR":
        return struct.unpack(">II", header[16:24])
    if header[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", header[6:10])
    if header[:2] == b"BM" and len(header) >= 26:
        width, height = struct.unpack("<ii", header[18:26])
        return abs(width), abs(height)
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        chunk = header[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(header[24:27], "little"), 1 + int.from_bytes(header[27:30], "little")
        if chunk == b"VP8 ":
            width, height = struct.unpack("<HH", header[26:30])
            return width & 0x3FFF, height & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(header[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if header[:2] == b"\xff\xd8":
        return _jpeg_size(header)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        position += 2 + length
    return None


def to_rgb8(decoded: np.ndarray) -> np.ndarray:
    """An OpenCV BGR / grey / BGRA image of 8 or 16 bits -> (H, W, 3) uint8 RGB."""
    if decoded.dtype == np.uint16:
        decoded = ((decoded.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {decoded.dtype}")
    if decoded.ndim == 2:
        return np.repeat(decoded[:, :, None], 3, axis=2)
    if decoded.shape[2] == 4:
        return np.ascontiguousarray(decoded[:, :, 2::-1])
    if decoded.flags.c_contiguous:  # swap in place: a 36-megapixel decode need not be held twice
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB, dst=decoded)
    return np.ascontiguousarray(decoded[:, :, ::-1])


def decode_image(
    data: bytes,
    name: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    orient: bool = True,
    *,
    upsample: int = 0,
    max_work: int | None = None,
    work_key: str = "detector.max_work_pixels",
) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, refusing absurd sizes before decoding (and, with `max_work`,
    images that are more detector work at `upsample` than that budget: see `check_work`).

    `orient=False` ignores the EXIF orientation (as Pillow's `Image.open` does)."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    size = declared_size(data[: 1 << 16])
    if size is not None:
        width, height = size
        if width == 0 or height == 0:
            raise ImageError(f"{name}: the header declares an empty image ({width}x{height})")
        if width * height > max_pixels:
            raise ImageError(
                f"{name}: the header declares {width}x{height} = {width * height:,} pixels, more than the limit "
                f"of {max_pixels:,} (detector.max_image_pixels); refused before decoding"
            )
        check_work(width, height, upsample, max_work, name, work_key)
    buffer = np.frombuffer(data, dtype=np.uint8)
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | (0 if orient else cv2.IMREAD_IGNORE_ORIENTATION)
    decoded = cv2.imdecode(buffer, flags)
    if decoded is None:
        kind = image_format(data[:16])
        raise ImageError(f"{name}: a truncated or corrupt {kind} file" if kind else f"{name}: not an image file")
    if decoded.shape[0] * decoded.shape[1] > max_pixels:
        raise ImageError(
            f"{name}: {decoded.shape[1]}x{decoded.shape[0]} pixels is more than the limit of {max_pixels:,}"
        )
    check_work(decoded.shape[1], decoded.shape[0], upsample, max_work, name, work_key)
    return to_rgb8(decoded)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, *, upsample: int = 0,
               max_work: int | None = None) -> np.ndarray:  # fmt: skip
    """Read an image file as (H, W, 3) uint8 RGB; raises ImageError with the path and the reason."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot read: {error.strerror or error}") from None
    return decode_image(data, str(path), max_pixels, upsample=upsample, max_work=max_work)
