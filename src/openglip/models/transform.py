"""The model's input transform: resize, normalise, pad (GLIP / maskrcnn-benchmark conventions)."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """GLIP's test-time size: shorter side ``min_size`` unless that makes the longer side exceed ``max_size``;
    the other side is truncated, e.g. 300x451 at 800/1333 -> 800x1202."""
    size = min_size
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > max_size:
        # an extreme aspect ratio (1000x2) would round the short side to 0 px: keep at least 1
        size = max(1, round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return max(1, int(size * height / width)), size
    return size, max(1, int(size * width / height))


class ImageTransform:
    """PIL RGB images -> a normalised, padded batch.

    Args:
        min_size, max_size: resize rule (see :func:`resized_size`).
        mean, std: per-channel statistics in the model's channel order and 0..255 range.
        bgr: feed channels as BGR (GLIP) instead of RGB.
        size_divisibility: pad H and W up to a multiple of this.
    """

    def __init__(
        self, *, min_size: int, max_size: int, mean, std, bgr: bool = True, size_divisibility: int = 32
    ):
        self.min_size = min_size
        self.max_size = max_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.bgr = bgr
        self.size_divisibility = size_divisibility

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> resized, normalised (3, h, w) float tensor (no padding)."""
        h, w = resized_size(image.height, image.width, self.min_size, self.max_size)
        if (h, w) != (image.height, image.width):
            image = TF.resize(image, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float()  # RGB 0..255
        if self.bgr:
            x = x.flip(0)
        return (x - self.mean) / self.std

    def pad(
        self, tensors: list[torch.Tensor], size: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Zero-pad a list of (3, h, w) tensors into (B, 3, H, W), H and W multiples of ``size_divisibility``,
        or exactly ``size`` (a shape bucket) when given and large enough."""
        sizes = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
        d = self.size_divisibility
        H = max(h for h, _ in sizes)
        W = max(w for _, w in sizes)
        if d > 1:
            H, W = -(-H // d) * d, -(-W // d) * d
        if size is not None:
            if size[0] < H or size[1] < W:
                raise ValueError(f"pad size {tuple(size)} is smaller than the batch's {H}x{W}")
            H, W = int(size[0]), int(size[1])
        batch = tensors[0].new_zeros(len(tensors), 3, H, W)
        for b, t in enumerate(tensors):
            batch[b, :, : t.shape[1], : t.shape[2]] = t
        return batch, sizes

    def __call__(self, images: list[Image.Image]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        return self.pad([self.to_tensor(im) for im in images])
