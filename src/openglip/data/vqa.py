"""VQA data: VQAv2 question + annotation JSON files, a simple JSONL format, and the answer vocabulary.

* VQAv2: ``questions.json`` (``{"data_subtype": "val2014", "questions": [{"image_id", "question",
  "question_id"}]}``) and ``annotations.json`` (``{"annotations": [{"question_id", "image_id", "question_type",
  "answer_type", "answers": [{"answer", "answer_confidence", "answer_id"}], "multiple_choice_answer"}]}``);
  images are ``<image root>/COCO_<data_subtype>_<image_id:012d>.jpg`` (or an ``"file_name"`` on the question).
* JSONL, one question a line: ``{"filename", "question", "answers": [...]}`` (optional ``"question_type"``).

Bad records (no question text, no answers, a missing image file) are skipped and counted in a
:class:`~openglip.data.records.SkipReport`; only an unreadable file raises.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, UsageError
from ..files import write_text_atomic
from ..vl_metrics import normalize_answer
from .coco import load_json, relative_name, resolve_image
from .odvg import iter_jsonl
from .records import SkipReport


@dataclass
class VQARecord:
    """One question about one image.

    Attributes:
        file_name: image path (joined with the image root).
        question: the question text.
        answers: the human answers (VQAv2: 10), raw as annotated.
        question_type: a label to report accuracy by (VQAv2's ``answer_type``, the shapes world's kind).
        question_id, image_id: ids from the source.
    """

    file_name: str
    question: str
    answers: list[str] = field(default_factory=list)
    question_type: str = ""
    question_id: int = 0
    image_id: int = 0


def _check_question(q, answers) -> str | None:
    if not isinstance(q, str) or not q.strip():
        return "empty_question"
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        return "no_answers"
    return None


def read_vqav2(
    questions_path: str | os.PathLike,
    annotations_path: str | os.PathLike | None,
    image_root: str | os.PathLike | None = None,
    *,
    check_images: bool = True,
) -> tuple[list[VQARecord], SkipReport]:
    """Read a VQAv2 question file and its annotation file (``None`` for the test split: no answers, every
    question kept with ``answers=[]``).

    Raises:
        DataError: a file is missing or not VQAv2 JSON.
    """
    qdata = load_json(questions_path)
    if not isinstance(qdata, dict) or not isinstance(qdata.get("questions"), list):
        raise DataError(f"{questions_path}: not a VQAv2 questions file (no 'questions' list)")
    root = Path(questions_path).parent if image_root is None else Path(image_root)
    subtype = qdata.get("data_subtype", "")
    answers: dict = {}
    if annotations_path is not None:
        adata = load_json(annotations_path)
        if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
            raise DataError(f"{annotations_path}: not a VQAv2 annotations file (no 'annotations' list)")
        answers = {a.get("question_id"): a for a in adata["annotations"] if isinstance(a, dict)}
    report = SkipReport(source=str(questions_path))
    records = []
    for q in qdata["questions"]:
        if not isinstance(q, dict) or "image_id" not in q:
            report.add("bad_record")
            continue
        ann = answers.get(q.get("question_id"))
        if annotations_path is not None and ann is None:
            report.add("no_annotation")
            continue
        texts = [a.get("answer") for a in ann.get("answers", []) if isinstance(a, dict)] if ann else []
        why = _check_question(q.get("question"), texts if ann else ["?"])
        if why:
            report.add(why)
            continue
        name = q.get("file_name") or f"COCO_{subtype}_{int(q['image_id']):012d}.jpg"
        path = resolve_image(name, root)
        if check_images and not os.path.isfile(path):
            report.add("missing_image")
            continue
        records.append(
            VQARecord(
                path, q["question"].strip(), texts, (ann or {}).get("answer_type", ""),
                int(q.get("question_id", 0)), int(q["image_id"]),
            )
        )  # fmt: skip
    report.log()
    return records, report


def write_vqav2(
    questions_path: str | os.PathLike,
    annotations_path: str | os.PathLike,
    records: Sequence[VQARecord],
    data_subtype: str = "val2014",
) -> None:
    """Write records as a VQAv2 question file and annotation file (the inverse of :func:`read_vqav2`; image file
    names are kept in a ``"file_name"`` field, relative to the questions file's folder)."""
    folder = Path(questions_path).parent
    questions, annotations = [], []
    for i, r in enumerate(records):
        qid = r.question_id or i + 1
        questions.append({"image_id": r.image_id, "question": r.question, "question_id": qid,
                          "file_name": relative_name(r.file_name, folder)})  # fmt: skip
        counts = Counter(normalize_answer(a) for a in r.answers)
        annotations.append({
            "question_id": qid, "image_id": r.image_id, "question_type": " ".join(r.question.split()[:2]),
            "answer_type": r.question_type,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(r.answers)],
            "multiple_choice_answer": counts.most_common(1)[0][0] if counts else "",
        })  # fmt: skip
    write_text_atomic(questions_path, json.dumps({"data_subtype": data_subtype, "questions": questions}))
    write_text_atomic(annotations_path, json.dumps({"annotations": annotations}))


