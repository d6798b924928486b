"""RegionCLIP (Zhong et al., CVPR 2022) on OpenGLIP's data, teacher and trainer.

Region-level visual-semantic alignment learnt from image-caption pairs without box labels, then transferred to
open-vocabulary detection:

1. :class:`ConceptPool` — noun phrases parsed from the captions, counted, embedded with prompt templates.
2. :class:`ContrastiveTeacher` — stands in for CLIP: an image encoder trained by image-caption InfoNCE into the
   frozen text space; it embeds region crops and aligns each region with its best concept.
3. :class:`ProposalNetwork` — a class-agnostic RPN trained on base-category boxes; :func:`random_crops`.
4. :class:`RegionStudent` + :mod:`.losses` — region-text contrastive, image-text contrastive and KL distillation.
5. :class:`OpenVocabDetector` — RPN + student box head, classifier = class-name embeddings + background.
6. :mod:`.evaluate` — novel / base / all AP50 on the shapes val split; :mod:`.cli` — ``openglip regionclip ...``.
"""

from .concepts import ConceptPool, MiniLMText, load_text_encoder
from .config import ConceptConfig, PretrainConfig, RPNConfig, StudentConfig, TeacherConfig, TransferConfig
from .detector import OpenVocabDetector
from .inference import ZeroShotDetector
from .model import RegionStudent
from .proposals import ProposalNetwork, random_crops
from .teacher import ContrastiveTeacher
from .weights import load_detector, load_rpn, load_student, load_teacher

__all__ = [
    "ConceptConfig",
    "ConceptPool",
    "ContrastiveTeacher",
    "MiniLMText",
    "OpenVocabDetector",
    "PretrainConfig",
    "ProposalNetwork",
    "RPNConfig",
    "RegionStudent",
    "StudentConfig",
    "TeacherConfig",
    "TransferConfig",
    "ZeroShotDetector",
    "load_detector",
    "load_rpn",
    "load_student",
    "load_teacher",
    "load_text_encoder",
    "random_crops",
]
