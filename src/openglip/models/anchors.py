"""Anchors and the box coder (maskrcnn-benchmark conventions, which GLIP keeps: "+1" widths)."""

from __future__ import annotations

import math

import torch

from ..errors import UsageError


def level_anchors(height: int, width: int, stride: int, size: float, device=None) -> torch.Tensor:
    """One square anchor per location of a ``height x width`` map: ``(H*W, 4)`` xyxy, row-major (y, x).

    The anchor of location (0, 0) is centred on ``(stride - 1) / 2`` with side ``size`` in the "+1" convention,
    e.g. stride 8, size 64 -> ``[-28, -28, 35, 35]``.
    """
    half = (size - 1) / 2.0
    centre = (stride - 1) / 2.0
    cell = torch.tensor([centre - half, centre - half, centre + half, centre + half], device=device)
    xs = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
    ys = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)], dim=1)
    return shifts + cell


class AnchorGenerator:
    """Anchors for every pyramid level, cached by feature-map size (no parameters)."""

    def __init__(self, sizes: tuple[int, ...], strides: tuple[int, ...]):
        if len(sizes) != len(strides):
            raise UsageError(
                f"anchor sizes {tuple(sizes)} and strides {tuple(strides)} need one entry per pyramid level "
                "(model config)"
            )
        self.sizes = tuple(sizes)
        self.strides = tuple(strides)
        self._cache: dict = {}

    def cell_anchors(self) -> list[torch.Tensor]:
        """The (1, 4) anchor at the origin of each level (what official checkpoints store as buffers)."""
        return [level_anchors(1, 1, s, z) for s, z in zip(self.strides, self.sizes)]

    def __call__(self, shapes: list[tuple[int, int]], device) -> list[torch.Tensor]:
        key = (tuple(tuple(int(v) for v in s) for s in shapes), str(device))
        if key not in self._cache:
            self._cache[key] = [
                level_anchors(h, w, stride, size, device)
                for (h, w), stride, size in zip(shapes, self.strides, self.sizes)
            ]
        return self._cache[key]


class BoxCoder:
    """Encodes boxes as (dx, dy, dw, dh) deltas to anchors with weights (wx, wy, ww, wh)."""

    def __init__(self, weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)):
        self.weights = weights
        self.clip = math.log(1000.0 / 16)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """boxes, anchors: (N, 4) xyxy. Returns (N, 4) regression targets."""
        wx, wy, ww, wh = self.weights
        aw = anchors[:, 2] - anchors[:, 0] + 1
        ah = anchors[:, 3] - anchors[:, 1] + 1
        ax = (anchors[:, 2] + anchors[:, 0]) / 2
        ay = (anchors[:, 3] + anchors[:, 1]) / 2
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        bx = (boxes[:, 2] + boxes[:, 0]) / 2
        by = (boxes[:, 3] + boxes[:, 1]) / 2
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)],
            dim=1,
        )

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """deltas, anchors: (N, 4). Returns (N, 4) xyxy boxes."""
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        aw = anchors[:, 2] - anchors[:, 0] + 1
        ah = anchors[:, 3] - anchors[:, 1] + 1
        ax = (anchors[:, 2] + anchors[:, 0]) / 2
        ay = (anchors[:, 3] + anchors[:, 1]) / 2
        dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
        dw = (deltas[:, 2] / ww).clamp(max=self.clip)
        dh = (deltas[:, 3] / wh).clamp(max=self.clip)
        cx, cy = dx * aw + ax, dy * ah + ay
        w, h = torch.exp(dw) * aw, torch.exp(dh) * ah
        return torch.stack(
            [cx - 0.5 * (w - 1), cy - 0.5 * (h - 1), cx + 0.5 * (w - 1), cy + 0.5 * (h - 1)], dim=1
        )
