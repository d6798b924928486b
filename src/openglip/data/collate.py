"""Batching: pad images, tokenize captions, turn each box's character spans into a token map."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..prompts import Prompt, load_tokenizer, normalize_phrase, positive_map, token_spans


@dataclass
class GroundingTarget:
    """Ground truth of one image.

    Attributes:
        boxes: (M, 4) x1 y1 x2 y2 in input pixels (after resize, before padding).
        token_map: (M, T) binary map of the tokens each box's phrase spans.
        phrase_ids: (M,) stable id of each box's phrase text (GLIPv2 label propagation), or None.
        masks: (M, H, W) bool instance masks in input pixels, or None.
    """

    boxes: torch.Tensor
    token_map: torch.Tensor
    phrase_ids: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    def to(self, device) -> GroundingTarget:
        return GroundingTarget(
            self.boxes.to(device),
            self.token_map.to(device),
            None if self.phrase_ids is None else self.phrase_ids.to(device),
            None if self.masks is None else self.masks.to(device),
        )


@dataclass
class Batch:
    """A training batch.

    Attributes:
        pixel_values: (B, 3, H, W) normalised, zero-padded to a multiple of ``size_divisibility``.
        image_sizes: (h, w) of each image before padding.
        input_ids, attention_mask: (B, T) tokenized captions (padded to the longest).
        targets: per image, boxes, (M, T) token maps, phrase ids (and masks when the data have them).
        captions: the captions.
        image_ids: ids from the data source.
        token_phrase_ids: (B, T) stable id of the phrase each token belongs to, -1 outside phrases.
    """

    pixel_values: torch.Tensor
    image_sizes: list[tuple[int, int]]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: list[GroundingTarget]
    captions: list[str]
    image_ids: list[int]
    token_phrase_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device) -> Batch:
        return Batch(
            self.pixel_values.to(device, non_blocking=True),
            self.image_sizes,
            self.input_ids.to(device),
            self.attention_mask.to(device),
            [t.to(device) for t in self.targets],
            self.captions,
            self.image_ids,
            None if self.token_phrase_ids is None else self.token_phrase_ids.to(device),
        )


def phrase_key(text: str) -> int:
    """A stable 62-bit id of a phrase's normalised text (equal on every rank and in every batch)."""

    norm = normalize_phrase(text)
    return int.from_bytes(hashlib.sha1(norm.encode("utf-8")).digest()[:8], "little") >> 2


class Collate:
    """``DataLoader`` collate function for (image tensor, target dict) items.

    Boxes whose phrase has no token (e.g. cut by the token limit) are dropped.
    """

    def __init__(self, *, size_divisibility: int = 32, max_text_len: int = 256):
        self.size_divisibility = size_divisibility
        self.max_text_len = max_text_len

    def __call__(self, items: list[tuple[torch.Tensor, dict]]) -> Batch:
        images = [im for im, _ in items]
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        d = self.size_divisibility
        H = -(-max(h for h, _ in sizes) // d) * d
        W = -(-max(w for _, w in sizes) // d) * d
        pixel_values = images[0].new_zeros(len(images), 3, H, W)
        for b, im in enumerate(images):
            pixel_values[b, :, : im.shape[1], : im.shape[2]] = im
        captions = [t["caption"] for _, t in items]
        enc = load_tokenizer()(
            captions, padding="longest", truncation=True, max_length=self.max_text_len, return_tensors="pt"
        )
        T = enc["input_ids"].shape[1]
        targets = []
        token_ids = torch.full((len(items), T), -1, dtype=torch.long)
        for b, (_, t) in enumerate(items):
            caption = t["caption"]
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)
            spans = [tuple((int(s), int(e)) for s, e in sp) for sp in t["spans"]]
            prompt = Prompt(caption, tuple(str(i) for i in range(len(spans))), tuple(spans))
            tmap = positive_map(token_spans(enc[b], prompt), T)
            keep = tmap.sum(1) > 0
            phrase_ids = torch.tensor(
                [phrase_key(caption[sp[0][0] : sp[0][1]]) for sp in spans], dtype=torch.long
            )
            # every phrase of the caption (a detection prompt's negatives too) labels its tokens
            known = list(t.get("phrase_spans", ())) + [(caption[sp[0][0] : sp[0][1]], sp[0]) for sp in spans]
            for text, (s, e) in known:
                single = Prompt(caption, (text,), (((int(s), int(e)),),))
                toks = token_spans(enc[b], single)[0]
                if toks:
                    token_ids[b, toks] = phrase_key(text)
            masks = None
            if t.get("masks") is not None:
                masks = torch.as_tensor(t["masks"], dtype=torch.bool)[keep]
            targets.append(GroundingTarget(boxes[keep], tmap[keep], phrase_ids[keep].reshape(-1), masks))
        return Batch(
            pixel_values,
            sizes,
            enc["input_ids"],
            enc["attention_mask"],
            targets,
            captions,
            [int(t.get("image_id", 0)) for _, t in items],
            token_ids,
        )
