"""GLIP-T forward latency on CPU (and throughput on GPU when one is present), with an output check.

    python benchmarks/speed.py [--threads 2] [--repeats 3]

CPU: the reference input of shared/reference/glip_t (chelsea resized to 800x1202, padded to 800x1216, caption
"cat. dog. person."), fp32, weights filled by the reference rule so the outputs can be checked against the
official detections. The official implementation takes about 23 s (median of 3) for this forward on a 2-core
machine like CI's (reference README: 27.2 s on the machine that produced it).
GPU: batch-1 and batch-8 images/s at 800x1333 in bf16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from _table import print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from openglip.checkpoints import load_into  # noqa: E402
from openglip.config import glip_t  # noqa: E402
from openglip.conformance import official_fill, read_shape_table  # noqa: E402
from openglip.models.detector import build_model  # noqa: E402
from openglip.models.postprocess import PostProcessor  # noqa: E402
from openglip.prompts import load_tokenizer, positive_map, split_caption, token_spans  # noqa: E402

OFFICIAL_CPU_SECONDS = 23.0


def find_reference() -> Path | None:
    for c in (REPO.parent / "shared" / "reference" / "glip_t", REPO / "shared" / "reference" / "glip_t"):
        if c.is_dir():
            return c
    return None


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def cpu_benchmark(threads: int, repeats: int) -> list[tuple]:
    torch.set_num_threads(threads)
    ref_dir = find_reference()
    model = build_model(glip_t()).eval()
    caption = "cat. dog. person."
    ref = None
    if ref_dir is not None:
        load_into(model, official_fill(read_shape_table(ref_dir / "state_dict_shapes.tsv")))
        ref = torch.load(ref_dir / "reference.pt", weights_only=True)
        image, sizes = ref["inputs"]["image"], ref["inputs"]["image_sizes"]
    else:
        from PIL import Image
        from skimage import data

        from openglip.models.transform import ImageTransform

        cfg = glip_t()
        tf = ImageTransform(min_size=800, max_size=1333, mean=cfg.pixel_mean, std=cfg.pixel_std)
        image, sizes = tf([Image.fromarray(data.chelsea())])
    prompt = split_caption(caption)
    enc = load_tokenizer()([caption], return_tensors="pt")
    pmap = positive_map(token_spans(enc[0], prompt), enc["input_ids"].shape[1])
    post = PostProcessor()

    def run():
        with torch.no_grad():
            out = model(image, sizes, [caption])
            return post(out, [pmap])[0]

    run()  # warm-up (allocations, anchor cache)
    median, times, dets = timed(run, repeats)
    rows = [
        (
            f"GLIP-T forward + post-process, fp32, CPU, {threads} threads, 800x1216",
            f"{median:.2f} s",
            f"{OFFICIAL_CPU_SECONDS / median:.1f}x faster than official (~{OFFICIAL_CPU_SECONDS:.0f} s)",
            ", ".join(f"{t:.2f}" for t in times),
        )
    ]
    if ref is not None:
        from torchvision.ops import box_iou

        want = ref["detections"]
        iou = box_iou(dets.boxes, want["boxes_xyxy_resized"])
        same = ((dets.labels[:, None] + 1) == want["labels"][None]) & (
            (dets.scores[:, None] - want["scores"][None]).abs() <= 1e-5
        )
        matched = int(((iou >= 0.99) & same).any(1).sum())
        rows.append(("detections matching the official ones", f"{matched}/{len(want['scores'])}", "", ""))
    return rows


def gpu_benchmark(repeats: int) -> list[tuple]:
    if not torch.cuda.is_available():
        return [("GPU", "not available", "", "")]
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = build_model(glip_t()).eval().to(device)
    caption = "person. bicycle. car. motorcycle. airplane. bus. train. truck."
    rows = []
    for batch in (1, 8):
        image = torch.randn(batch, 3, 800, 1344, device=device)
        sizes = [(800, 1333)] * batch
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            text = model.encode_text(*model.tokenize([caption] * batch))

            def run(image=image, sizes=sizes, text=text):
                out = model(image, sizes, text=text)
                torch.cuda.synchronize()
                return out

            run()
            run()
            median, _, _ = timed(run, max(repeats, 5))
        rows.append((f"GLIP-T bf16, GPU ({torch.cuda.get_device_name()}), batch {batch}, 800x1333",
                     f"{batch / median:.1f} img/s", f"{median * 1000:.0f} ms/batch", ""))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    rows = [] if args.skip_cpu else cpu_benchmark(args.threads, args.repeats)
    rows += gpu_benchmark(args.repeats)
    header = ("case", "result", "comparison", "runs (s)")
    print_table(header, rows)


if __name__ == "__main__":
    main()
