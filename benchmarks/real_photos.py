"""The zero-shot default (no box training) on the hand-labelled real-photo check set.

    python benchmarks/real_photos.py [--threads 2] [--teacher default|CHECKPOINT]

Each photo is asked for its own prompt (its labelled phrases plus one absent distractor); AP50 is COCO AP at
IoU 0.5 over the phrases (pycocotools). Goals from the real-photo issue: AP50 >= 0.5, <= 2 s per image on CPU.
Per-photo rows show the best-scoring box of each labelled phrase and its IoU with the label.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher", default="default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from torchvision.ops import box_iou

    from openglip.metrics import coco_detection_metrics
    from openglip.shapes.photos import categories, load_check_set, load_photo, prompt_for, to_coco
    from openglip.teachers import load_teacher

    entries = load_check_set()
    start = time.time()
    teacher = load_teacher(args.teacher, device="cpu")
    setup = time.time() - start
    names = categories(entries)
    gt = to_coco(entries)
    results, rows, times = [], [], []
    for entry in entries:
        image = load_photo(entry)
        prompt = prompt_for(entry)
        t0 = time.time()
        dets = teacher.predict(image, prompt, box_threshold=0.0)
        times.append(time.time() - t0)
        for i in range(len(dets)):
            x1, y1, x2, y2 = (float(v) for v in dets.xyxy[i])
            results.append({"image_id": entry["id"], "category_id": names.index(dets.phrases[i]) + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(dets.scores[i])})  # fmt: skip
        for phrase in dict.fromkeys(o["phrase"] for o in entry["objects"]):
            mine = dets[dets.phrases == phrase]
            want = torch.tensor(
                [o["bbox"] for o in entry["objects"] if o["phrase"] == phrase], dtype=torch.float32
            )
            if len(mine):
                iou = float(box_iou(torch.as_tensor(mine.xyxy[:1]), want).max())
                rows.append((entry["file_hint"], phrase, f"{mine.scores[0]:.2f}", f"{iou:.2f}"))
            else:
                rows.append((entry["file_hint"], phrase, "-", "-"))
    metrics = coco_detection_metrics(gt, results)
    print(f"zero-shot teacher ({args.teacher}) on {len(entries)} photos, {len(gt['annotations'])} boxes")
    header = ("photo", "phrase", "top score", "top IoU")
    print_table(header, rows)
    print()
    summary = [
        ("AP50 (goal >= 0.5)", f"{metrics['AP50']:.3f}"),
        ("AP (0.5:0.95)", f"{metrics['AP']:.3f}"),
        (
            f"seconds per image, CPU, {args.threads} threads (goal <= 2)",
            f"{statistics.median(times):.2f} median, {max(times):.2f} max",
        ),
        ("one-time set-up (models, cached text embeddings)", f"{setup:.1f} s"),
    ]
    w = max(len(k) for k, _ in summary)
    for k, v in summary:
        print(f"{k.ljust(w)} | {v}")


if __name__ == "__main__":
    main()
