"""Stand-ins for RegionCLIP's released files, built from the official key lists of ``shared/reference/
regionclip_rn50`` (``state_dict_shapes*.tsv``) and filled by the reference's deterministic rule, so that a file
loaded through the real release path reproduces the reference's outputs.

Layouts (microsoft/RegionCLIP; how each file is produced is in ``openglip.regionclip.releases``):
transferred detector ``{"model": backbone.* + roi_heads.*}``; pretrained model ``backbone.* + lang_encoder.* +
teacher_backbone.* + offline_*``; RPN (a detectron2 Mask R-CNN) ``backbone.* + proposal_generator.* + roi_heads.*``;
concept embeddings one ``(K, D)`` tensor; OpenAI CLIP ``visual.* + text tower + logit_scale`` and size scalars.
"""

from __future__ import annotations

from pathlib import Path

import torch

from openglip.conformance import read_shape_table, regionclip_fill, unmatched_detections

TABLES = {"ovd": "state_dict_shapes.tsv", "zsinf": "state_dict_shapes_zsinf.tsv"}
# a C4 Mask R-CNN's heads, which an RPN file carries and RegionCLIP drops (shapes as in detectron2's R50-C4)
MASK_RCNN_HEADS = {
    "roi_heads.res5.0.conv1.weight": (512, 1024, 1, 1),
    "roi_heads.box_predictor.cls_score.weight": (49, 2048),
    "roi_heads.box_predictor.bbox_pred.weight": (192, 2048),
    "roi_heads.mask_head.predictor.weight": (48, 256, 1, 1),
}


def official_state(root: Path, ref: dict, config: str, prefixes: tuple[str, ...] = ("",)) -> dict:
    """The reference's filled official state dict of ``config`` (rows under ``prefixes`` only)."""
    rows = [r for r in read_shape_table(root / TABLES[config]) if r["key"].startswith(prefixes)]
    return regionclip_fill(rows, ref["inputs"]["given_emb"])


def _pick(state: dict, *prefixes: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def write_finetuned(path: Path, state: dict, *, masks: bool = False, classes: int | None = None) -> Path:
    """A transferred detector: the CLIP backbone and the box predictor (no open-set test classifier, no offline
    RPN); ``classes`` resizes ``cls_score`` (866 for LVIS), ``masks`` adds the LVIS mask head."""
    model = _pick(state, "backbone.", "roi_heads.")
    model.pop("roi_heads.box_predictor.test_cls_score.weight", None)
    if classes is not None:
        model["roi_heads.box_predictor.cls_score.weight"] = torch.randn(classes, 1024) * 0.02
    if masks:
        model |= {
            "roi_heads.mask_head.deconv.weight": torch.randn(2048, 256, 2, 2) * 0.01,
            "roi_heads.mask_head.deconv.bias": torch.zeros(256),
            "roi_heads.mask_head.predictor.weight": torch.randn(1, 256, 1, 1) * 0.01,
            "roi_heads.mask_head.predictor.bias": torch.zeros(1),
        }
    torch.save({"model": model, "iteration": 89999}, path)
    return path


def write_rpn(path: Path, state: dict) -> Path:
    """A released RPN: the offline keys under detectron2's own names, plus the Mask R-CNN heads."""
    model = {}
    for key, value in _pick(state, "offline_").items():
        model[key.replace("offline_backbone.", "backbone.", 1).replace("offline_proposal_generator.", "proposal_generator.", 1)] = value  # fmt: skip
    model |= {k: torch.zeros(shape) for k, shape in MASK_RCNN_HEADS.items()}
    torch.save({"model": model, "iteration": 1}, path)
    return path


def write_pretrained(path: Path, state: dict) -> Path:
    """A pretrained region-text model: student, text encoder, the teacher and the RPN of its regions."""
    model = _pick(state, "backbone.", "lang_encoder.", "offline_")
    model |= {"teacher_" + k: v for k, v in _pick(state, "backbone.").items()}
    torch.save({"model": model}, path)
    return path


def write_openai_clip(path: Path, state: dict) -> Path:
    """OpenAI's CLIP as a plain state dict (the release is TorchScript; its ``state_dict()`` has these keys)."""
    model = {"visual." + k.removeprefix("backbone."): v for k, v in _pick(state, "backbone.").items()}
    model |= {k.removeprefix("lang_encoder."): v for k, v in _pick(state, "lang_encoder.").items()}
    model |= {"logit_scale": torch.tensor(4.6052), "input_resolution": torch.tensor(224),
              "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}  # fmt: skip
    torch.save(model, path)
    return path


def unmatched(got, ref: dict, iou: float = 0.99, score: float = 1e-4) -> int:
    """:func:`openglip.conformance.unmatched_detections` of a head's detections."""
    return unmatched_detections(got.boxes, got.scores, got.classes, ref, iou, score)


def write_pretrained_from_clip(path: Path, clip_model, *, text: bool = True) -> Path:
    """A pretrained-layout release made from an open_clip CLIP model (``visual.*`` -> ``backbone.*`` and the
    teacher, the text tower -> ``lang_encoder.*``): what ``regionclip_pretrained-cc_rn50.pth`` holds, minus its
    RPN. ``text=False`` gives a transferred detector's CLIP part (no text encoder)."""
    visual = {
        k.removeprefix("visual."): v for k, v in clip_model.state_dict().items() if k.startswith("visual.")
    }
    visual = {k: v for k, v in visual.items() if not k.endswith("num_batches_tracked")}
    model = {"backbone." + k: v for k, v in visual.items()} | {
        "teacher_backbone." + k: v for k, v in visual.items()
    }
    if text:
        model |= {
            "lang_encoder." + k: v
            for k, v in clip_model.state_dict().items()
            if not k.startswith("visual.") and k != "logit_scale"
        }
    else:
        model |= {"roi_heads.box_predictor.cls_score.weight": torch.zeros(48, 1024),
                  "roi_heads.box_predictor.cls_bg_score.weight": torch.zeros(1, 1024),
                  "roi_heads.box_predictor.bbox_pred.weight": torch.zeros(4, 1024),
                  "roi_heads.box_predictor.bbox_pred.bias": torch.zeros(4)}  # fmt: skip
    torch.save({"model": model}, path)
    return path
