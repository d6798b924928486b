"""A real CLIP as RegionCLIP's teacher, text encoder and student initialisation, through ``open_clip``.

RegionCLIP (Zhong et al., 2022) starts both teacher and student from CLIP ResNet-50. A user who has the weights
names them as ``clip:ARCH:PATH``, e.g. ``clip:RN50:/models/RN50.pt`` (OpenAI's TorchScript release) or an
open_clip checkpoint / safetensors file; nothing is ever downloaded (``pretrained=`` is the local file and the
Hugging Face hub is switched off). ``clip:RN50:random`` builds the architecture with random weights (tests).

Region features follow the paper's RoIAlign design rather than crops: the image runs once through the ResNet
stem and ``layer1``-``layer3`` (C4, stride 16), each region is RoI-aligned to 14 x 14 on C4, then ``layer4`` and
CLIP's attention pooling turn it into a region embedding in CLIP's joint space, exactly as a 224-px image
becomes an image embedding. The text side averages CLIP's prompt templates (:data:`CLIP_TEMPLATES`).
"""

from __future__ import annotations

import functools
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from ..checkpoint_format import CheckpointError
from ..errors import UsageError
from .features import PIXEL_MEAN, PIXEL_STD
from .releases import Release, read_release

PREFIX = "clip:"
# OpenAI CLIP's image normalisation (RGB, 0..1)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# RegionCLIP embeds concepts with the 80 ImageNet prompt templates of CLIP; it is the prompt ensemble its code
# ships. A subset of them (the ones CLIP's paper found most useful) keeps CPU runs short.
CLIP_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "itap of a {}.",
    "a origami {}.",
    "a close-up photo of a {}.",
)


def is_clip(spec: str) -> bool:
    """``spec`` names a CLIP model (``clip:ARCH:PATH``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_clip_spec(spec: str) -> tuple[str, str]:
    """``"clip:RN50:/path/RN50.pt"`` -> ``("RN50", "/path/RN50.pt")``; ``PATH`` may be ``random``.

    Raises:
        UsageError: not of that form, an architecture open_clip does not know, or a missing weights file.
    """
    parts = spec.split(":", 2)
    if len(parts) != 3 or parts[0] != "clip" or not parts[1] or not parts[2]:
        raise UsageError(
            f"CLIP model {spec!r} must be given as clip:ARCH:PATH, e.g. clip:RN50:/models/RN50.pt"
        )
    arch, path = parts[1], parts[2]
    try:
        import open_clip
    except ImportError:
        raise UsageError(f"{spec}: CLIP models need open_clip: pip install 'openglip[clip]'") from None

    if arch not in open_clip.list_models():
        known = [m for m in open_clip.list_models() if m.startswith("RN")]
        raise UsageError(f"{spec}: unknown CLIP architecture {arch!r}; ResNets known to open_clip: {known}")
    if not arch.startswith("RN"):
        raise UsageError(
            f"{spec}: RegionCLIP's region features need a CLIP ResNet (RN50, RN101, ...), not {arch}"
        )
    if path != "random" and not Path(path).is_file():
        raise UsageError(
            f"{spec}: CLIP weights file {path} not found (download it yourself; nothing is fetched)"
        )
    return arch, path


def _is_torchscript(path: str) -> bool:
    """OpenAI's release files are TorchScript archives (``RN50/code/...`` inside the zip)."""

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist()[:200])


@functools.lru_cache(maxsize=2)
def load_clip(spec: str) -> nn.Module:
    """The open_clip model named by ``spec`` (eval mode, fp32, on CPU), cached per spec.

    OpenAI's weights were trained with QuickGELU; a TorchScript release file (OpenAI's format) is loaded with it.

    Raises:
        UsageError: a bad spec, a missing file, or weights of another architecture (the message names the file).
    """
    arch, path = parse_clip_spec(spec)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # open_clip must never reach for the hub
    import open_clip

    if path != "random" and (release := _regionclip_release(path)) is not None:
        return _from_release(arch, path, release)
    # OpenAI's releases are TorchScript archives, which torch.load reads only with weights_only=False
    scripted = path != "random" and _is_torchscript(path)
    try:
        model = open_clip.create_model(
            arch, pretrained=None if path == "random" else path, force_quick_gelu=scripted, device="cpu",
            pretrained_image=False, pretrained_text=False, weights_only=not scripted,
        )  # fmt: skip
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:300]
        raise UsageError(f"{path}: not {arch} CLIP weights ({first})") from None
    except Exception as err:  # a file torch cannot read at all
        raise UsageError(
            f"{path}: cannot read CLIP weights for {arch} ({type(err).__name__}: {err})"
        ) from None
    return model.float().eval().requires_grad_(False)


