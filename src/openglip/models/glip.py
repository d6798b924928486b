"""The GLIP detector: image backbone + FPN, text encoder, deep-fusion tower, grounding head.

``GLIP.forward`` returns raw tensors (:class:`GLIPOutput`); :mod:`openglip.losses` turns them into losses and
:class:`openglip.models.postprocess.PostProcessor` into detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from ..prompts import load_tokenizer
from .anchors import AnchorGenerator
from .backbones import build_backbone
from .contrastive import InterImageContrastive
from .dyhead import DyConv, FusionBlock, FusionTower
from .fpn import FPN
from .fusion import BiMultiHeadAttention, CrossModalFusion, TextLayer
from .head import GroundingHead
from .masks import MaskHead
from .text_encoder import VOCAB_SIZE, TextEncoder
from .vl_heads import LMHead, VQAHead, causal_mask


@dataclass
class TextFeatures:
    """Encoded prompts (the part that can be cached per prompt).

    Attributes:
        input_ids: (B, T) token ids.
        attention_mask: (B, T), 1 for real tokens, 0 for padding.
        hidden: (B, T, Dt) last text-encoder layer (padding rows included, as GLIP feeds them to the fusion).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    hidden: torch.Tensor

    def to(self, device) -> TextFeatures:
        return TextFeatures(self.input_ids.to(device), self.attention_mask.to(device), self.hidden.to(device))

    def pad_to(self, length: int) -> TextFeatures:
        """Pad to ``length`` tokens with zero ids, mask 0 and zero features (the real tokens' outputs do not
        change: padded tokens are masked out of every attention over text)."""
        extra = length - self.hidden.shape[1]
        if extra <= 0:
            return self
        F = nn.functional
        return TextFeatures(
            F.pad(self.input_ids, (0, extra)),
            F.pad(self.attention_mask, (0, extra)),
            F.pad(self.hidden, (0, 0, 0, extra)),
        )

    @staticmethod
    def cat(items: Sequence[TextFeatures]) -> TextFeatures:
        """Batch text features of different lengths (padded with zeros and mask 0)."""
        T = max(t.hidden.shape[1] for t in items)

        def pad(x, value=0):
            return nn.functional.pad(
                x, (0, 0, 0, T - x.shape[1]) if x.ndim == 3 else (0, T - x.shape[1]), value=value
            )

        return TextFeatures(
            torch.cat([pad(t.input_ids) for t in items]),
            torch.cat([pad(t.attention_mask) for t in items]),
            torch.cat([pad(t.hidden) for t in items]),
        )


@dataclass
class GLIPOutput:
    """Raw outputs of :class:`GLIP` (L pyramid levels, N_l = H_l * W_l locations).

    Attributes:
        logits: per level (B, N_l, T) region-word alignment logits.
        box_regression: per level (B, 4, H_l, W_l) box deltas (after the per-level scale).
        centerness: per level (B, 1, H_l, W_l) centerness logits.
        anchors: per level (N_l, 4) xyxy anchors in input pixels (shared by the batch).
        text_mask: (B, T) 1 for real tokens.
        image_sizes: (h, w) of each image inside the padded batch.
        visual: per level (B, D, H_l, W_l) pre-fusion FPN features (GLIPv2's inter-image loss uses them).
        text: (B, T, Dt) pre-fusion text features.
        fused_visual, fused_text: the tower outputs the head reads.
    """

    logits: list[torch.Tensor]
    box_regression: list[torch.Tensor]
    centerness: list[torch.Tensor]
    anchors: list[torch.Tensor]
    text_mask: torch.Tensor
    image_sizes: list[tuple[int, int]]
    visual: list[torch.Tensor]
    text: torch.Tensor
    fused_visual: list[torch.Tensor]
    fused_text: torch.Tensor


