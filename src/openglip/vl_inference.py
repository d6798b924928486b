"""Inference of GLIPv2's understanding heads: answering questions, writing captions (greedy or beam search) and
grounded captioning (a caption, then its noun phrases grounded by the detection head of the same model).

:class:`~openglip.api.Detector` exposes them as ``det.answer(...)`` and ``det.caption(...)``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import UsageError
from .images import load_image
from .prompts import Prompt, get_extractor, load_tokenizer
from .structures import Detections

CLS, SEP, PAD, UNK, MASK = 101, 102, 0, 100, 103  # bert-base-uncased special tokens


@functools.lru_cache(maxsize=1)
def never_emitted() -> tuple[int, ...]:
    """Token ids a caption never contains: every special token but [SEP] (which ends it) and BERT's
    ``[unused*]`` placeholders (never seen in training, so their logits are noise)."""
    tokenizer = load_tokenizer()
    unused = [i for t, i in tokenizer.get_vocab().items() if re.fullmatch(r"\[unused\d+\]", t)]
    return tuple(sorted({*tokenizer.all_special_ids, PAD, UNK, CLS, MASK, *unused} - {SEP}))


def _block_repeats(logp: torch.Tensor, prefix: torch.Tensor, n: int) -> torch.Tensor:
    """``logp`` (B, V) with -inf for every token that would repeat an ``n``-gram of its row's ``prefix`` (B, t)
    ([CLS] excluded): the n-gram blocking of captioning decoders (``no_repeat_ngram_size``)."""
    if n < 1 or prefix.shape[1] - 1 < n - 1:
        return logp
    rows = prefix[:, 1:].tolist()
    for b, row in enumerate(rows):
        tail = tuple(row[len(row) - n + 1 :]) if n > 1 else ()
        banned = {row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i : i + n - 1]) == tail}
        if banned:
            logp[b, list(banned)] = float("-inf")
    return logp


@dataclass
class GroundedCaption:
    """A generated caption and the boxes of its noun phrases.

    Attributes:
        caption: the caption.
        detections: boxes whose ``phrases`` are spans of ``caption`` (``prompt_phrases`` lists every noun
            phrase found, ``labels`` index into it).

    Unpacks as ``caption, detections = det.caption(image, grounded=True)``.
    """

    caption: str
    detections: Detections

    def __iter__(self):
        return iter((self.caption, self.detections))


def _images(detector, images, blind: bool) -> tuple[torch.Tensor, list[tuple[int, int]], list]:
    loaded = [load_image(im, where=f"image #{i}") for i, im in enumerate(images)]
    pixel_values, sizes = detector.transform.pad([detector.transform.to_tensor(im) for im, _ in loaded])
    if blind:  # the language-only baseline: every image is the same constant (the mean colour)
        pixel_values = torch.zeros_like(pixel_values)
    return pixel_values.to(detector.device), sizes, loaded


def check_question(question: str, max_tokens: int) -> str:
    """A question as the model takes it.

    Raises:
        UsageError: an empty question or one longer than the text limit.
    """
    if not isinstance(question, str) or not question.strip():
        raise UsageError("the question is empty: ask something, e.g. --question 'what colour is the star?'")
    n = len(
        load_tokenizer()(question, verbose=False)["input_ids"]
    )  # no "longer than 512" warning before the error
    if n > max_tokens:
        raise UsageError(f"the question is {n} tokens long, more than the model's {max_tokens}-token limit")
    return question.strip()


@torch.no_grad()
def answer_questions(
    detector, images: Sequence, questions: Sequence[str], *, batch_size: int = 8, blind: bool = False
) -> list[str]:
    """The VQA head's top answer for each (image, question) pair."""
    model = detector.model
    if getattr(model, "vqa_head", None) is None or not model.answer_vocab:
        raise UsageError("this model has no VQA head; train one with: openglip train ... task=vqa")
    if len(images) != len(questions):
        raise UsageError(f"{len(questions)} questions for {len(images)} images")
    questions = [check_question(q, model.max_text_len) for q in questions]
    out: list[str] = []
    for start in range(0, len(images), batch_size):
        pixel_values, sizes, _ = _images(detector, images[start : start + batch_size], blind)
        ids, mask = model.tokenize(questions[start : start + batch_size])
        with detector._autocast():
            fused = model(pixel_values, sizes, input_ids=ids, attention_mask=mask, detect=False)
            logits = model.vqa_head(fused.fused_text[:, 0], fused.fused_visual)  # (B, A)
        out.extend(model.answer_vocab[int(i)] for i in logits.float().argmax(-1))
    return out