def _regionclip_release(path: str) -> Release | None:
    """A RegionCLIP release (``regionclip_pretrained-cc_*.pth``, a transferred detector) or OpenAI's CLIP as a plain
    state dict, read into the official key space; None for any other file (open_clip reads those)."""
    if path.endswith(".safetensors") or _is_torchscript(path):
        return None
    try:
        release = read_release(path)
    except CheckpointError:
        return None
    return release if release.layout in ("pretrained", "finetuned", "openai-clip") else None


def _from_release(arch: str, path: str, release: Release) -> nn.Module:
    """open_clip's ``arch`` (QuickGELU, as OpenAI trained it) holding a release's CLIP ResNet (``backbone.*`` ->
    ``visual.*``) and, when the file has it, its text encoder (``lang_encoder.*``); every one of those keys must
    fill a parameter or buffer of the model."""
    import open_clip

    if release.arch != arch:
        raise UsageError(f"{path} holds a {release.arch} CLIP, not {arch}: use clip:{release.arch}:{path}")
    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True, device="cpu")
    state = {}
    for key, value in release.state.items():
        if key.startswith("backbone."):
            state["visual." + key.removeprefix("backbone.")] = value
        elif key.startswith("lang_encoder."):
            state[key.removeprefix("lang_encoder.")] = value
    result = model.load_state_dict(state, strict=False)
    # BatchNorm's num_batches_tracked (no official counterpart) and CLIP's logit scale keep their built values
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked") and k != "logit_scale"]
    if result.unexpected_keys or any(k.startswith("visual.") for k in missing):
        bad = result.unexpected_keys or missing
        raise UsageError(
            f"{path} does not fit open_clip's {arch}: {len(bad)} keys, e.g. {', '.join(bad[:4])}"
        )
    model.has_text = any(k.startswith("lang_encoder.") for k in release.state)  # a transferred detector has none
    return model.float().eval().requires_grad_(False)