class GLIP(nn.Module):
    """Grounded language-image detector.

    Each part can be passed in; :func:`build_model` builds them from a :class:`ModelConfig`.

    Args:
        backbone: image -> [C3, C4, C5] with ``out_channels``.
        fpn: [C3, C4, C5] -> [P3..P7].
        text_encoder: (input_ids, mask) -> (B, T, Dt).
        tower: deep-fusion tower.
        head: grounding head.
        anchor_generator: per-level anchors.
        tokenizer: a ``transformers`` fast tokenizer used when ``forward`` gets caption strings.
        max_text_len: token limit of one caption (longer captions must be chunked by the caller).
        contrastive: GLIPv2's inter-image contrastive projections (see :mod:`openglip.losses.contrastive`).
        mask_head: optional :class:`~openglip.models.masks.MaskHead` (instance and referring segmentation).
        mlm_head, vqa_head, caption_head: GLIPv2's understanding heads (:mod:`openglip.models.vl_heads`); they read
            ``GLIPOutput.fused_text``. ``answer_vocab`` names the VQA head's classes.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        fpn: nn.Module,
        text_encoder: nn.Module,
        tower: nn.Module,
        head: GroundingHead,
        anchor_generator: AnchorGenerator,
        tokenizer=None,
        max_text_len: int = 256,
        config: ModelConfig | None = None,
        contrastive: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mlm_head: nn.Module | None = None,
        vqa_head: nn.Module | None = None,
        caption_head: nn.Module | None = None,
        answer_vocab: Sequence[str] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.text_encoder = text_encoder
        self.tower = tower
        self.head = head
        self.anchor_generator = anchor_generator
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.config = config
        if contrastive is not None:  # GLIPv2's inter-image loss projections (training only)
            self.contrastive = contrastive
        if mask_head is not None:  # GLIPv2's segmentation head
            self.mask_head = mask_head
        for name, head_ in (("mlm_head", mlm_head), ("vqa_head", vqa_head), ("caption_head", caption_head)):
            if head_ is not None:  # GLIPv2's understanding heads
                setattr(self, name, head_)
        self.answer_vocab = None if answer_vocab is None else list(answer_vocab)

    @property
    def word_embeddings(self) -> torch.Tensor:
        """(V, Dt) the text encoder's word embeddings (the tied decoder of the MLM and caption heads)."""
        return self.text_encoder.bert.embeddings.word_embeddings.weight

    # -- text ---------------------------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (input_ids, attention_mask), padded to the longest caption, not to 256."""
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer; pass text features instead of captions")
        enc = self.tokenizer(list(captions), padding="longest", return_tensors="pt")
        if enc["input_ids"].shape[1] > self.max_text_len:
            raise ValueError(
                f"caption of {enc['input_ids'].shape[1]} tokens exceeds the {self.max_text_len}-token limit; "
                "use openglip.prompts.chunk_prompt (Detector.predict does it for you)"
            )
        return enc["input_ids"], enc["attention_mask"]

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, causal: bool = False
    ) -> TextFeatures:
        """Token ids -> text features; ``causal``: each token sees only itself and earlier tokens (captioning)."""
        device = self.head.bias0.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if causal:
            hidden = self.text_encoder(input_ids, causal_mask(attention_mask)[:, None])  # (B, 1, T, T) mask
        else:
            hidden = self.text_encoder(input_ids, attention_mask)
        return TextFeatures(input_ids, attention_mask, hidden)

    # -- image --------------------------------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised, padded images -> P3..P7 FPN maps."""
        return self.fpn(self.backbone(pixel_values))

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        captions: Sequence[str] | None = None,
        *,
        text: TextFeatures | None = None,
        visual: list[torch.Tensor] | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        causal: bool = False,
        detect: bool = True,
    ) -> GLIPOutput:
        """Run the detector on a batch.

        Args:
            pixel_values: (B, 3, H, W) normalised and padded (see :class:`ImageTransform`).
            image_sizes: (h, w) of each image before padding; defaults to the full padded size.
            captions: B caption strings; or ``input_ids``/``attention_mask`` (B, T) already tokenized; or
                ``text`` already encoded (e.g. cached).
            visual: precomputed FPN features (to run several prompt chunks on one image pass).
            causal: caption mode (see :mod:`openglip.models.vl_heads`): the text attends causally, the image only
                to [CLS]. Text features passed in ``text`` must then have been encoded with ``causal=True``.
            detect: run the grounding head (``False``: ``logits``, ``box_regression``, ``centerness`` and
                ``anchors`` are empty lists; VQA and captioning read only ``fused_text``).
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        B = pixel_values.shape[0]
        if image_sizes is None:
            image_sizes = [tuple(pixel_values.shape[-2:])] * B
        if text is None and input_ids is not None:
            text = self.encode_text(
                input_ids, attention_mask if attention_mask is not None else input_ids.ne(0), causal=causal
            )
        if text is None:
            if captions is None:
                raise ValueError("give captions, input_ids or text features")
            if len(captions) != B:
                raise ValueError(f"{len(captions)} captions for {B} images")
            text = self.encode_text(*self.tokenize(captions), causal=causal)
        if visual is None:
            visual = self.encode_image(pixel_values)
        dense = self.fuse_and_predict(visual, text.hidden, text.attention_mask, causal=causal, detect=detect)
        return self.make_output(pixel_values, image_sizes, visual, text, dense)

    def compile_parts(self, **options) -> None:
        """``torch.compile`` the tensor-only parts of :meth:`forward` in place (:meth:`encode_image` and
        :meth:`fuse_and_predict`; the tokenizer, anchors and output wrapping stay eager). ``options`` go to
        ``torch.compile``. The training loop uses it (``compile=true``); :class:`~openglip.api.Detector` compiles
        its own copies instead, so that a shared model is left as it is."""
        self.encode_image = torch.compile(self.encode_image, **options)
        self.fuse_and_predict = torch.compile(self.fuse_and_predict, **options)

    def fuse_and_predict(
        self,
        visual: list[torch.Tensor],
        text_hidden: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        causal: bool = False,
        detect: bool = True,
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The image-text part of :meth:`forward`: fusion tower then head, on tensors only (what
        ``torch.compile`` sees in :class:`~openglip.api.Detector`'s compiled path).

        Returns ``(fused_visual, fused_text, logits, box_regression, centerness)`` as in :class:`GLIPOutput`
        (``causal`` and ``detect`` as in :meth:`forward`).
        """
        fused_visual, fused_text = self.tower(visual, text_hidden, text_mask, causal=causal)
        logits, boxes, centers = self.head(fused_visual, fused_text) if detect else ([], [], [])
        return fused_visual, fused_text, logits, boxes, centers

    def make_output(
        self,
        pixel_values: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
        visual: list[torch.Tensor],
        text: TextFeatures,
        dense: tuple,
    ) -> GLIPOutput:
        """Wrap the tensors of :meth:`fuse_and_predict` (``dense``) with anchors and sizes into a GLIPOutput."""
        fused_visual, fused_text, logits, boxes, centers = dense
        anchors = self.anchor_generator([f.shape[-2:] for f in visual], pixel_values.device) if logits else []
        return GLIPOutput(
            logits=logits,
            box_regression=boxes,
            centerness=centers,
            anchors=anchors,
            text_mask=text.attention_mask,
            image_sizes=[tuple(s) for s in image_sizes],
            visual=visual,
            text=text.hidden,
            fused_visual=fused_visual,
            fused_text=fused_text,
        )


