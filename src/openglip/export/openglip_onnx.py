"""Run an OpenGLIP ONNX export with ONNX Runtime and numpy alone (no torch, no openglip).

``openglip export`` copies this file beside the model, so a deployment folder is self-contained::

    import openglip_onnx                                   # this file
    det = openglip_onnx.OnnxDetector("deploy/model.onnx")  # reads the model's metadata
    dets = det.predict(["a.jpg", "b.jpg"])                 # fixed vocabulary: the phrases are in the model
    dets = det.predict("a.jpg", "cat. remote control.")    # open vocabulary: any prompt
    print(dets[0].phrases, dets[0].xyxy, dets[0].scores)

Needs ``numpy``, ``pillow`` (images), ``onnxruntime`` (the session) and, for open-vocabulary models,
``tokenizers`` (the ``model.tokenizer.json`` written beside the model).

The functions below follow openglip step by step, so that the same model gives the same boxes:

* :func:`preprocess` = ``openglip.models.transform.ImageTransform``: shorter side ``min_size`` (longer side at most
  ``max_size``, PIL bilinear), channels flipped to BGR when the model wants it, ``(x - mean) / std`` in 0..255
  units, zero padding at the bottom/right to a multiple of ``size_divisibility``. The model input is that
  ``(B, 3, H, W)`` float32 batch.
* :func:`parse_prompt` and :func:`encode_prompts` = ``openglip.prompts``: phrases are the text between periods
  (``"person. red car."``) or a list of names joined by ``". "``; each phrase's tokens come from the tokenizer's
  character offsets. (openglip also splits free text without periods into noun phrases; here such a text is one
  phrase.)
* :func:`postprocess` = ``openglip.models.postprocess.PostProcessor``: phrase score = mean sigmoid of the phrase's
  token logits; candidates above ``pre_nms_thresh``, the best ``pre_nms_top_n`` per level by score x
  sigmoid(centerness), boxes clipped to the image ("+1" pixel convention), per-phrase NMS, the best
  ``detections_per_image``; the final score is ``sqrt(score x centerness)``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

SEPARATOR = ". "  # openglip joins class names with ". "


# ------------------------------------------------------------------------------------------------------------
# metadata
# ------------------------------------------------------------------------------------------------------------


def read_metadata(session) -> dict:
    """The ``openglip.*`` metadata of an ONNX Runtime session as Python values (keys without the prefix)."""
    raw = session.get_modelmeta().custom_metadata_map
    meta = {k.removeprefix("openglip."): json.loads(v) for k, v in raw.items() if k.startswith("openglip.")}
    if "mode" not in meta:
        raise ValueError("this ONNX model has no openglip metadata; export it with `openglip export`")
    return meta


# ------------------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------------------


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """openglip's test-time size: shorter side ``min_size`` unless the longer side would exceed ``max_size``."""
    size = min_size
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > max_size:
        size = round(max_size * short / long)
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def load_image(image):
    """A path, a PIL image or an (H, W, 3) uint8 RGB array -> an RGB PIL image (EXIF orientation applied)."""

    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                im = ImageOps.exif_transpose(im)
                return im.convert("RGB")
        except OSError as err:  # truncated, not an image, unreadable: say which file of a list it was
            raise OSError(f"{image}: cannot read the image ({err})") from err
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8), "RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def to_array(image, meta: dict) -> np.ndarray:
    """One RGB PIL image -> the resized, normalised (3, h, w) float32 array (not padded)."""

    h, w = resized_size(image.height, image.width, meta["min_size"], meta["max_size"])
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), Image.BILINEAR)
    x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)  # RGB, 0..255
    if meta["bgr"]:
        x = x[::-1]
    mean = np.asarray(meta["pixel_mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(meta["pixel_std"], dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / std


def pad(arrays: list[np.ndarray], divisibility: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Zero-pad (3, h, w) arrays into one (B, 3, H, W) batch, H and W multiples of ``divisibility``."""
    sizes = [(int(a.shape[1]), int(a.shape[2])) for a in arrays]
    H = max(h for h, _ in sizes)
    W = max(w for _, w in sizes)
    if divisibility > 1:
        H, W = -(-H // divisibility) * divisibility, -(-W // divisibility) * divisibility
    batch = np.zeros((len(arrays), 3, H, W), dtype=np.float32)
    for b, a in enumerate(arrays):
        batch[b, :, : a.shape[1], : a.shape[2]] = a
    return batch, sizes


def preprocess(images: list, meta: dict) -> tuple[np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]:
    """Images -> (pixel_values (B, 3, H, W) float32, resized (h, w) per image, original (h, w) per image)."""
    loaded = [load_image(im) for im in images]
    batch, sizes = pad([to_array(im, meta) for im in loaded], meta["size_divisibility"])
    return batch, sizes, [(im.height, im.width) for im in loaded]


# ------------------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """A caption and its phrases; ``spans[i]`` is phrase i's (start, end) characters in the caption."""

    caption: str
    phrases: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]


def parse_prompt(prompt) -> Prompt:
    """``"person. red car."`` (text between periods) or ``["person", "red car"]`` (joined by ". ")."""
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, str):
        phrases, spans = [], []
        for m in re.finditer(r"[^.]+", prompt):
            text = m.group(0)
            stripped = text.strip()
            if stripped:
                start = m.start() + (len(text) - len(text.lstrip()))
                phrases.append(stripped)
                spans.append((start, start + len(stripped)))
        if not phrases:
            raise ValueError(f"no phrase in the prompt {prompt!r}; name objects, e.g. 'cat. dog.'")
        return Prompt(prompt, tuple(phrases), tuple(spans))
    caption, phrases, spans = "", [], []
    names = [" ".join(str(n).split()) for n in prompt]
    for i, name in enumerate(names):
        if not name:
            raise ValueError(f"class name #{i} is empty")
        spans.append((len(caption), len(caption) + len(name)))
        caption += name + (SEPARATOR if i < len(names) - 1 else "")
        phrases.append(name)
    if not phrases:
        raise ValueError("the prompt is empty: give at least one class name")
    return Prompt(caption, tuple(phrases), tuple(spans))


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved beside an open-vocabulary model (``tokenizers`` package, no transformers)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


# A copy of openglip.prompts._char_to_token (GLIP's rule, with token_spans): this file is copied beside exported
# models and imports nothing from openglip (no torch), so it keeps its own; a change to one is made to both.
def _char_to_token(encoding, char: int, step: int, tries: int = 3):
    for k in range(tries):
        pos = char + step * k
        if pos < 0:
            break
        tok = encoding.char_to_token(pos)
        if tok is not None:
            return tok
    return None


def positive_map(encoding, prompt: Prompt, num_tokens: int) -> np.ndarray:
    """(P, T) float32 map with ones at each phrase's tokens (openglip's ``token_spans`` rule)."""
    pmap = np.zeros((len(prompt.phrases), num_tokens), dtype=np.float32)
    for i, (start, end) in enumerate(prompt.spans):
        first = _char_to_token(encoding, start, +1)
        last = _char_to_token(encoding, end - 1, -1)
        if first is None or last is None:
            raise ValueError(f"phrase {prompt.phrases[i]!r} has no tokens in caption {prompt.caption!r}")
        pmap[i, first : last + 1] = 1.0
    return pmap


def encode_prompts(tokenizer, prompts: list[Prompt], max_len: int):
    """Tokenize one prompt per image -> input_ids (B, T) int64, attention_mask (B, T) int64 (zero-padded to the
    longest caption) and the (P_b, T) positive map of each prompt."""
    encodings = [tokenizer.encode(p.caption) for p in prompts]
    longest = max(len(e.ids) for e in encodings)
    if longest > max_len:
        raise ValueError(
            f"a caption of {longest} tokens exceeds the model's {max_len}-token limit; use fewer phrases per prompt"
        )
    ids = np.zeros((len(prompts), longest), dtype=np.int64)
    mask = np.zeros((len(prompts), longest), dtype=np.int64)
    maps = []
    for b, (enc, p) in enumerate(zip(encodings, prompts)):
        ids[b, : len(enc.ids)] = enc.ids
        mask[b, : len(enc.ids)] = 1
        maps.append(positive_map(enc, p, longest))
    return ids, mask, maps


# ------------------------------------------------------------------------------------------------------------
# post-processing
# ------------------------------------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


def phrase_scores(logits: np.ndarray, pmap: np.ndarray) -> np.ndarray:
    """Mean token probability of each phrase: logits (N, T), pmap (P, T) -> (N, P)."""
    T = logits.shape[-1]
    pmap = pmap[:, :T].astype(np.float32)
    weights = pmap / np.maximum(pmap.sum(1, keepdims=True), 1.0)
    return sigmoid(logits) @ weights.T


def level_counts(height: int, width: int, strides: list[int]) -> list[int]:
    """Locations per pyramid level of a padded (height, width) input: ceil(H / s) * ceil(W / s)."""
    return [(-(-height // s)) * (-(-width // s)) for s in strides]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices kept, best first; a box whose IoU with a kept one exceeds the threshold goes."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def select(boxes, scores, labels, meta: dict):
    """Per-phrase NMS ("+1" areas) and the best ``detections_per_image``, sorted by score."""
    if scores.size == 0:
        return boxes, scores, labels
    plus_one = boxes.astype(np.float64) + np.array([0.0, 0.0, 1.0, 1.0])
    keep = np.concatenate(
        [
            np.flatnonzero(labels == c)[nms(plus_one[labels == c], scores[labels == c], meta["nms_thresh"])]
            for c in np.unique(labels)
        ]
    )
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    k = meta["detections_per_image"]
    if scores.size > k > 0:
        # keep every box scoring at least the k-th best score, as openglip does (ties can give a few more)
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        mask = scores >= kth
        boxes, scores, labels = boxes[mask], scores[mask], labels[mask]
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order], labels[order]


def candidates(scores, centerness, boxes, size, counts, meta: dict):
    """One image's pre-NMS candidates.

    Args:
        scores: (N, P) phrase scores; centerness: (N,) logits; boxes: (N, 4) decoded xyxy in input pixels.
        size: (h, w) of the image inside the padded batch; counts: locations per level.

    Returns boxes (K, 4) clipped to the image, scores (K,) = sqrt(score * centerness), labels (K,).
    """
    h, w = size
    ctr = sigmoid(centerness)
    out_boxes, out_scores, out_labels = [], [], []
    start = 0
    for count in counts:
        s = scores[start : start + count]
        keep = s > meta["pre_nms_thresh"]
        if keep.any():
            loc, label = np.nonzero(keep)
            values = (s * ctr[start : start + count, None])[loc, label]
            k = min(meta["pre_nms_top_n"], values.size)
            if k < values.size:
                top = np.argpartition(-values, k - 1)[:k]
                loc, label, values = loc[top], label[top], values[top]
            b = boxes[start + loc]
            b = np.stack(
                [
                    b[:, 0].clip(0, w - 1),
                    b[:, 1].clip(0, h - 1),
                    b[:, 2].clip(0, w - 1),
                    b[:, 3].clip(0, h - 1),
                ],
                axis=1,
            )
            out_boxes.append(b)
            out_scores.append(np.sqrt(values))
            out_labels.append(label)
        start += count
    if not out_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(out_boxes), np.concatenate(out_scores), np.concatenate(out_labels).astype(np.int64)


def postprocess(outputs: dict, sizes: list[tuple[int, int]], meta: dict, positive_maps=None) -> list[tuple]:
    """Model outputs -> per image ``(boxes (K, 4), scores (K,), labels (K,))`` in input (resized) pixels.

    ``outputs`` maps output names to arrays. A model exported with ``--nms`` has done the selection: its
    ``det_*`` outputs are used. Otherwise openglip's rules run here; an open-vocabulary model's token
    ``logits`` need each image's ``positive_maps`` (P_b, T).
    """
    results = []
    if "det_scores" in outputs:
        for b in range(len(sizes)):
            keep = outputs["det_scores"][b] > 0
            results.append(
                (
                    outputs["det_boxes"][b][keep],
                    outputs["det_scores"][b][keep],
                    outputs["det_labels"][b][keep].astype(np.int64),
                )
            )
        return results
    boxes = outputs["boxes"]
    H, W = meta["padded_size"]
    counts = level_counts(H, W, meta["strides"])
    if sum(counts) != boxes.shape[1]:
        raise ValueError(f"{boxes.shape[1]} locations in the outputs, {sum(counts)} expected for {H}x{W}")
    for b, size in enumerate(sizes):
        if "scores" in outputs:
            scores = outputs["scores"][b]
        else:
            scores = phrase_scores(outputs["logits"][b], positive_maps[b])
        cand = candidates(scores, outputs["centerness"][b], boxes[b], size, counts, meta)
        results.append(select(*cand, meta))
    return results


# ------------------------------------------------------------------------------------------------------------
# the detector
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Detections:
    """One image's detections: ``xyxy`` (K, 4) float32 in original image pixels, ``scores`` (K,), ``labels``
    (K,) indices into ``prompt_phrases``, ``phrases`` the label strings."""

    xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    phrases: list[str]
    prompt_phrases: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.scores)


class OnnxDetector:
    """An exported OpenGLIP model in ONNX Runtime.

    Args:
        path: the ``.onnx`` file written by ``openglip export``.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: intra-op threads (default: ONNX Runtime's choice).
        tokenizer: the tokenizer JSON of an open-vocabulary model (default: the one named in its metadata,
            beside the model).
    """

    def __init__(self, path, *, providers=None, threads: int | None = None, tokenizer=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.meta = read_metadata(self.session)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.fixed = self.meta["mode"] == "fixed"
        self.tokenizer = None
        if not self.fixed:
            tok = tokenizer or os.path.join(os.path.dirname(os.path.abspath(path)), self.meta["tokenizer"])
            self.tokenizer = load_tokenizer(tok)

    @property
    def phrases(self) -> tuple[str, ...]:
        """The baked-in phrases of a fixed-vocabulary model."""
        return tuple(self.meta.get("phrases", ()))

    def feeds(
        self, pixel_values: np.ndarray, sizes, prompts: list[Prompt] | None = None
    ) -> tuple[dict, list]:
        """The session's inputs for a preprocessed batch: (feeds by name, each image's positive map or None)."""
        feeds = {"images": pixel_values}
        maps = None
        if not self.fixed:
            ids, mask, maps = encode_prompts(self.tokenizer, prompts, self.meta["max_text_len"])
            feeds.update(input_ids=ids, attention_mask=mask)
            if "positive_map" in self.inputs:
                P = max(m.shape[0] for m in maps)
                dense = np.zeros((len(maps), P, ids.shape[1]), dtype=np.float32)
                for b, m in enumerate(maps):
                    dense[b, : m.shape[0]] = m
                feeds["positive_map"] = dense
        if "image_sizes" in self.inputs:
            feeds["image_sizes"] = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        return feeds, maps

    def run(self, pixel_values: np.ndarray, sizes, prompts: list[Prompt] | None = None, names=None):
        """Run the session on a preprocessed batch. Returns (outputs by name, each image's positive map or None);
        ``names`` defaults to the outputs post-processing needs."""
        feeds, maps = self.feeds(pixel_values, sizes, prompts)
        if names is None:
            names = (
                ["det_boxes", "det_scores", "det_labels"]
                if self.meta["nms"]
                else [n for n in ("scores", "logits", "boxes", "centerness") if n in self.outputs]
            )
        return dict(zip(names, self.session.run(list(names), feeds))), maps

    def predict(self, images, prompt=None, *, prompts=None, box_threshold: float = 0.3) -> list[Detections]:
        """Detect in a list of images (a single image is a list of one).

        Args:
            images: paths, PIL images or (H, W, 3) RGB uint8 arrays, batched together.
            prompt: open vocabulary: one prompt for every image (``"cat. dog."`` or a list of names).
            prompts: open vocabulary: one prompt per image instead.
            box_threshold: minimum score of a returned box.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        if self.fixed:
            if prompt is not None or prompts is not None:
                raise ValueError(
                    f"this model's phrases are fixed ({'. '.join(self.phrases)}); give no prompt"
                )
            parsed = [Prompt(self.meta["caption"], self.phrases, ())] * len(images)
        elif (prompt is None) == (prompts is None):
            raise ValueError("an open-vocabulary model needs prompt= (shared) or prompts= (one per image)")
        else:
            parsed = (
                [parse_prompt(p) for p in prompts]
                if prompts is not None
                else [parse_prompt(prompt)] * len(images)
            )
            if len(parsed) != len(images):
                raise ValueError(f"{len(parsed)} prompts for {len(images)} images")
        pixel_values, sizes, originals = preprocess(images, self.meta)
        outputs, maps = self.run(pixel_values, sizes, None if self.fixed else parsed)
        results = postprocess(outputs, sizes, {**self.meta, "padded_size": pixel_values.shape[-2:]}, maps)
        detections = []
        for (boxes, scores, labels), (h, w), (oh, ow), p in zip(results, sizes, originals, parsed):
            keep = scores >= box_threshold
            scale = np.array([ow / w, oh / h, ow / w, oh / h], dtype=np.float32)
            detections.append(
                Detections(
                    (boxes[keep] * scale).astype(np.float32),
                    scores[keep].astype(np.float32),
                    labels[keep],
                    [p.phrases[k] for k in labels[keep]],
                    p.phrases,
                )
            )
        return detections