class CLIPSentenceEncoder:
    """CLIP's text tower as a sentence encoder: ``sentences(texts) -> (N, D)`` unit vectors.

    Args:
        spec: ``clip:ARCH:PATH`` (also the encoder's ``name``, so a concept pool records which CLIP embedded it).
        device: where the text tower runs.
    """

    def __init__(self, spec: str, *, device: str | torch.device = "cpu"):
        import open_clip

        self.name, self.device = spec, torch.device(device)
        self.model = load_clip(spec)
        if not getattr(self.model, "has_text", True):
            raise UsageError(
                f"{spec}: this file has no CLIP text encoder (a transferred detector); embed text with the "
                "pretrained model (regionclip_pretrained-cc_*.pth) or OpenAI's CLIP"
            )
        self.tokenizer = open_clip.get_tokenizer(parse_clip_spec(spec)[0])
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def sentences(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """``(N, D)`` unit text embeddings, cached per sentence."""
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        self.model.to(self.device)
        for start in range(0, len(new), batch_size):
            chunk = new[start : start + batch_size]
            emb = F.normalize(self.model.encode_text(self.tokenizer(chunk).to(self.device)).float(), dim=-1)
            self._cache.update(zip(chunk, emb.cpu()))
        return torch.stack([self._cache[t] for t in texts]).to(self.device)


class CLIPRegionEncoder(nn.Module):
    """CLIP's ResNet image tower as a region encoder (RoIAlign on C4, then ``layer4`` + attention pooling).

    Args:
        visual: an open_clip ``ModifiedResNet`` (``model.visual``); it is used, not copied.
        roi_size: RoIAlign output side on C4 (14: ``layer4`` halves it to the 7 x 7 grid attention pooling
            expects at 224 px).
    """

    def __init__(self, visual: nn.Module, *, roi_size: int = 14):
        super().__init__()
        if not hasattr(visual, "attnpool") or not hasattr(visual, "layer4"):
            raise UsageError(
                "RegionCLIP's CLIP region encoder needs a CLIP ResNet image tower (RN50, RN101, ...)"
            )
        self.visual, self.roi_size = visual, roi_size
        self.embed_dim = int(visual.attnpool.c_proj.out_features)
        mean = torch.tensor(CLIP_MEAN) * 255.0
        std = torch.tensor(CLIP_STD) * 255.0
        # (x - 127) / 128 -> CLIP's normalisation, as one affine map per channel
        self.register_buffer("in_scale", (PIXEL_STD / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((PIXEL_MEAN - mean) / std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()  # CLIP's statistics: detection batches are too small to re-estimate them
        return self

    def c4(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1024, H/16, W/16)`` C4 map of RegionCLIP-normalised images ``(B, 3, H, W)``."""
        v = self.visual
        x = images * self.in_scale + self.in_shift
        return v.layer3(v.layer2(v.layer1(v.stem(x.to(v.conv1.weight.dtype)))))

    def pool(self, c4_rois: torch.Tensor) -> torch.Tensor:
        """``(K, D)`` embeddings (not normalised) of RoI features ``(K, 1024, r, r)``."""
        return self.visual.attnpool(self.visual.layer4(c4_rois))

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(region embeddings (K, D), image embeddings (B, D))``, not normalised; ``boxes`` one ``(K_i, 4)``
        xyxy px tensor per image."""
        c4 = self.c4(images)
        rois = roi_align(
            c4, [b.to(c4.dtype) for b in boxes], self.roi_size, 1 / 16, sampling_ratio=2, aligned=True
        )
        regions = self.pool(rois) if len(rois) else c4.new_zeros(0, self.embed_dim)
        # the whole image as one region of the same RoI grid (attention pooling has a fixed 7 x 7 grid)
        h, w = images.shape[-2:]
        whole = [torch.tensor([[0.0, 0.0, w, h]], device=c4.device, dtype=c4.dtype)] * images.shape[0]
        image = self.pool(roi_align(c4, whole, self.roi_size, 1 / 16, sampling_ratio=2, aligned=True))
        return regions, image


class CLIPTeacher(nn.Module):
    """A frozen CLIP ResNet as RegionCLIP's teacher: region embeddings by RoIAlign (see
    :class:`CLIPRegionEncoder`), scored against the concept pool with CLIP's logit scale.

    Args:
        spec: ``clip:ARCH:PATH``.
    """

    def __init__(self, spec: str):
        super().__init__()
        model = load_clip(spec)
        self.spec = spec
        self.encoder = CLIPRegionEncoder(model.visual)
        self.register_buffer("log_scale", model.logit_scale.detach().clone().reshape(()))
        self.register_buffer(
            "text_centre", torch.zeros(self.encoder.embed_dim)
        )  # CLIP's space is not centred
        self.requires_grad_(False).eval()

    def scale(self) -> torch.Tensor:
        """CLIP's logit scale (100 for the released models)."""
        return self.log_scale.exp().clamp(max=100.0)

    @torch.no_grad()
    def embed_regions(
        self, images: torch.Tensor, boxes: torch.Tensor | list[torch.Tensor], *, batch: int = 256
    ) -> torch.Tensor:
        """Unit region embeddings ``(K, D)``; ``images (3, H, W)`` with ``boxes (K, 4)``, or ``(B, 3, H, W)``
        with one ``(K_i, 4)`` tensor per image."""
        if images.dim() == 3:
            images, boxes = images[None], [boxes]
        if len(boxes) != images.shape[0]:
            raise ValueError(f"got {len(boxes)} box tensors for {images.shape[0]} images")
        regions, _ = self.encoder(images, list(boxes))
        return F.normalize(regions.float(), dim=-1)

    @torch.no_grad()
    def align(self, region_emb: torch.Tensor, concept_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(best concept (K,), logits (K, C) = cos * logit scale)``."""
        logits = self.scale() * region_emb @ concept_emb.to(region_emb).t()  # (K, C)
        return logits.argmax(1), logits