FUSION_KINDS = ("deep", "late")


def build_tower(cfg: ModelConfig) -> FusionTower:
    """The tower of ``cfg.fusion_layers`` blocks.

    ``fusion="deep"``: each block is [cross-attention, BERT layer (``fusion_text_layers``), DyConv] (GLIP).
    ``fusion="late"``: each block is the DyConv alone (GLIP-T (A) of the paper's ablation): no cross-modality
    parameters, the image features do not depend on the prompt, and the text reaches the image only through
    the head's alignment dot product. The DyConv keys are the same in both, so a late-fusion model's
    checkpoint is a deep-fusion one without the cross-attention and text-layer keys.
    """
    if cfg.fusion not in FUSION_KINDS:
        raise ValueError(f"fusion must be one of {', '.join(FUSION_KINDS)}, not {cfg.fusion!r}")
    deep = cfg.fusion == "deep"
    blocks = []
    for _ in range(cfg.fusion_layers):
        cross = (
            CrossModalFusion(
                BiMultiHeadAttention(
                    v_dim=cfg.fpn_channels,
                    l_dim=cfg.text_hidden,
                    embed_dim=cfg.fusion_embed_dim,
                    num_heads=cfg.fusion_heads,
                    dropout=cfg.fusion_dropout,
                    clamp=cfg.clamp_attention,
                ),
                layer_scale_init=cfg.layer_scale_init,
            )
            if deep
            else None
        )
        text_layer = (
            TextLayer(
                hidden=cfg.text_hidden,
                heads=cfg.text_heads,
                intermediate=cfg.text_intermediate,
                dropout=cfg.fusion_dropout,
            )
            if deep and cfg.fusion_text_layers
            else None
        )
        dyconv = DyConv(
            cfg.fpn_channels,
            deformable=cfg.deformable,
            dyrelu=cfg.dyrelu,
            groups=cfg.group_norm_groups,
            official_quirk=cfg.official_dcn_quirk,
            residual=cfg.dyconv_residual,
        )
        blocks.append(FusionBlock(cross, text_layer, dyconv))
    return FusionTower(blocks)


def build_model(cfg: ModelConfig) -> GLIP:
    """Build a randomly initialised :class:`GLIP` (pretrained parts named in ``cfg`` are loaded)."""

    backbone = build_backbone(cfg)
    fpn = FPN(in_channels=list(backbone.out_channels), out_channels=cfg.fpn_channels)
    text_encoder = TextEncoder(
        hidden=cfg.text_hidden,
        layers=cfg.text_layers,
        heads=cfg.text_heads,
        intermediate=cfg.text_intermediate,
        weights=cfg.text_weights,
    )
    head = GroundingHead(
        channels=cfg.fpn_channels,
        text_dim=cfg.text_hidden,
        num_levels=cfg.num_levels,
        legacy_classes=cfg.legacy_classes,
        prior_prob=cfg.prior_prob,
    )
    return GLIP(
        backbone=backbone,
        fpn=fpn,
        text_encoder=text_encoder,
        tower=build_tower(cfg),
        head=head,
        anchor_generator=AnchorGenerator(cfg.anchor_sizes, cfg.anchor_strides),
        tokenizer=load_tokenizer(),
        max_text_len=cfg.max_text_len,
        config=cfg,
        contrastive=(
            InterImageContrastive(
                visual_dim=cfg.fpn_channels, text_dim=cfg.text_hidden, dim=cfg.inter_image_dim
            )
            if cfg.inter_image_dim > 0
            else None
        ),
        mask_head=MaskHead(in_channels=cfg.fpn_channels, channels=cfg.mask_channels)
        if cfg.mask_head
        else None,
        mlm_head=LMHead(cfg.text_hidden, VOCAB_SIZE) if cfg.mlm_head else None,
        vqa_head=VQAHead(cfg.text_hidden, cfg.vqa_answers, cfg.fpn_channels) if cfg.vqa_answers > 0 else None,
        caption_head=LMHead(cfg.text_hidden, VOCAB_SIZE) if cfg.caption_head else None,
    )
