"""``Detector``: images + a prompt -> ``Detections``. Batching, prompt chunking and a text-feature cache."""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint_format import checkpoint_kind
from .checkpoints import load_into, names_a_file, resolve_config
from .config import ModelConfig
from .device import resolve_device
from .errors import UsageError
from .hub import resolve_model_args
from .images import load_image
from .models.glip import GLIP, TextFeatures, build_model
from .models.masks import paste_masks
from .models.postprocess import Candidates, PostProcessor
from .models.transform import ImageTransform
from .models.vl_heads import read_answer_vocab
from .prompts import Prompt, PromptError, chunk_prompt, parse_prompt, positive_map, token_spans
from .regionclip.rcnn import OFFICIAL_KIND
from .regionclip.rcnn_load import load_converted
from .regionclip.weights import load_detector
from .structures import Detections, Predictor
from .vl_inference import answer_questions, generate_captions, ground_captions

PromptLike = str | Sequence[str] | Prompt


@dataclass
class _Chunk:
    text: TextFeatures  # (1, T) on the model's device
    pmap: torch.Tensor  # (P_chunk, T) binary
    offset: int  # index of the chunk's first phrase in the whole prompt


TOKEN_BUCKETS = (16, 32, 64, 128, 256)  # text lengths prompts are padded to on the compiled path
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def default_buckets(cfg: ModelConfig) -> list[tuple[int, int]]:
    """Padded image sizes for the compiled path: square, 4:3 and the longest side, in both orientations, and
    a large square for batches that mix portrait and landscape images.

    For GLIP's 800/1333 test size: 800x800, 800x1088, 1088x800, 800x1344, 1344x800 and 1344x1344. Every
    resized image (shorter side at most ``min_size``, longer at most ``max_size``) fits 800x1344 or 1344x800.
    """
    d = max(cfg.size_divisibility, 1)

    def up(x: float) -> int:
        return -(-round(x) // d) * d

    short, long = up(cfg.min_size), up(cfg.max_size)
    mid = min(up(cfg.min_size * 4 / 3), long)
    sizes = {(short, short), (short, mid), (mid, short), (short, long), (long, short), (long, long)}
    return sorted(sizes)


def _compile_mode(compile: bool | str, device: torch.device) -> str | None:
    if compile is False or compile is None:
        return None
    mode = "default" if compile is True else str(compile)
    if mode not in COMPILE_MODES:
        raise UsageError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}; got {compile!r}")
    if mode == "reduce-overhead" and device.type != "cuda":
        raise UsageError(
            "compile='reduce-overhead' records CUDA graphs and needs a CUDA device; use compile=True"
        )
    return mode


