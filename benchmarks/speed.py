"""GLIP-T speed, side by side with Grounding DINO-T, the training step and the data loader.

    python benchmarks/speed.py [--threads 2] [--repeats 3] [--skip gdino train loader] [--compile MODE ...]

Rows (each section prints as soon as it is measured):

* GLIP-T inference. GPU: bf16 autocast, 800x1333 (padded 800x1344), batch 1 and 8, forward + post-processing
  from a normalised tensor, prompt of 8 COCO classes, cached text features; ``--compile default
  reduce-overhead`` adds the compiled paths (shape buckets; "reduce-overhead" = CUDA graphs). CPU: fp32, the
  reference input of shared/reference/glip_t (chelsea 800x1202 padded to 800x1216, "cat. dog. person.") with
  the weights filled by the reference rule, so the detections are checked against the official ones; the
  official implementation takes about 23 s for this forward on a 2-core machine like CI's.
* RegionCLIP's released RN50 detector (``openglip.regionclip.rcnn``, CPU only): the COCO test settings (C4
  RPN, 1000 proposals, gaussian soft-NMS) on the RegionCLIP reference's 800x800 input and weights, with the
  detections checked against the official ones.
* Grounding DINO-T from Hugging Face transformers (``GroundingDinoConfig()``: its default Swin-T backbone and
  BERT-base text encoder, random weights, nothing downloaded), the same image size, batch, precision and text
  (our bert-base-uncased tokenizer, the same tokens), and GLIP-T's speed relative to it.
* GLIP-T training step: batch 4 at 800x1333 (GPU, bf16 autocast) or batch 1 at 480x640 (CPU, fp32), prompts
  of the 80 COCO class names (positives + sampled negatives, ~140 tokens), 3 boxes per image; forward, the GLIP
  loss, backward, gradient clipping, AdamW (fused on GPU) and the EMA update, as the trainer does them.
* The data loader alone (benchmarks/loader.py): shards, 8 workers, GLIP-T's training augmentation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from _common import (
    GPU_CAPTION,
    agreement,
    find_reference,
    load_official_fill,
    matched_official,
    print_table,
    sync,
    timed,
    train_step_rows,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from openglip.config import glip_t  # noqa: E402
from openglip.models.glip import build_model  # noqa: E402
from openglip.prompts import load_tokenizer, parse_prompt  # noqa: E402

OFFICIAL_CPU_SECONDS = 23.0


def reference_model_and_input():
    """GLIP-T with the reference weights and input (chelsea when the reference is absent)."""
    model = build_model(glip_t()).eval()
    ref_dir = find_reference()
    if ref_dir is None:
        from PIL import Image
        from skimage import data

        from openglip.models.transform import ImageTransform

        cfg = glip_t()
        tf = ImageTransform(min_size=800, max_size=1333, mean=cfg.pixel_mean, std=cfg.pixel_std)
        image, sizes = tf([Image.fromarray(data.chelsea())])
        return model, image, sizes, None
    load_official_fill(model, ref_dir)
    ref = torch.load(ref_dir / "reference.pt", weights_only=True)
    return model, ref["inputs"]["image"], ref["inputs"]["image_sizes"], ref


# ---------------------------------------------------------------------------------------------- GLIP-T


def glip_cpu_rows(threads: int, repeats: int) -> tuple[list[tuple], float]:
    from openglip.api import Detector

    model, image, sizes, ref = reference_model_and_input()
    caption = "cat. dog. person."
    det = Detector(model, device="cpu")
    prompt = parse_prompt(caption)

    def run():
        with torch.no_grad():
            return det.detect_batch(image, sizes, [prompt])[0][0]

    dets = run()  # warm-up (allocations, anchor cache, text cache)
    median, times = timed(run, repeats, torch.device("cpu"))
    rows = [
        (
            f"GLIP-T forward + post-process, fp32, CPU, {threads} threads, 800x1216, batch 1",
            f"{1 / median:.2f} img/s",
            f"{median:.2f} s (min {min(times):.2f}); official ~{OFFICIAL_CPU_SECONDS:.0f} s",
            ", ".join(f"{t:.2f}" for t in times),
        )
    ]
    if ref is not None:
        rows.append(
            ("GLIP-T detections matching the official ones", f"{matched_official(dets, ref)}/100", "", "")
        )
    return rows, median


def regionclip_rows(threads: int, repeats: int) -> list[tuple]:
    """RegionCLIP's released RN50 detector (the COCO test settings: C4 RPN, 1000 proposals, soft-NMS) on the
    reference's 800x800 input with its weights and 65 classes when shared/reference/regionclip_rn50 is there
    (the detections are then checked against the official ones), else random weights on the astronaut photo."""
    from PIL import Image
    from skimage import data

    from openglip.conformance import read_shape_table, regionclip_fill, unmatched_detections
    from openglip.regionclip.rcnn import PRESETS, OfficialRegionCLIP, resize_image
    from openglip.regionclip.rcnn_load import load_official_state

    model = OfficialRegionCLIP(PRESETS["coco"], text=False)
    ref_dir = find_reference("regionclip_rn50")
    ref = None
    if ref_dir is not None:
        ref = torch.load(ref_dir / "reference.pt", weights_only=True)
        rows = [
            r for r in read_shape_table(ref_dir / "state_dict_shapes.tsv") if not r["key"].startswith("lang_")
        ]
        state = regionclip_fill(rows, ref["inputs"]["given_emb"])
        state.pop("roi_heads.box_predictor.test_cls_score.weight")
        load_official_state(model, state, "the reference's filled state dict")
        image, original = ref["configs"]["ovd"]["inputs"]["image_resized_u8"], tuple(ref["inputs"]["orig_hw"])
        emb = ref["inputs"]["given_emb"]
    else:
        image, original = resize_image(Image.fromarray(data.astronaut()), 800, 1333), (512, 512)
        emb = torch.randn(65, 1024)
    model.set_vocabulary([f"class {i}" for i in range(65)], emb)

    def run():
        return model.run([image], [original])

    out = run()  # warm-up
    median, times = timed(run, repeats, torch.device("cpu"))
    rows = [(f"RegionCLIP RN50 detector (COCO settings), fp32, CPU, {threads} threads, 800x800, 1000 proposals",
             f"{1 / median:.2f} img/s", f"{median:.2f} s (min {min(times):.2f}); official 347 s incl. its Python soft-NMS",
             ", ".join(f"{t:.2f}" for t in times))]  # fmt: skip
    if ref is not None:
        expected = ref["configs"]["ovd"]["given_emb"]["detections"]
        got = out.detections[0]
        rows.append(("RegionCLIP detections matching the official ones (class, IoU >= 0.99, |dscore| <= 1e-4)",
                     f"{len(expected['scores']) - unmatched_detections(got.boxes, got.scores, got.classes, expected)}/{len(expected['scores'])}", "", ""))  # fmt: skip
    return rows


def glip_gpu_rows(repeats: int, compile_modes: list[str]) -> tuple[list[tuple], dict[int, float]]:
    """GLIP-T bf16 batch 1 and 8 on the GPU, eager and compiled; each row is also printed as it is measured
    (a compile that runs out of time must not take the rows before it along)."""
    from openglip.api import Detector

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = build_model(glip_t()).eval().to(device)
    with torch.no_grad():
        model.head.bias0.fill_(0.0)  # random weights: raise the alignment bias so that there are detections
    prompt = parse_prompt(GPU_CAPTION)
    inputs = {
        b: torch.randn(b, 3, 800, 1344, generator=torch.Generator().manual_seed(b)).to(device) for b in (1, 8)
    }
    rows, rates, eager = [], {}, {}
    # eager first; then the compiled modes at batch 1 before batch 8, so that the batch-1 latency of every mode
    # is measured before a time limit can cut the (longer) batch-8 compilations
    runs = [("eager", 1), ("eager", 8)] + [(m, b) for b in (1, 8) for m in compile_modes]
    for mode, batch in runs:
        kwargs = {} if mode == "eager" else {"compile": True if mode == "default" else mode}
        det = Detector(model, device=device, precision="bf16", **kwargs)
        sizes = [(800, 1333)] * batch

        def run(det=det, pixel_values=inputs[batch], sizes=sizes, prompts=[prompt] * batch):
            with torch.no_grad():
                return det.detect_batch(pixel_values, sizes, prompts)[0]

        t0 = time.perf_counter()
        try:
            result = run()
            sync(device)
            first = time.perf_counter() - t0
            median, _ = timed(run, max(repeats, 5), device)
        except Exception as err:  # a compile failure is a result to report, not a reason to stop
            message = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            rows.append((f"GLIP-T bf16 {mode}, batch {batch}, 800x1333", "failed", message, ""))
            print("measured:", " | ".join(rows[-1]), flush=True)
            continue
        if mode == "eager":
            rates[batch], eager[batch] = batch / median, result
            same = ""
        else:
            found = [agreement(a, b, 0.99) for a, b in zip(eager[batch], result)]
            total = sum(len(a.scores) for a in eager[batch])
            same = f"; {sum(f for f, _ in found)}/{total} eager detections, max |ds| {max(g for _, g in found):.4f}"
        rows.append((f"GLIP-T bf16 {mode}, GPU, batch {batch}, 800x1333", f"{batch / median:.1f} img/s",
                     f"{median * 1000:.1f} ms/batch{same}", f"first call {first:.1f} s"))  # fmt: skip
        print("measured:", " | ".join(rows[-1]), flush=True)
    return rows, rates


# ---------------------------------------------------------------------------------------------- Grounding DINO


def gdino_rows(device: torch.device, batches: list[int], size: tuple[int, int], caption: str, repeats: int):
    """Rows and images/s per batch of HF Grounding DINO-T (random init, no download)."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval().to(device)
    enc = load_tokenizer()([caption], return_tensors="pt")
    rows, rates = [], {}
    for batch in batches:
        inputs = {
            "pixel_values": torch.randn(batch, 3, *size, device=device),
            "pixel_mask": torch.ones(batch, *size, dtype=torch.long, device=device),
            "input_ids": enc["input_ids"].repeat(batch, 1).to(device),
            "attention_mask": enc["attention_mask"].repeat(batch, 1).to(device),
            "token_type_ids": torch.zeros_like(enc["input_ids"]).repeat(batch, 1).to(device),
        }
        ctx = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )

        def run(inputs=inputs, ctx=ctx):
            with torch.no_grad(), ctx:
                return model(**inputs)

        run()
        median, times = timed(run, repeats, device)
        rates[batch] = batch / median
        precision = "bf16" if device.type == "cuda" else "fp32"
        rows.append((f"Grounding DINO-T (HF transformers) {precision}, {device.type}, batch {batch}, "
                     f"{size[0]}x{size[1]}, {enc['input_ids'].shape[1]} tokens", f"{batch / median:.2f} img/s",
                     f"{median * 1000:.0f} ms/batch", ", ".join(f"{t:.2f}" for t in times)))  # fmt: skip
    return rows, rates


