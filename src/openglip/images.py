"""Reading images the way people actually have them: paths, PIL images, numpy arrays; grayscale, RGBA,
palette, CMYK, 16-bit, EXIF-rotated, tiny or huge. Everything becomes an 8-bit RGB PIL image or an
:class:`ImageError` that says what is wrong and where."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import OpenGLIPError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_PIXELS = 250_000_000  # refuse images above 250 megapixels (a decompression bomb or a mistake)
_WORK_SIDE = 4096  # huge images are decoded/reduced to about this size first; the model uses <= 1333


class ImageError(OpenGLIPError):
    """An image that cannot be used, with the reason and where it came from."""


def _to_rgb(image: Image.Image, where: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as err:
        raise ImageError(f"{where}: cannot convert image mode {mode} to RGB ({err})") from None


def _reduce_huge(image: Image.Image) -> Image.Image:
    if max(image.size) <= _WORK_SIDE:
        return image
    scale = _WORK_SIDE / max(image.size)
    # reducing_gap: shrink by an integer factor first (box filter), then resample: fast and as good
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.BILINEAR,
        reducing_gap=2.0,
    )


def open_image(path: str | os.PathLike) -> tuple[Image.Image, tuple[int, int]]:
    """Open an image file as 8-bit RGB with its EXIF orientation applied.

    Returns (image, (height, width) of the oriented original). Images larger than 4096 px are reduced to
    about 4096 px for speed (the model works at <= 1333 px); boxes are mapped back with the original size.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise ImageError(f"{where}: file not found")
    if path.is_dir():
        raise ImageError(f"{where}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{where}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
                w, h = image.size
                if w * h > MAX_PIXELS:
                    raise ImageError(
                        f"{where}: image is {w}x{h} ({w * h / 1e6:.0f} megapixels), above the "
                        f"{MAX_PIXELS // 1_000_000}-megapixel limit"
                    )
                if image.format == "JPEG" and max(w, h) > 2 * _WORK_SIDE:
                    image.draft("RGB", (w * _WORK_SIDE // max(w, h), h * _WORK_SIDE // max(w, h)))
                orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
                image.load()
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{where}: not a readable image ({type(err).__name__}: {err})") from None
    original = (w, h) if orientation in (1, 2, 3, 4) else (h, w)  # EXIF 5-8 swap width and height
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not make a readable image unusable
        original = image.size
    if image.mode in ("L", "RGB", "RGBA"):
        image = _reduce_huge(image)  # before the conversion: a 100-megapixel RGB copy is 300 MB
    return _reduce_huge(_to_rgb(image, where)), (original[1], original[0])


def array_to_image(array: np.ndarray, where: str = "array") -> Image.Image:
    """A numpy image (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16, bool or float in [0, 1]."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        raise ImageError(f"{where}: got a channels-first array {arr.shape}; pass (H, W, C)")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(f"{where}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{where}: image has zero size {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError(f"{where}: array contains NaN or infinity")
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.shape[-1] if arr.ndim == 3 else 2]
    return _to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode), where)


def load_image(source, where: str | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Any supported image source -> (8-bit RGB PIL image, (height, width) of the original).

    Raises:
        ImageError: the source is missing, unreadable, empty, of an unsupported type or too large.
    """
    if isinstance(source, (str, os.PathLike)):
        return open_image(source)
    if isinstance(source, Image.Image):
        try:
            image = ImageOps.exif_transpose(source) or source
        except Exception:
            image = source
        size = (image.height, image.width)
        return _reduce_huge(_to_rgb(image, where or "PIL image")), size
    if isinstance(source, np.ndarray):
        image = array_to_image(source, where or "array")
        return _reduce_huge(image), (image.height, image.width)
    if isinstance(source, torch.Tensor):
        arr = source.detach().cpu()
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.permute(1, 2, 0)
        image = array_to_image(arr.numpy(), where or "tensor")
        return _reduce_huge(image), (image.height, image.width)
    raise ImageError(f"unsupported image type {type(source).__name__}: pass a path, PIL image or numpy array")


def find_images(inputs: list[str]) -> list[Path]:
    """Expand files and directories (recursively, sorted) into image paths; missing inputs raise."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(
                sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            )
        elif p.exists():
            found.append(p)
        else:
            raise ImageError(f"{item}: no such file or directory")
    return found
