"""The shapes world speaks: questions with answers and whole-image captions, made from a
:class:`~openglip.shapes.world.ShapesSample`'s public annotations (names, boxes, labels, sizes) only.

Question kinds (the ``question_type`` accuracy is reported by):

* ``colour``: "what colour is the star?" (the shape occurs once in the image)
* ``shape``: "what shape is the red object?" (the colour occurs once)
* ``count``: "how many hexagons are there?" (0 to 5)
* ``exist``: "is there a green circle?" (yes / no, balanced)
* ``relation``: "what colour is the star left of the circle?" (the anchor's shape occurs once; among the objects of
  the asked shape exactly one stands in that relation to it)

The open-vocabulary split carries over: the ``train`` split's images hold only base combinations and its questions
never name a novel one (an existence question about a novel combination is not asked), so novel combinations
appear in ``val`` questions, answers' objects and captions only.

Captions list every object left to right (``"a red circle, a small blue square and a green star."``, the size word
when a category repeats); the references used to score a generated caption are that caption, the same objects
top to bottom, and the world's own listing caption (random order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .render import ShapesWorld
from .world import CATEGORIES, COLOURS, NOVEL, RELATIONS, SHAPES, ShapesSample, relation_holds

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "exist", "relation")
MAX_COUNT = 5
ANSWERS: list[str] = [*COLOURS, *SHAPES, *[str(n) for n in range(MAX_COUNT + 1)], "yes", "no"]
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "hexagon": "hexagons", "cross": "crosses"}  # fmt: skip


def _parts(sample: ShapesSample) -> tuple[list[str], list[str], np.ndarray]:
    colours = [CATEGORIES[int(i)].split()[0] for i in sample.labels]
    shapes = [CATEGORIES[int(i)].split()[1] for i in sample.labels]
    centres = (sample.boxes[:, :2] + sample.boxes[:, 2:]) / 2 if len(sample.boxes) else np.zeros((0, 2))
    return colours, shapes, centres


def shapes_questions(
    sample: ShapesSample, *, allow_novel: bool, margin: float = 4.0
) -> list[tuple[str, str, str]]:
    """Every question the sample answers: ``[(question, answer, question_type), ...]``.

    Args:
        sample: a rendered sample.
        allow_novel: may a question name a novel colour-shape combination that is not in the image (existence
            negatives)? ``False`` for the train split.
        margin: relations need centres this many pixels apart.
    """
    colours, shapes, centres = _parts(sample)
    n = len(shapes)
    out: list[tuple[str, str, str]] = []
    for s in SHAPES:
        idx = [i for i in range(n) if shapes[i] == s]
        if len(idx) == 1:
            out.append((f"what colour is the {s}?", colours[idx[0]], "colour"))
        if len(idx) <= MAX_COUNT:
            out.append((f"how many {_PLURAL[s]} are there?", str(len(idx)), "count"))
    for c in COLOURS:
        idx = [i for i in range(n) if colours[i] == c]
        if len(idx) == 1:
            out.append((f"what shape is the {c} object?", shapes[idx[0]], "shape"))
    present = {f"{colours[i]} {shapes[i]}" for i in range(n)}
    for name in CATEGORIES:
        if name in present:
            out.append((f"is there a {name}?", "yes", "exist"))
        elif allow_novel or name not in NOVEL:
            out.append((f"is there a {name}?", "no", "exist"))
    for j in range(n):
        if sum(s == shapes[j] for s in shapes) != 1:
            continue  # the anchor must be unambiguous
        for s in SHAPES:
            if s == shapes[j]:
                continue
            cands = [i for i in range(n) if shapes[i] == s]
            for rel in RELATIONS:
                ok = [i for i in cands if relation_holds(rel, centres[i], centres[j], margin)]
                if len(ok) == 1:
                    out.append((f"what colour is the {s} {rel} the {shapes[j]}?", colours[ok[0]], "relation"))
    return out


def sample_question(
    sample: ShapesSample, rng: np.random.Generator, *, allow_novel: bool
) -> tuple[str, str, str]:
    """One question: a kind drawn uniformly among those the sample offers, then a question of that kind; existence
    questions are yes or no with equal chance."""
    qs = shapes_questions(sample, allow_novel=allow_novel)
    kinds = sorted({t for _, _, t in qs}, key=QUESTION_TYPES.index)
    kind = kinds[int(rng.integers(len(kinds)))]
    pool = [q for q in qs if q[2] == kind]
    if kind == "exist":
        answer = ("yes", "no")[int(rng.integers(2))]
        pool = [q for q in pool if q[1] == answer] or pool
    return pool[int(rng.integers(len(pool)))]


def _phrase(i: int, names: list[str], sizes: list[str]) -> str:
    return f"{sizes[i]} {names[i]}" if names.count(names[i]) > 1 else names[i]


def _listing(order: list[int], names: list[str], sizes: list[str]) -> tuple[str, list[dict[str, Any]]]:
    if not order:
        return "an empty scene.", []
    text, regions = "", []
    for k, i in enumerate(order):
        sep = "" if k == 0 else " and " if k == len(order) - 1 else ", "
        phrase = _phrase(i, names, sizes)
        text += f"{sep}{'an' if phrase[0] in 'aeiou' else 'a'} "
        regions.append(
            {"box_index": i, "phrase": phrase, "tokens_positive": [[len(text), len(text) + len(phrase)]]}
        )
        text += phrase
    return text + ".", regions


def shapes_caption(sample: ShapesSample) -> tuple[str, list[dict[str, Any]]]:
    """The whole-image caption (objects left to right) and its regions (``box_index``, ``phrase``,
    ``tokens_positive`` character spans), so it doubles as grounding data."""
    _, _, centres = _parts(sample)
    order = sorted(range(len(sample.labels)), key=lambda i: (centres[i][0], centres[i][1]))
    return _listing(order, sample.names, list(sample.sizes))


def shapes_references(sample: ShapesSample) -> list[str]:
    """Reference captions of a sample: left to right, top to bottom, and the world's listing caption."""
    _, _, centres = _parts(sample)
    top_down = sorted(range(len(sample.labels)), key=lambda i: (centres[i][1], centres[i][0]))
    refs = [shapes_caption(sample)[0], _listing(top_down, sample.names, list(sample.sizes))[0]]
    if len(sample.captions) > 1:
        refs.append(sample.captions[1].caption)
    return refs


def shapes_vqa_items(
    num: int, *, image_size: int = 128, seed: int = 1234, split: str = "val"
) -> list[tuple[np.ndarray, str, list[str], str]]:
    """A fixed evaluation set: ``[(image, question, [answer], question_type), ...]``, one question per sample."""

    world = ShapesWorld(split=split, image_size=image_size, seed=seed)
    items = []
    for i in range(num):
        sample = world.sample(i)
        q, a, t = sample_question(sample, np.random.default_rng([seed, i, 7]), allow_novel=split != "train")
        items.append((sample.image, q, [a], t))
    return items


def shapes_caption_items(
    num: int, *, image_size: int = 128, seed: int = 1234, split: str = "val"
) -> list[tuple[ShapesSample, list[str]]]:
    """A fixed evaluation set: ``[(sample, reference captions), ...]``."""

    world = ShapesWorld(split=split, image_size=image_size, seed=seed)
    return [(s, shapes_references(s)) for s in (world.sample(i) for i in range(num))]
