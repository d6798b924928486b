"""Image inputs people actually have: every mode handled or refused with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from openglip import ImageError
from openglip.images import MAX_PIXELS, find_images, load_image


def _save(tmp_path, image: Image.Image, name: str, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


@pytest.fixture()
def photo(chelsea):
    return Image.fromarray(chelsea)


def test_grayscale_rgba_palette_cmyk_16bit_become_rgb(tmp_path, photo):
    rgb = np.asarray(photo)
    cases = {
        "gray.png": photo.convert("L"),
        "rgba.png": photo.convert("RGBA"),
        "palette.png": photo.convert("P"),
        "cmyk.jpg": photo.convert("CMYK"),
    }
    for name, im in cases.items():
        out, size = load_image(_save(tmp_path, im, name))
        assert out.mode == "RGB" and out.size == photo.size and size == (photo.height, photo.width), name
    gray16 = (np.asarray(photo.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    out, _ = load_image(_save(tmp_path, Image.fromarray(gray16), "gray16.png"))
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out)[..., 0].astype(int) - np.asarray(photo.convert("L")).astype(int)).max() <= 1
    # transparent pixels are composited on white, opaque ones keep their colour
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    out, _ = load_image(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "alpha.png"))
    arr = np.asarray(out)
    assert (arr[:10, :10] == 255).all() and (arr[20:, 20:] == rgb[20:, 20:]).all()


def test_exif_orientation_is_applied(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = _save(tmp_path, photo, "rotated.jpg", exif=exif.tobytes())
    out, size = load_image(path)
    assert out.size == (photo.height, photo.width)  # width and height swapped
    assert size == (photo.width, photo.height)


def test_numpy_variants(chelsea):
    assert load_image(chelsea)[0].size == (451, 300)
    assert load_image(chelsea[..., 0])[0].mode == "RGB"
    assert load_image(chelsea.astype(np.float32) / 255.0)[0].getpixel((0, 0)) == tuple(chelsea[0, 0])
    assert load_image(chelsea.astype(np.uint16) * 257)[0].getpixel((5, 5)) == tuple(chelsea[5, 5])
    with pytest.raises(ImageError, match="channels-first"):
        load_image(np.zeros((3, 20, 30), np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan))
    with pytest.raises(ImageError, match="zero size"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="unsupported image type"):
        load_image(12345)


def test_bad_files_say_what_and_where(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    for path, words in (
        (empty, "empty"),
        (corrupt, "not a readable image"),
        (tmp_path / "missing.jpg", "not found"),
    ):
        with pytest.raises(ImageError) as err:
            load_image(path)
        assert words in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_tiny_and_huge_images_run_end_to_end(tiny_detector, tmp_path, monkeypatch):
    one = tiny_detector.predict(np.full((1, 1, 3), 128, np.uint8), "cat", box_threshold=0.0)
    assert one.image_size == (1, 1) and (one.xyxy <= 1).all()
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 9000, 3), dtype=np.uint8))
    path = _save(tmp_path, big, "panorama.png")
    dets = tiny_detector.predict(str(path), "cat", box_threshold=0.0)
    assert dets.image_size == (300, 9000)
    assert dets.xyxy[:, 2].max() > 4096  # boxes come back in original pixels
    import openglip.images as images_module

    monkeypatch.setattr(images_module, "MAX_PIXELS", 1_000_000)
    with pytest.raises(ImageError, match="megapixel limit"):
        load_image(path)
    assert MAX_PIXELS >= 100_000_000


def test_find_images_walks_directories(tmp_path, photo):
    (tmp_path / "a").mkdir()
    _save(tmp_path / "a", photo, "x.jpg")
    _save(tmp_path, photo, "y.png")
    (tmp_path / "notes.txt").write_text("not an image")
    found = find_images([str(tmp_path)])
    assert [p.name for p in found] == ["x.jpg", "y.png"]
    with pytest.raises(ImageError, match="no such file"):
        find_images([str(tmp_path / "nope")])