def _next_logprobs(
    model, pixel_values, sizes, visual, prefix: torch.Tensor, no_repeat: int = 0
) -> torch.Tensor:
    """(B, V) log-probabilities of the token after ``prefix`` (B, t): special and ``[unused*]`` tokens excluded,
    and (``no_repeat`` > 0) every token that would repeat an n-gram of that size."""
    out = model(pixel_values, sizes, input_ids=prefix, attention_mask=torch.ones_like(prefix), visual=visual,
                causal=True, detect=False)  # fmt: skip
    logits = model.caption_head(out.fused_text[:, -1], model.word_embeddings).float()
    logits[:, [i for i in never_emitted() if i < logits.shape[1]]] = float("-inf")
    return _block_repeats(logits.log_softmax(-1), prefix, no_repeat)


def greedy_decode(
    model, pixel_values, sizes, *, max_length: int = 32, no_repeat_ngram_size: int = 3
) -> list[list[int]]:
    """Token ids (without [CLS]/[SEP]) of the most likely next token at every step, for a batch of images
    (never repeating an n-gram of ``no_repeat_ngram_size`` tokens; 0 allows repeats)."""
    visual = model.encode_image(pixel_values)
    B = pixel_values.shape[0]
    prefix = torch.full((B, 1), CLS, dtype=torch.long, device=pixel_values.device)
    done = torch.zeros(B, dtype=torch.bool, device=pixel_values.device)
    for _ in range(max_length):
        nxt = _next_logprobs(model, pixel_values, sizes, visual, prefix, no_repeat_ngram_size).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, SEP), nxt)
        prefix = torch.cat([prefix, nxt[:, None]], dim=1)
        done |= nxt == SEP
        if bool(done.all()):
            break
    return [[int(t) for t in row[1:] if int(t) != SEP][:max_length] for row in _cut(prefix)]


def _cut(prefix: torch.Tensor) -> list[torch.Tensor]:
    rows = []
    for row in prefix:
        ends = (row == SEP).nonzero()
        rows.append(row[: int(ends[0])] if len(ends) else row)
    return rows


def beam_search(model, pixel_values, sizes, *, beam_size: int = 3, max_length: int = 32,
                no_repeat_ngram_size: int = 3) -> list[int]:  # fmt: skip
    """Beam search for one image (``pixel_values`` (1, 3, H, W)): keeps the ``beam_size`` best prefixes by summed
    log-probability; a prefix that emits [SEP] is finished; returns the best finished caption's token ids
    (without [CLS]/[SEP]), or the best unfinished one at ``max_length``. With ``beam_size=1`` this is greedy.
    No prefix repeats an n-gram of ``no_repeat_ngram_size`` tokens (0 allows repeats)."""
    if pixel_values.shape[0] != 1:
        raise ValueError("beam_search decodes one image at a time")
    visual = model.encode_image(pixel_values)
    device = pixel_values.device
    prefix = torch.full((1, 1), CLS, dtype=torch.long, device=device)
    scores = torch.zeros(1, device=device)
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_length):
        k = prefix.shape[0]
        logp = _next_logprobs(model, pixel_values.expand(k, -1, -1, -1), sizes * k,
                              [f.expand(k, -1, -1, -1) for f in visual], prefix, no_repeat_ngram_size)  # fmt: skip
        total = (scores[:, None] + logp).flatten()  # (k * V)
        best, flat = total.topk(beam_size)
        V = logp.shape[1]
        keep_prefix, keep_scores = [], []
        for score, index in zip(best.tolist(), flat.tolist()):
            beam, token = divmod(index, V)
            if token == SEP:
                finished.append((score, prefix[beam, 1:].tolist()))
            else:
                keep_prefix.append(torch.cat([prefix[beam], prefix.new_tensor([token])]))
                keep_scores.append(score)
        if len(finished) >= beam_size or not keep_prefix:
            break
        prefix, scores = torch.stack(keep_prefix), scores.new_tensor(keep_scores)
    if finished:
        return max(finished, key=lambda f: f[0])[1]
    return prefix[int(scores.argmax()), 1:].tolist()


