"""Metrics of GLIPv2's understanding tasks: VQA accuracy as VQAv2 defines it, and captioning BLEU-4 / CIDEr.

VQA answer normalisation follows the official evaluation code (GT-Vision-Lab/VQA, ``vqaEval.py``), rule by rule:

1. newlines and tabs become spaces, the answer is stripped;
2. punctuation (``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``): removed where it touches a space or when the text
   holds a digit-comma-digit group, otherwise replaced by a space; then periods not next to a digit are removed;
3. lower case, split on whitespace, number words ``none zero one .. ten`` become digits, the articles ``a an the``
   are dropped, apostrophe-less contractions are restored (``dont`` -> ``don't``), words joined by one space.

Quirks of the official code kept on purpose (so numbers match it): the period pattern's look-behind is written as
a look-ahead (``(?!<=\\d)``) and so only the look-ahead after the period acts, and ``re.sub`` is called with
``re.UNICODE`` in the *count* position (at most 32 periods are removed).

Accuracy of a predicted answer against the human answers (the official formula): for each human answer, the
accuracy against the *other* answers is ``min(1, matches / 3)``; the question's accuracy is the mean over the
humans (VQAv2 has 10, so this averages over the 10 subsets of 9). With 10 answers it equals
``min(1, 0.3 * n)`` for an answer given by n humans except n = 3 (0.9); the training targets use the same
formula (:func:`answer_scores`), so each answer's soft score is exactly the accuracy it would earn. One deviation:
a question with a single answer (synthetic data, a JSONL file with ``"answers": ["2"]``) scores 1 for that answer
(the official formula would give 0: no other human to agree with); the official rule applies from 2 answers on.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

_PUNCT = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# the official table: apostrophe-less spellings -> the spelling VQAv2 answers use
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip


def _punctuation(text: str) -> str:
    out = text
    comma_group = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or comma_group:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub(
        "", out, count=int(re.UNICODE)
    )  # the official call passes re.UNICODE as the count


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """VQAv2's answer normalisation (see the module docstring): ``"Two."`` -> ``"2"``, ``"a dog!"`` -> ``"dog"``."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one predicted answer against the human answers (normalised as the official code does:
    the prediction fully, the human answers' punctuation when they disagree)."""
    if not answers:
        raise ValueError("a question needs at least one human answer")
    pred = normalize_answer(prediction)
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:
        gts = [_punctuation(a) for a in gts]
    if len(gts) == 1:  # the one deviation: a lone answer counts as unanimous
        return float(normalize_answer(gts[0]) == pred)
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


def answer_scores(answers: Sequence[str]) -> dict[str, float]:
    """Soft target of every distinct (normalised) human answer: the VQA accuracy it would earn. With 10 answers:
    1 human -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0; a single answer -> 1.0."""
    norm = [normalize_answer(a) for a in answers]
    counts = Counter(norm)
    if len(norm) == 1:
        return {norm[0]: 1.0}
    n = len(norm)
    # leave-one-out mean of min(1, matches / 3): the c humans who gave it see c - 1 matches, the others c
    return {a: (c * min(1.0, (c - 1) / 3.0) + (n - c) * min(1.0, c / 3.0)) / n for a, c in counts.items()}


def vqa_summary(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], types: Sequence[str] | None = None
) -> dict[str, float]:
    """Mean VQA accuracy overall (``"accuracy"``) and per question type (``"accuracy/<type>"``), in [0, 1]."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    per_type: dict[str, list[float]] = defaultdict(list)
    accs = []
    for i, (pred, gts) in enumerate(zip(predictions, answers)):
        acc = vqa_accuracy(pred, gts)
        accs.append(acc)
        if types is not None and types[i]:
            per_type[types[i]].append(acc)
    out = {"accuracy": sum(accs) / max(len(accs), 1)}
    out.update({f"accuracy/{t}": sum(v) / len(v) for t, v in sorted(per_type.items())})
    return out


# --------------------------------------------------------------------------------------------------------------
# Captioning
# --------------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def caption_tokens(text: str) -> str:
    """Lower-case words without punctuation, space-joined: what the PTB tokenizer of the COCO caption evaluation
    produces for plain captions (it needs Java; this stays in Python so results never depend on a JVM)."""
    return " ".join(_TOKEN.findall(text.lower()))


def caption_metrics(predictions: dict, references: dict) -> dict[str, float]:
    """BLEU-1..4 and CIDEr (pycocoevalcap's scorers) of ``{image_id: caption}`` against
    ``{image_id: [reference captions]}``; captions are tokenized by :func:`caption_tokens`."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    ids = sorted(predictions)
    missing = [i for i in ids if not references.get(i)]
    if missing:
        raise ValueError(f"no reference captions for image ids {missing[:5]}")
    res = {i: [caption_tokens(predictions[i]) or "empty"] for i in ids}
    gts = {i: [caption_tokens(r) for r in references[i]] for i in ids}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"BLEU-1": bleu[0], "BLEU-4": bleu[3], "CIDEr": float(cider)}
