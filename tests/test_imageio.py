"""Image reading: every pixel format comes out as RGB uint8; bad files give clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facestream.engines.imageio import ImageError, declared_size, decode_image, read_image

from conftest import DATA

OBAMA = DATA / "fr_examples" / "obama-240p.jpg"


def test_jpeg_is_rgb() -> None:
    image = read_image(OBAMA)
    bgr = cv2.imread(str(OBAMA))
    assert image.shape == (240, 427, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, bgr[:, :, ::-1])


def test_rgba_png_drops_alpha() -> None:
    image = read_image(DATA / "fr_test_images" / "32bit.png")
    rgba = np.asarray(Image.open(DATA / "fr_test_images" / "32bit.png"))
    assert rgba.shape[2] == 4
    np.testing.assert_array_equal(image, rgba[:, :, :3])


def test_grey_and_16_bit(tmp_path: Path) -> None:
    grey = cv2.cvtColor(read_image(OBAMA), cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    image = read_image(tmp_path / "grey.png")
    assert image.shape == (240, 427, 3)
    np.testing.assert_array_equal(image[:, :, 0], grey)
    np.testing.assert_array_equal(image[:, :, 2], grey)
    sixteen = grey.astype(np.uint16) * 257  # 8-bit values spread over 16 bits
    cv2.imwrite(str(tmp_path / "deep.png"), sixteen)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png")[:, :, 1], grey)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    rgb = read_image(OBAMA)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.shape == rgb.shape
    assert np.abs(image.astype(int) - rgb).mean() < 8  # same picture, through lossy CMYK


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    rgb = read_image(OBAMA)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (427, 240, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"hello, not an image", "not an image"),
        (OBAMA.read_bytes()[:3000], "truncated or corrupt JPEG"),
    ],
)
def test_bad_files(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_image(data, "bad.jpg")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)


def test_absurd_declared_size_is_refused_before_decoding() -> None:
    # A valid PNG header that declares 100000 x 100000 pixels (40 GB decoded), with no pixel data.
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = (100_000).to_bytes(4, "big") * 2
    assert declared_size(bytes(png)) == (100_000, 100_000)
    with pytest.raises(ImageError, match="refused before decoding"):
        decode_image(bytes(png), "huge.png")
    jpeg = bytearray(OBAMA.read_bytes())
    assert declared_size(bytes(jpeg)) == (427, 240)
    with pytest.raises(ImageError, match="427x240 = 102,480 pixels"):
        decode_image(bytes(jpeg), "small-limit.jpg", max_pixels=100_000)


@pytest.mark.parametrize("fmt", [".bmp", ".webp", ".gif"])
def test_header_sizes(tmp_path: Path, fmt: str) -> None:
    Image.new("RGB", (123, 45)).save(tmp_path / f"x{fmt}")
    assert declared_size((tmp_path / f"x{fmt}").read_bytes()) == (123, 45)