def read_vqa_jsonl(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, check_images: bool = True
) -> tuple[list[VQARecord], SkipReport]:
    """Read ``{"filename", "question", "answers": [...], "question_type"?}`` lines."""
    root = Path(path).parent if image_root is None else Path(image_root)
    report = SkipReport(source=str(path))
    records = []
    for number, obj in iter_jsonl(path, report):
        name = obj.get("filename")
        why = _check_question(obj.get("question"), obj.get("answers"))
        if not isinstance(name, str) or why:
            report.add(why or "bad_record")
            continue
        file = resolve_image(name, root)
        if check_images and not os.path.isfile(file):
            report.add("missing_image")
            continue
        records.append(
            VQARecord(file, obj["question"].strip(), list(obj["answers"]), str(obj.get("question_type", "")),
                      int(obj.get("question_id", number)), int(obj.get("image_id", number)))
        )  # fmt: skip
    report.log()
    return records, report


def write_vqa_jsonl(path: str | os.PathLike, records: Sequence[VQARecord]) -> None:
    """Write records as JSONL (the inverse of :func:`read_vqa_jsonl`)."""
    folder = Path(path).parent
    lines = [
        json.dumps({"filename": relative_name(r.file_name, folder), "question": r.question, "answers": r.answers,
                    "question_type": r.question_type, "question_id": r.question_id, "image_id": r.image_id})
        + "\n"
        for r in records
    ]  # fmt: skip
    write_text_atomic(path, "".join(lines))


def read_vqa_files(spec: str, image_root: str | None = None) -> tuple[list[VQARecord], SkipReport]:
    """Records of a comma-separated list of VQA files: ``.jsonl`` files, and VQAv2 question/annotation JSON
    files (recognised by their content and paired in order).

    Raises:
        DataError: a file is unreadable, or a VQAv2 questions file has no annotations file beside it.
    """
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    questions, annotations, records = [], [], []
    report = SkipReport(source=spec)
    for p in paths:
        if p.endswith(".jsonl"):
            recs, rep = read_vqa_jsonl(p, image_root)
            records += recs
            report.counts.update(rep.counts)
            continue
        data = load_json(p)
        if isinstance(data, dict) and "questions" in data:
            questions.append(p)
        elif isinstance(data, dict) and "annotations" in data:
            annotations.append(p)
        else:
            raise DataError(f"{p}: neither a VQAv2 questions nor annotations file, nor JSONL")
    if len(questions) != len(annotations):
        raise DataError(
            f"{spec}: {len(questions)} VQAv2 question files but {len(annotations)} annotation files; give them in "
            "pairs (questions.json,annotations.json)"
        )
    for q, a in zip(questions, annotations):
        recs, rep = read_vqav2(q, a, image_root)
        records += recs
        report.counts.update(rep.counts)
    return records, report


# --------------------------------------------------------------------------------------------------------------
# Answer vocabulary
# --------------------------------------------------------------------------------------------------------------


def build_answer_vocab(records: Sequence[VQARecord], max_answers: int = 3129) -> list[str]:
    """The ``max_answers`` most frequent normalised answers (ties broken alphabetically, so the vocabulary is the
    same on every rank and every run)."""
    counts: Counter = Counter()
    for r in records:
        counts.update({normalize_answer(a) for a in r.answers})
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [a for a, _ in ranked[:max_answers] if a]


def load_answer_vocab(path: str | os.PathLike) -> list[str]:
    """A JSON list of answers.

    Raises:
        UsageError: the file is missing, not a JSON list of strings, or has duplicates.
    """
    try:
        answers = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"answer vocabulary {path}: {err}") from None
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise UsageError(f"answer vocabulary {path} must be a non-empty JSON list of strings")
    if len(set(answers)) != len(answers):
        raise UsageError(f"answer vocabulary {path} lists some answers twice")
    return answers