class Detector:
    """A ready-to-use grounded detector.

    Args:
        model: a :class:`GLIP` model (eval mode is set here).
        device: "cpu", "cuda", a torch device, or None for the GPU when there is one.
        precision: "fp32", "bf16" or "fp16"; "auto" is bf16 autocast on GPU and fp32 on CPU.
        text_cache_size: prompts whose text features are kept.
        compile: ``torch.compile`` the image encoder and the fusion tower + head: ``True`` (mode "default"),
            or a mode name: ``"reduce-overhead"`` (CUDA graphs: the fixed-shape path replayed with one launch;
            CUDA only), ``"max-autotune"``. Images are then padded to ``buckets`` and prompts to token buckets
            (16, 32, 64, 128, 256) so that a handful of compiled graphs serve every input.
        buckets: padded ``(H, W)`` image sizes; a batch goes to the smallest bucket that holds it (an image
            larger than every bucket is padded as usual and compiles a graph of its own). Default with
            ``compile``: :func:`default_buckets` of the config; without: none (pad to a multiple of 32).
        compile_backend: the ``torch.compile`` backend ("inductor"; "aot_eager" traces the same graphs without
            generating kernels, which is how the CPU tests check the compiled path quickly).
        channels_last: run the convolutions in channels-last memory format.

    Example::

        det = openglip.load_model("glip_t", weights="glip_tiny_model_o365_goldg.pth")
        dets = det.predict("street.jpg", "person. red car. traffic light.", box_threshold=0.4)
        print(dets[dets.phrases == "red car"])
    """

    def __init__(
        self,
        model: GLIP,
        *,
        device: str | torch.device | None = None,
        precision: str = "auto",
        text_cache_size: int = 64,
        compile: bool | str = False,
        buckets: Sequence[tuple[int, int]] | None = None,
        compile_backend: str = "inductor",
        channels_last: bool = False,
    ):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        cfg: ModelConfig = model.config
        self.config = cfg
        self.transform = ImageTransform(
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            mean=cfg.pixel_mean,
            std=cfg.pixel_std,
            bgr=cfg.bgr,
            size_divisibility=cfg.size_divisibility,
        )
        self.postprocessor = PostProcessor(
            pre_nms_thresh=cfg.pre_nms_thresh,
            pre_nms_top_n=cfg.pre_nms_top_n,
            nms_thresh=cfg.nms_thresh,
            detections_per_image=cfg.detections_per_image,
        )
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("fp32", "bf16", "fp16"):
            raise UsageError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
        self.precision = precision
        self._text_cache: OrderedDict[str, list[_Chunk]] = OrderedDict()
        self._text_cache_size = text_cache_size
        self._tuned: dict[str, torch.Tensor] = {}  # caption -> prompt-tuning offset (T, Dt)
        self.compile_mode = _compile_mode(compile, self.device)
        if buckets is None and self.compile_mode is not None:
            buckets = default_buckets(cfg)
        self.buckets = None if buckets is None else sorted((int(h), int(w)) for h, w in buckets)
        self._encode_image = self.model.encode_image
        self._fuse = self.model.fuse_and_predict
        if self.compile_mode is not None:
            # one graph per bucket, token bucket and batch size: more than dynamo's default cache of 8
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            options = {"backend": compile_backend, "dynamic": False}
            if compile_backend == "inductor":
                options["mode"] = self.compile_mode
            self._encode_image = torch.compile(self._encode_image, **options)
            self._fuse = torch.compile(self._fuse, **options)

    def add_tuned_prompt(self, tuned) -> None:
        """Use a prompt-tuning offset (:class:`~openglip.prompt_tuning.TunedPrompt`) whenever its prompt is asked
        for (same caption, e.g. the same class list in the same order)."""
        hidden = self.model.text_encoder.hidden_size
        if tuned.delta.shape[-1] != hidden:
            raise UsageError(
                f"the tuned prompt was trained for a {tuned.delta.shape[-1]}-wide text encoder, this model has "
                f"{hidden}; use it with the weights it was tuned on"
            )
        self._tuned[tuned.prompt.caption] = tuned.delta.to(self.device)
        self._text_cache.clear()

    # -- prompts ------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def encode_prompt(self, prompt: Prompt) -> list[_Chunk]:
        """Text features of a prompt, chunked to the text limit and cached by caption."""
        key = prompt.caption + "\x00" + "\x01".join(prompt.phrases)
        if key in self._text_cache:
            self._text_cache.move_to_end(key)
            return self._text_cache[key]
        tokenizer = self.model.tokenizer
        chunks = []
        for part, offset in chunk_prompt(prompt, self.model.max_text_len):
            enc = tokenizer([part.caption], return_tensors="pt")
            spans = token_spans(enc[0], part)
            empty = [p for p, toks in zip(part.phrases, spans) if not toks]
            if empty:
                raise PromptError(
                    f"phrases {empty} have no tokens in the prompt {part.caption!r}; use words the tokenizer knows"
                )
            with torch.no_grad(), self._autocast():
                text = self.model.encode_text(enc["input_ids"], enc["attention_mask"])
            delta = self._tuned.get(part.caption)
            if delta is not None:
                if delta.shape[0] != text.hidden.shape[1]:
                    raise UsageError(
                        f"the tuned prompt has {delta.shape[0]} token offsets but its caption has "
                        f"{text.hidden.shape[1]} tokens with this model's tokenizer; use the weights it was tuned on"
                    )
                text = TextFeatures(
                    text.input_ids, text.attention_mask, text.hidden + delta.to(text.hidden.dtype)
                )
            pmap = positive_map(spans, enc["input_ids"].shape[1]).to(self.device)
            chunks.append(_Chunk(text, pmap, offset))
        self._text_cache[key] = chunks
        if len(self._text_cache) > self._text_cache_size:
            self._text_cache.popitem(last=False)
        return chunks

    # -- inference ----------------------------------------------------------------------------------------
    def _masks(self, visual, index: int, input_boxes, boxes, padded_shape, original_size) -> np.ndarray:
        """Instance masks of one image's boxes: (K, H, W) bool in original pixels."""

        with torch.no_grad(), self._autocast():
            logits = self.model.mask_head([f[index : index + 1] for f in visual], [input_boxes], padded_shape)
        return paste_masks(logits.float(), boxes, *original_size).cpu().numpy()

    @torch.no_grad()
    def predict(
        self,
        images,
        prompt: PromptLike | None = None,
        *,
        prompts: Sequence[PromptLike] | None = None,
        box_threshold: float = 0.3,
        batch_size: int = 4,
        max_detections: int | None = None,
    ) -> Detections | list[Detections]:
        """Detect the phrases of a prompt in one image or a list of images.

        Args:
            images: a path, PIL image, numpy array (H, W, 3) RGB, or a list of them.
            prompt: one prompt for every image: a class list (``["person", "red car"]``) or a caption
                (``"person. red car."``; a caption without periods is split into noun phrases).
            prompts: alternatively, one prompt per image.
            box_threshold: minimum score of a returned box.
            batch_size: images per forward pass.
            max_detections: keep at most this many boxes per image (after the threshold).

        Returns:
            :class:`Detections` for a single image, a list of them for a list of images.

        Raises:
            ImageError: an image is missing, unreadable or of an unsupported kind.
            PromptError: the prompt is empty or has no phrase.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            return []
        if (prompt is None) == (prompts is None):
            raise UsageError("predict: give exactly one of prompt= (shared) or prompts= (one per image)")
        if batch_size < 1:
            raise UsageError(f"predict: batch_size must be at least 1, got {batch_size}")
        if prompts is not None:
            if len(prompts) != len(items):
                raise UsageError(
                    f"predict: {len(prompts)} prompts for {len(items)} images; give one per image"
                )
            parsed = [parse_prompt(p) for p in prompts]
        else:
            parsed = [parse_prompt(prompt)] * len(items)
        results: list[Detections] = []
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            results.extend(
                self._predict_batch(
                    batch, parsed[start : start + batch_size], box_threshold, max_detections, first=start
                )
            )
        return results[0] if single else results

    def _pad_batch(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Pad to a multiple of 32, or to the smallest shape bucket that holds the batch."""
        if self.buckets is None:
            return self.transform.pad(tensors)
        H = max(int(t.shape[1]) for t in tensors)
        W = max(int(t.shape[2]) for t in tensors)
        fits = [b for b in self.buckets if b[0] >= H and b[1] >= W]
        return self.transform.pad(tensors, size=min(fits, key=lambda b: b[0] * b[1]) if fits else None)

    def _batch_text(self, chunks: list[_Chunk]) -> TextFeatures:
        text = TextFeatures.cat([c.text for c in chunks])
        if self.compile_mode is None:
            return text
        T = text.hidden.shape[1]
        bucket = next((b for b in TOKEN_BUCKETS if b >= T), T)
        return text.pad_to(min(max(bucket, T), max(self.model.max_text_len, T)))

    def detect_batch(
        self, pixel_values: torch.Tensor, sizes: Sequence[tuple[int, int]], prompts: Sequence[Prompt]
    ) -> tuple[list[Candidates], list[torch.Tensor]]:
        """Detections of an already transformed batch, in input (resized) pixels, before the box threshold.

        Args:
            pixel_values: (B, 3, H, W) normalised, padded (see :attr:`transform`; a shape bucket when compiled).
            sizes: (h, w) of each image inside the padding.
            prompts: one parsed prompt per image.

        Returns:
            ``(per-image candidates after NMS, FPN features)``.
        """
        pixel_values = pixel_values.to(self.device)
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        chunk_lists = [self.encode_prompt(p) for p in prompts]
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous batch's graph outputs may be reused
        B = len(prompts)
        with self._autocast():
            visual = self._encode_image(pixel_values)
            per_image: list[list[Candidates]] = [[] for _ in range(B)]
            for round_ in range(max(len(c) for c in chunk_lists)):
                members = [i for i, c in enumerate(chunk_lists) if len(c) > round_]
                chunks = [chunk_lists[i][round_] for i in members]
                pixels, feats = pixel_values, visual
                if len(members) < B:  # later rounds of a chunked prompt: only the images that need them
                    index = torch.tensor(members, device=self.device)
                    pixels, feats = pixel_values[index], [f[index] for f in visual]
                text = self._batch_text(chunks)
                dense = self._fuse(feats, text.hidden, text.attention_mask)
                out = self.model.make_output(pixels, [sizes[i] for i in members], feats, text, dense)
                groups: dict[int, list[int]] = {}  # images asking for the same chunk are scored together
                for j, chunk in enumerate(chunks):
                    groups.setdefault(id(chunk), []).append(j)
                for js in groups.values():
                    chunk = chunks[js[0]]
                    found = self.postprocessor.candidates_batch(out, js, chunk.pmap, chunk.offset)
                    for j, cand in zip(js, found):
                        per_image[members[j]].append(cand)
        return [self.postprocessor.select(Candidates.cat(c)) for c in per_image], visual

    def _predict_batch(
        self, images, prompts: list[Prompt], box_threshold, max_detections, first: int = 0
    ) -> list[Detections]:
        # "image #k" counts in the caller's whole list, not within this batch
        loaded = [load_image(im, where=f"image #{first + i}") for i, im in enumerate(images)]
        tensors = [self.transform.to_tensor(im) for im, _ in loaded]
        pixel_values, sizes = self._pad_batch(tensors)
        finals, visual = self.detect_batch(pixel_values, sizes, prompts)
        results = []
        for i, final in enumerate(finals):
            (h, w), (oh, ow) = sizes[i], loaded[i][1]
            keep = (final.scores >= box_threshold).nonzero().squeeze(1)
            if max_detections is not None:
                keep = keep[:max_detections]
            input_boxes = final.boxes[keep].float()
            scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=input_boxes.device)
            boxes = input_boxes * scale
            masks = None
            if getattr(self.model, "mask_head", None) is not None:
                masks = self._masks(visual, i, input_boxes, boxes, tuple(pixel_values.shape[-2:]), (oh, ow))
            labels = final.labels[keep].cpu().numpy()
            phrases = np.array([prompts[i].phrases[k] for k in labels], dtype=object)
            results.append(
                Detections(
                    boxes.cpu().numpy(),
                    final.scores[keep].float().cpu().numpy(),
                    labels,
                    phrases,
                    masks,
                    prompts[i].phrases,
                    (oh, ow),
                )
            )
        return results

    # -- GLIPv2 understanding heads (see openglip.vl_inference) -------------------------------------------------
    def answer(self, images, question: str | Sequence[str], *, batch_size: int = 8) -> str | list[str]:
        """Answer a question about an image with the VQA head (a model trained with ``task=vqa``).

        Args:
            images: an image (path, PIL, numpy) or a list of them.
            question: one question for every image, or one question per image.

        Returns:
            the answer (a string from the model's answer vocabulary), or a list of answers for a list of images.

        Raises:
            UsageError: no VQA head, an empty question or one longer than the text limit.
            ImageError: an unreadable image.
        """

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        questions = [question] * len(items) if isinstance(question, str) else list(question)
        answers = answer_questions(self, items, questions, batch_size=batch_size)
        return answers[0] if single else answers

    def caption(
        self, images, *, grounded: bool = False, beam_size: int = 1, max_length: int = 32,
        box_threshold: float = 0.3, extractor: str = "auto", batch_size: int = 8, no_repeat_ngram_size: int = 3,
    ):  # fmt: skip
        """Describe an image with the caption head (a model trained with ``task=caption``).

        Args:
            images: an image or a list of them.
            grounded: also ground the caption's noun phrases (``extractor``: "auto", "rule" or "spacy") with the
                detection head and return a :class:`~openglip.vl_inference.GroundedCaption` (caption, Detections).
            beam_size: 1 for greedy decoding, more for beam search.
            max_length: most word pieces generated.
            no_repeat_ngram_size: never repeat an n-gram of this many word pieces (0 allows repeats).
            box_threshold: minimum score of a grounded box.

        Returns:
            a caption string (or :class:`GroundedCaption`), or a list of them for a list of images.
        """

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        out = generate_captions(
            self,
            items,
            beam_size=beam_size,
            max_length=max_length,
            batch_size=batch_size,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )
        if grounded:
            out = ground_captions(self, items, out, box_threshold=box_threshold, extractor=extractor)
        return out[0] if single else out


