"""RegionCLIP (Zhong et al., CVPR 2022) on OpenGLIP's data readers, evaluator and trainer.

Region-level visual-semantic alignment learnt from image-caption pairs without box labels, then transferred to
open-vocabulary detection:

1. :class:`ConceptPool` — noun phrases parsed from the captions, counted, embedded with prompt templates by a
   :class:`SentenceEncoder` (MiniLM-L6, or a CLIP text tower from a local file).
2. The teacher that aligns each region to its best concept: a CLIP ResNet (:class:`CLIPTeacher`, RoIAlign on C4 +
   attention pooling) when the user has the weights, else the small stand-in :class:`ContrastiveTeacher`.
3. :class:`ProposalNetwork` — a class-agnostic RPN trained on base-category boxes; :func:`random_crops`.
4. :class:`RegionStudent` / :class:`CLIPStudent` + :mod:`.losses` — region-text contrastive, image-text
   contrastive and KL distillation.
5. :class:`OpenVocabDetector` — RPN + student box head, classifier = class-name embeddings + background, unseen
   classes calibrated by the frozen pretrained student.
6. :class:`OfficialRegionCLIP` / :func:`load_official` — the released models of microsoft/RegionCLIP
   (``CLIPFastRCNN``: offline RPN, CLIP ResNet region head, official post-processing; :mod:`.releases`).
7. :mod:`.data` (user files or the shapes world, one path), :mod:`.evaluate` (detection AP per split and r/c/f,
   region classification with ground-truth boxes). The CLI is ``openglip regionclip ...``.
"""

from .clip import CLIPSentenceEncoder, CLIPTeacher
from .concepts import ConceptPool, MiniLMText, SentenceEncoder, load_sentence_encoder
from .config import ConceptConfig, PretrainConfig, RPNConfig, StudentConfig, TeacherConfig, TransferConfig
from .detector import OpenVocabDetector
from .inference import ZeroShotDetector
from .model import CLIPStudent, RegionStudent
from .proposals import ProposalNetwork, random_crops
from .rcnn import OfficialRegionCLIP
from .rcnn_load import load_official
from .teacher import ContrastiveTeacher
from .weights import load_detector, load_region_teacher, load_rpn, load_student

__all__ = [
    "CLIPSentenceEncoder",
    "CLIPStudent",
    "CLIPTeacher",
    "ConceptConfig",
    "ConceptPool",
    "ContrastiveTeacher",
    "MiniLMText",
    "OfficialRegionCLIP",
    "OpenVocabDetector",
    "PretrainConfig",
    "ProposalNetwork",
    "RPNConfig",
    "RegionStudent",
    "SentenceEncoder",
    "StudentConfig",
    "TeacherConfig",
    "TransferConfig",
    "ZeroShotDetector",
    "load_detector",
    "load_official",
    "load_region_teacher",
    "load_rpn",
    "load_sentence_encoder",
    "load_student",
    "random_crops",
]
