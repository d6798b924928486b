"""detectron2's ResNet and FPN backbones as the official RegionCLIP ``CLIPFastRCNN`` builds its "offline" branch.

Module and buffer names follow microsoft/RegionCLIP (a detectron2 fork, commit ``4b8513b``) so that the released
RPN checkpoints load without renaming: a convolution's kernel is ``<name>.weight`` and its norm ``<name>.norm.*``
(detectron2's ``layers.Conv2d(..., norm=...)``), a stage is ``res<k>.<block>``, FPN levels are
``fpn_lateral<k>`` / ``fpn_output<k>`` and the ResNet sits under ``bottom_up``.

Normalisation, by detectron2's ``get_norm`` names:

* ``"FrozenBN"`` (``RESNETS.NORM`` default): affine with fixed statistics, buffers ``weight``, ``bias``,
  ``running_mean``, ``running_var``;
* ``"SyncBN"`` / ``"BN"`` (the large-scale-jitter RPN, ``OFFLINE_RPN_LSJ_PRETRAINED``): a ``BatchNorm2d``, whose
  state adds ``num_batches_tracked``; always evaluated with its running statistics (see :class:`InferenceBN`);
* ``""``: no norm, and then the convolution has a bias where detectron2 gives it one (FPN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import UsageError

NORMS = ("", "FrozenBN", "BN", "SyncBN")


class FrozenBN(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (buffers weight/bias/running_mean/running_var, no num_batches_tracked),
    evaluated like detectron2's without gradients: one fused ``F.batch_norm`` in inference mode."""

    def __init__(self, num_features: int):
        super().__init__(num_features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class InferenceBN(nn.BatchNorm2d):
    """A ``BatchNorm2d`` (same state-dict keys as detectron2's ``SyncBN``: weight, bias, running_mean,
    running_var, num_batches_tracked) that always normalises with its running statistics.

    In eval mode this is exactly ``nn.BatchNorm2d``. It also ignores train mode on purpose: the official
    ``CLIPFastRCNN`` puts the offline backbone back into eval mode in every training forward, so its statistics
    are never batch statistics and never updated.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def make_norm(norm: str, channels: int) -> nn.Module | None:
    """detectron2's ``get_norm`` for the names used by the offline backbones (eps 1e-5 everywhere)."""
    if norm not in NORMS:
        raise UsageError(f"unknown norm {norm!r}; choose one of {NORMS}")
    if not norm:
        return None
    return FrozenBN(channels) if norm == "FrozenBN" else InferenceBN(channels, eps=1e-5)


class ConvNorm(nn.Conv2d):
    """detectron2's ``layers.Conv2d(..., norm=...)``: the kernel is ``weight`` (and ``bias`` if asked) and the
    norm the child ``norm``, so keys read ``<name>.weight`` and ``<name>.norm.*`` as in the official checkpoints.
    No activation (callers apply ReLU where detectron2 does)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        *,
        norm: str = "FrozenBN",
        bias: bool = False,
    ):
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
        # None registers nothing: a plain attribute, no keys
        self.norm = make_norm(norm, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return x if self.norm is None else self.norm(x)


class BasicStem(nn.Module):
    """7x7/2 conv + norm + ReLU + 3x3/2 max pool (stride 4)."""

    def __init__(self, cin: int = 3, cout: int = 64, norm: str = "FrozenBN"):
        super().__init__()
        self.conv1 = ConvNorm(cin, cout, 7, stride=2, padding=3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a projection shortcut when the width changes.

    The stride sits in the first 1x1 conv (``RESNETS.STRIDE_IN_1X1 True``, the MSRA layout the detectron2
    checkpoints were trained with), not in the 3x3 as in torchvision's ResNet.
    """

    def __init__(self, cin: int, cout: int, bottleneck: int, stride: int, norm: str = "FrozenBN"):
        super().__init__()
        # registered first, as in detectron2, so the state dict lists the shortcut before conv1
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride, norm=norm) if cin != cout else None
        self.conv1 = ConvNorm(cin, bottleneck, 1, stride=stride, norm=norm)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, padding=1, norm=norm)
        self.conv3 = ConvNorm(bottleneck, cout, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """detectron2's ResNet-50 (``stem``, ``res2``..``res5``), built only up to the last requested output, as
    detectron2 drops the unused stages. ``forward`` returns ``{name: feature}`` for ``out_features``.

    Args:
        out_features: stages to return.
        norm: ``RESNETS.NORM`` of every conv. With ``BACKBONE.FREEZE_AT`` > 0 detectron2 turns the frozen stages'
            BN into FrozenBN; the two official layouts never mix: FrozenBN everywhere (the default, where
            freezing changes nothing) or SyncBN everywhere (the LSJ RPN, ``FREEZE_AT 0``).
    """

    BLOCKS = (3, 4, 6, 3)

    def __init__(self, out_features: tuple[str, ...] = ("res4",), norm: str = "FrozenBN"):
        super().__init__()
        self.out_features = tuple(out_features)
        self.stem = BasicStem(norm=norm)
        last = max(int(name[3:]) for name in self.out_features)
        cin, cout, bottleneck = 64, 256, 64
        self.stage_names = []
        for i, blocks in enumerate(self.BLOCKS[: last - 1]):
            name = f"res{i + 2}"
            stage = [
                BottleneckBlock(
                    cin if b == 0 else cout, cout, bottleneck, 2 if (b == 0 and i > 0) else 1, norm=norm
                )
                for b in range(blocks)
            ]
            self.add_module(name, nn.Sequential(*stage))
            self.stage_names.append(name)
            cin, cout, bottleneck = cout, cout * 2, bottleneck * 2
        self.channels = {f"res{i + 2}": 256 * 2**i for i in range(4)}
        self.size_divisibility = 0  # detectron2's Backbone default: a C4 backbone needs no padding

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs


class FPN(nn.Module):
    """detectron2's FPN over ``bottom_up`` res2..res5 (sum fusion, nearest 2x upsampling) plus
    ``LastLevelMaxPool`` (``p6`` = ``max_pool2d(p5, 1, stride 2)``). Returns ``p2``..``p6``.

    Args:
        out_channels: ``FPN.OUT_CHANNELS``.
        norm: ``FPN.NORM`` of the lateral and output convs; as in detectron2 they have a bias only without one.
        resnet_norm: ``RESNETS.NORM`` of the bottom-up ResNet.
    """

    def __init__(self, out_channels: int = 256, norm: str = "", resnet_norm: str = "FrozenBN"):
        super().__init__()
        in_features = ("res2", "res3", "res4", "res5")
        bottom_up = ResNet(out_features=in_features, norm=resnet_norm)
        bias = not norm
        # lateral/output convs are registered before bottom_up, as the official module does (state-dict order)
        for name in in_features:
            level = int(name[3:])
            lateral = ConvNorm(bottom_up.channels[name], out_channels, 1, norm=norm, bias=bias)
            output = ConvNorm(out_channels, out_channels, 3, padding=1, norm=norm, bias=bias)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
        self.bottom_up = bottom_up
        self.in_features = in_features
        self.size_divisibility = 32  # the stride of the coarsest input level (res5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bottom = self.bottom_up(x)
        levels = [int(name[3:]) for name in self.in_features]
        prev = getattr(self, f"fpn_lateral{levels[-1]}")(bottom[self.in_features[-1]])
        results = [getattr(self, f"fpn_output{levels[-1]}")(prev)]
        for name, level in zip(self.in_features[-2::-1], levels[-2::-1]):
            # scale_factor (not a target size) as detectron2 does; padding to 32 keeps the sizes exact halves
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"fpn_lateral{level}")(bottom[name]) + top_down
            results.insert(0, getattr(self, f"fpn_output{level}")(prev))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return {f"p{level}": r for level, r in zip([*levels, levels[-1] + 1], results)}
