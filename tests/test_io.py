"""Reading odd images (gray, RGBA, 16-bit, EXIF-rotated, corrupt) and writing them back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut, camera

from headsup.data.io import ImageReadError, list_images, read_image, save_image


def test_grayscale_reads_as_rgb_and_writes_back_gray(tmp_path):
    Image.fromarray(camera()).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.grayscale and img.rgb.shape == (3, 512, 512)
    assert torch.equal(img.rgb[0], img.rgb[1])
    save_image(tmp_path / "out.png", img.rgb, grayscale=True)
    assert Image.open(tmp_path / "out.png").mode == "L"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), camera())


def test_rgba_keeps_alpha(tmp_path):
    rgba = np.dstack([astronaut()[:64, :64], np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.alpha is not None and img.alpha.shape == (1, 64, 64)
    save_image(tmp_path / "b.png", img.rgb, alpha=img.alpha)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), rgba)


def test_16_bit_png_round_trip(tmp_path):
    gray16 = (camera().astype(np.uint16) * 257 + 3)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.bit_depth == 16
    assert float(img.rgb.max()) <= 1.0
    save_image(tmp_path / "o16.png", img.rgb, grayscale=True, bit_depth=16)
    back = np.asarray(Image.open(tmp_path / "o16.png"))
    assert back.dtype.itemsize >= 2 and np.abs(back.astype(int) - gray16.astype(int)).max() <= 1
    rgb16 = img.rgb.clone()
    save_image(tmp_path / "c16.png", rgb16, bit_depth=16)
    assert read_image(tmp_path / "c16.png").bit_depth == 16


def test_exif_orientation_applied(tmp_path):
    arr = astronaut()[:40, :60]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=100)
    img = read_image(tmp_path / "r.jpg")
    assert img.rgb.shape == (3, 60, 40)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00"])
def test_corrupt_file_error_names_the_file(tmp_path, content):
    bad = tmp_path / "broken photo.png"
    bad.write_bytes(content)
    with pytest.raises(ImageReadError, match="broken photo.png"):
        read_image(bad)


def test_truncated_jpeg_is_an_error(tmp_path):
    Image.fromarray(astronaut()).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")


def test_list_images_sorted_and_filtered(tmp_path):
    for name in ["b.png", "a.JPG", "notes.txt", "sub/c.webp"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp"]
    with pytest.raises(FileNotFoundError, match="missing"):
        list_images(tmp_path / "missing")