# ---------------------------------------------------------------------------------------------- training


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["glip", "regionclip", "gdino", "train", "loader"]
    )
    parser.add_argument("--compile", nargs="*", default=[], choices=["default", "reduce-overhead", "max-autotune"],
                        help="GPU: also time these torch.compile modes of the inference path")  # fmt: skip
    parser.add_argument(
        "--compile-train", action="store_true", help="GPU: also time the compiled training step"
    )
    parser.add_argument("--loader-workers", type=int, default=8)
    args = parser.parse_args()
    header = ("case", "result", "detail", "runs (s)")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(args.threads)
    glip_rate: dict[int, float] = {}
    if "glip" not in args.skip:
        if cuda:
            rows, glip_rate = glip_gpu_rows(args.repeats, args.compile)
            title = f"GLIP-T inference ({torch.cuda.get_device_name()})"
        else:
            rows, seconds = glip_cpu_rows(args.threads, args.repeats)
            glip_rate = {1: 1 / seconds}
            title = "GLIP-T inference (CPU)"
        print_table(header, rows, title=title)
    if "regionclip" not in args.skip and not cuda:
        print_table(
            header, regionclip_rows(args.threads, args.repeats), title="RegionCLIP's released detector (CPU)"
        )
    if "gdino" not in args.skip:
        if cuda:
            rows, rates = gdino_rows(device, [1, 8], (800, 1333), GPU_CAPTION, max(args.repeats, 5))
        else:
            rows, rates = gdino_rows(device, [1], (800, 1216), "cat. dog. person.", args.repeats)
        for b, rate in rates.items():
            if b in glip_rate:
                rows.append(
                    (f"GLIP-T / Grounding DINO-T speed, batch {b}", f"{glip_rate[b] / rate:.2f}x", "", "")
                )
        print_table(header, rows, title="Grounding DINO-T, same input")
    if "train" not in args.skip:
        rows = train_step_rows(repeats=args.repeats if cuda else 1)
        if cuda and args.compile_train:
            rows += train_step_rows(repeats=args.repeats, compile_train=True)
        print_table(header, rows, title="GLIP-T training step")
    if "loader" not in args.skip:
        from loader import loader_rows

        rows = loader_rows([args.loader_workers], images=max(64, 16 * args.loader_workers), batches=40)
        print_table(("case", "throughput"), rows, title="data loader alone (benchmarks/loader.py)")


if __name__ == "__main__":
    main()
