"""VQA and caption readers (round trips of files the test writes, bad records skipped and counted), the answer
vocabulary, and the shapes world's questions and captions (the open-vocabulary split carries over)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from openglip.data.captions import CaptionRecord, read_caption_files, read_coco_captions, write_coco_captions
from openglip.data.vqa import (
    VQARecord,
    build_answer_vocab,
    load_answer_vocab,
    read_vqa_files,
    read_vqa_jsonl,
    read_vqav2,
    write_vqa_jsonl,
    write_vqav2,
)
from openglip.errors import DataError, UsageError
from openglip.shapes import NOVEL, ShapesWorld
from openglip.shapes.language import (
    ANSWERS,
    QUESTION_TYPES,
    sample_question,
    shapes_caption,
    shapes_questions,
    shapes_references,
)


@pytest.fixture()
def images(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _records(paths):
    return [
        VQARecord(paths[0], "how many dogs?", ["2"] * 3 + ["two"] * 7, "number", 11, 1),
        VQARecord(paths[1], "what colour is the car?", ["red"] * 10, "other", 12, 2),
        VQARecord(paths[2], "is it raining?", ["yes"] * 6 + ["no"] * 4, "yes/no", 13, 3),
    ]


def test_vqav2_files_round_trip(tmp_path, images):
    records = _records(images)
    q, a = tmp_path / "questions.json", tmp_path / "annotations.json"
    write_vqav2(q, a, records)
    back, report = read_vqav2(q, a)
    assert report.total == 0
    assert [
        (r.file_name, r.question, r.answers, r.question_type, r.question_id, r.image_id) for r in back
    ] == [(r.file_name, r.question, r.answers, r.question_type, r.question_id, r.image_id) for r in records]
    # the official layout: image names from data_subtype and image_id under the image root
    data = json.loads(q.read_text())
    for entry in data["questions"]:
        del entry["file_name"]
    q.write_text(json.dumps(data))
    for r in records:
        Image.open(r.file_name).save(tmp_path / "img" / f"COCO_val2014_{r.image_id:012d}.jpg")
    back, _ = read_vqav2(q, a, tmp_path / "img")
    assert [r.file_name.endswith(f"COCO_val2014_{r.image_id:012d}.jpg") for r in back] == [True] * 3
    both, _ = read_vqa_files(f"{q},{a}", str(tmp_path / "img"))
    assert len(both) == 3


def test_vqa_jsonl_round_trip_and_bad_records_are_counted(tmp_path, images):
    records = _records(images)
    path = tmp_path / "vqa.jsonl"
    write_vqa_jsonl(path, records)
    back, report = read_vqa_jsonl(path)
    assert report.total == 0 and [r.answers for r in back] == [r.answers for r in records]
    with open(path, "a") as f:
        f.write(json.dumps({"filename": "img/missing.png", "question": "why?", "answers": ["no"]}) + "\n")
        f.write(json.dumps({"filename": "img/0.png", "question": "  ", "answers": ["no"]}) + "\n")
        f.write(json.dumps({"filename": "img/0.png", "question": "what?", "answers": []}) + "\n")
    back, report = read_vqa_jsonl(path)
    assert len(back) == 3
    assert dict(report.counts) == {"missing_image": 1, "empty_question": 1, "no_answers": 1}
    lonely = tmp_path / "questions_only.json"
    lonely.write_text(json.dumps({"questions": []}))
    with pytest.raises(DataError, match="in pairs"):
        read_vqa_files(str(lonely))


def test_answer_vocabulary_is_deterministic_and_checked(tmp_path, images):
    vocab = build_answer_vocab(_records(images))
    # normalised ("two" -> "2"), counted once per question, by frequency then alphabetically
    assert vocab == ["2", "no", "red", "yes"]
    more = [*_records(images), VQARecord(images[0], "what colour?", ["Red", "blue"])]
    assert build_answer_vocab(more, max_answers=2) == ["red", "2"]
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(vocab))
    assert load_answer_vocab(path) == vocab
    path.write_text(json.dumps(["a", "a"]))
    with pytest.raises(UsageError, match="twice"):
        load_answer_vocab(path)
    path.write_text("{}")
    with pytest.raises(UsageError, match="list of strings"):
        load_answer_vocab(path)


def test_coco_captions_and_caption_jsonl_round_trip(tmp_path, images):
    records = [
        CaptionRecord(images[0], ["a dog.", "a brown dog."], 5),
        CaptionRecord(images[1], ["a car."], 9),
    ]
    path = tmp_path / "captions.json"
    write_coco_captions(path, records)
    back, report = read_coco_captions(path)
    assert report.total == 0
    assert [(r.file_name, r.captions, r.image_id) for r in back] == [
        (r.file_name, r.captions, r.image_id) for r in records
    ]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"filename": f"img/{i}.png", "caption": c}) + "\n"
                             for i, c in [(0, "a dog."), (0, "a brown dog."), (2, "grey."), (7, "missing.")]))  # fmt: skip
    both, report = read_caption_files(f"{path},{jsonl}")
    assert [r.captions for r in both] == [
        ["a dog.", "a brown dog."],
        ["a car."],
        ["a dog.", "a brown dog."],
        ["grey."],
    ]
    assert report.counts["missing_image"] == 1


def test_shapes_questions_answer_correctly_and_keep_novel_names_out_of_train():
    train, val = ShapesWorld(split="train", seed=5), ShapesWorld(split="val", seed=5)
    seen_types, novel_val = set(), 0
    for i in range(40):
        s = train.sample(i)
        for q, a, t in shapes_questions(s, allow_novel=False):
            assert a in ANSWERS and t in QUESTION_TYPES
            assert not any(n in q for n in NOVEL), q  # novel combinations appear in val only
            seen_types.add(t)
            if q.startswith("how many "):
                shape = q.split()[2].removesuffix("es" if q.split()[2] == "crosses" else "s")
                assert int(a) == sum(name.endswith(shape) for name in s.names)
            if q.startswith("is there a "):
                assert (a == "yes") == (q[len("is there a ") : -1] in s.names)
        v = val.sample(i)
        novel_val += sum(any(n in q for n in NOVEL) for q, _, _ in shapes_questions(v, allow_novel=True))
        novel_val += any(n in shapes_caption(v)[0] for n in NOVEL)
    assert seen_types == set(QUESTION_TYPES) and novel_val > 0
    rng = np.random.default_rng(0)
    kinds = {sample_question(val.sample(i), rng, allow_novel=True)[2] for i in range(60)}
    assert kinds == set(QUESTION_TYPES)


def test_shapes_captions_list_objects_left_to_right_with_spans():
    s = ShapesWorld(split="val", seed=2).sample(3)
    caption, regions = shapes_caption(s)
    assert len(regions) == len(s.labels)
    xs = [(s.boxes[r["box_index"]][0] + s.boxes[r["box_index"]][2]) / 2 for r in regions]
    assert xs == sorted(xs)
    for r in regions:
        ((start, end),) = r["tokens_positive"]
        assert caption[start:end] == r["phrase"] and r["phrase"].endswith(s.names[r["box_index"]])
    refs = shapes_references(s)
    assert refs[0] == caption and len(refs) == 3