def load_model(
    preset_or_path: str | os.PathLike = "glip_t",
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    *,
    pretrained: bool = True,
    **detector_kwargs,
) -> Detector | Predictor:
    """Build a :class:`Detector`, or open any OpenGLIP model file that predicts boxes.

    Args:
        preset_or_path: an official model name (``"glip_t"``, ``"glip_l"``, ``"glip_t_c"``, ...: the official
            weights, fetched from the Hugging Face Hub once, see :mod:`openglip.hub`), a preset name
            (``"tiny"``, ``"glip_nano"``, ...) or a checkpoint file (an OpenGLIP ``.safetensors`` carries its
            config and kind; an official GLIP ``.pth`` is recognised). A local file always wins over a name.
            A file of ``openglip regionclip convert`` gives RegionCLIP's released detector
            (:class:`~openglip.regionclip.rcnn.OfficialRegionCLIP`, a Predictor).
            A RegionCLIP detector file gives its :class:`~openglip.regionclip.OpenVocabDetector` (a
            :class:`~openglip.structures.Predictor`; ``text=`` may pass an already loaded sentence encoder).
        weights: a checkpoint to load into the preset: official GLIP ``.pth`` (``{"model": ...}`` with
            ``module.`` keys), a plain state dict, an OpenGLIP ``.safetensors``, or an official model name.
        device: "cpu", "cuda" or None (GPU when available).
        pretrained: ``False`` builds an official name's preset with random weights (no download).

    Raises:
        CheckpointError: the checkpoint is unreadable, does not match the preset (the message names the
            first missing/unexpected keys and shapes), or is a file that predicts no boxes (a RegionCLIP teacher,
            RPN or student, a tuned prompt, JSON, ONNX: the message says what it is and what to do with it).
    """

    source = os.fspath(preset_or_path)
    if weights is None and names_a_file(source) and checkpoint_kind(source) == "regionclip-detector":
        return _load_regionclip_detector(source, device, **detector_kwargs)
    if weights is None and names_a_file(source) and checkpoint_kind(source) == OFFICIAL_KIND:
        if detector_kwargs:
            raise UsageError(
                f"{source} is RegionCLIP's released detector: load_model takes only device= for it"
            )
        return load_converted(source, resolve_device(device))
    preset_or_path, weights = resolve_model_args(preset_or_path, weights, pretrained)
    cfg, state = resolve_config(preset_or_path, weights)
    model = build_model(cfg)
    if state is not None:
        load_into(model, state)
    if cfg.vqa_answers > 0:  # the answer vocabulary travels in the weights file's metadata
        source = weights if weights is not None else preset_or_path
        model.answer_vocab = read_answer_vocab(source, cfg.vqa_answers) if state is not None else None
    return Detector(model, device=device, **detector_kwargs)


def _load_regionclip_detector(path: str, device, text=None, **unused) -> Predictor:
    """A RegionCLIP detector file as a :class:`~openglip.structures.Predictor` on ``device``."""

    if unused:
        raise UsageError(
            f"{path} is a RegionCLIP detector: load_model takes device= and text= for it, not {', '.join(unused)}"
        )
    return load_detector(path, text=text).to(resolve_device(device))