@torch.no_grad()
def generate_captions(
    detector, images: Sequence, *, beam_size: int = 1, max_length: int = 32, batch_size: int = 8,
    blind: bool = False, no_repeat_ngram_size: int = 3,
) -> list[str]:  # fmt: skip
    """A caption for each image: greedy decoding (``beam_size=1``, batched) or beam search (one image at a time).

    Special tokens and BERT's ``[unused*]`` are never emitted, and no n-gram of ``no_repeat_ngram_size`` word
    pieces is repeated (3, as captioning decoders use; 0 allows repeats).

    Raises:
        UsageError: the model has no caption head, or ``beam_size`` / ``max_length`` below 1.
    """
    model = detector.model
    if getattr(model, "caption_head", None) is None:
        raise UsageError("this model has no caption head; train one with: openglip train ... task=caption")
    if beam_size < 1 or max_length < 1:
        raise UsageError("beam_size and max_length must be at least 1")
    if no_repeat_ngram_size < 0:
        raise UsageError("no_repeat_ngram_size must be 0 (repeats allowed) or more")
    max_length = min(max_length, model.max_text_len - 2)
    tokenizer = load_tokenizer()
    out: list[str] = []
    for start in range(0, len(images), batch_size):
        pixel_values, sizes, _ = _images(detector, images[start : start + batch_size], blind)
        with detector._autocast():
            if beam_size == 1:
                ids = greedy_decode(
                    model,
                    pixel_values,
                    sizes,
                    max_length=max_length,
                    no_repeat_ngram_size=no_repeat_ngram_size,
                )
            else:
                ids = [beam_search(model, pixel_values[b : b + 1], sizes[b : b + 1], beam_size=beam_size,
                                   max_length=max_length, no_repeat_ngram_size=no_repeat_ngram_size)
                       for b in range(len(sizes))]  # fmt: skip
        out.extend(tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids)
    return out


def caption_prompt(caption: str, extractor: str = "auto") -> Prompt | None:
    """The noun phrases of a caption as a :class:`Prompt` over the caption itself (None when there is none)."""
    spans = [(s, e) for s, e in get_extractor(extractor)(caption) if e > s]
    if not spans:
        return None
    return Prompt(caption, tuple(caption[s:e] for s, e in spans), tuple(((s, e),) for s, e in spans))


def ground_captions(
    detector, images: Sequence, captions: Sequence[str], *, box_threshold: float = 0.3,
    extractor: str = "auto",
) -> list[GroundedCaption]:  # fmt: skip
    """Ground each caption's noun phrases in its image with the detection head (GLIPv2's grounded captioning)."""
    results = []
    for image, caption in zip(images, captions):
        prompt = caption_prompt(caption, extractor)
        if prompt is None:
            size = load_image(image)[1]
            results.append(GroundedCaption(caption, Detections.empty((), size)))
            continue
        results.append(GroundedCaption(caption, detector.predict(image, prompt, box_threshold=box_threshold)))
    return results
