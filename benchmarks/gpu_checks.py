"""Output checks of the fast paths on a GPU: fp32 against the official detections, bf16 and compiled against fp32.

    python benchmarks/gpu_checks.py            # GPU: GLIP-T on the conformance reference input
    python benchmarks/gpu_checks.py --smoke    # any machine: the tiny preset through the same code paths

GPU rows (GLIP-T, reference weights and input of shared/reference/glip_t, or $OPENGLIP_REFERENCE):

* fp32 (TF32 off) detections matching the official ones (same label, IoU >= 0.99, |score diff| <= 1e-5; the
  CPU path matches 100/100).
* bf16 autocast against fp32: detections of fp32 that bf16 finds again (same label, IoU >= 0.9), and the
  largest score difference among those (the documented bf16 tolerance).
* compiled (inductor, default mode, shape buckets) against eager, both bf16 on the same bucketed input.

``--smoke`` (no GPU needed, well under a minute): the tiny model, eager against compiled ("aot_eager" on CPU),
one training step and the shard loader, so that benchmarks/gpu_run.sh can be tried anywhere.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from _common import agreement, find_reference, load_official_fill, matched_official, print_table, train_batch
from loader import loader_rows

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from openglip.api import Detector, default_buckets  # noqa: E402
from openglip.prompts import parse_prompt  # noqa: E402


def reference():
    from openglip.config import glip_t
    from openglip.models.glip import build_model

    root = find_reference()
    if root is None:
        raise SystemExit(
            "no shared/reference/glip_t: set OPENGLIP_REFERENCE (benchmarks/gpu_prepare.sh copies it)"
        )
    model = load_official_fill(build_model(glip_t()).eval(), root)
    return model, torch.load(root / "reference.pt", weights_only=True)


def gpu_rows() -> list[tuple]:

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, ref = reference()
    image, sizes = ref["inputs"]["image"], ref["inputs"]["image_sizes"]
    prompt = parse_prompt(ref["inputs"]["caption"])
    rows = []

    def run(det, pixels):
        with torch.no_grad():
            return det.detect_batch(pixels, sizes, [prompt])[0][0]

    fp32 = run(Detector(model, device="cuda", precision="fp32"), image)

    def add(row):  # printed as measured: a time limit must not take the finished rows along
        rows.append(row)
        print("measured:", " | ".join(row), flush=True)

    add(
        (
            "fp32 (TF32 off) vs official detections",
            f"{matched_official(fp32, ref)}/100",
            "IoU >= 0.99, |ds| <= 1e-5",
        )
    )
    bf16_det = Detector(model, device="cuda", precision="bf16")
    bf16 = run(bf16_det, image)
    found, gap = agreement(fp32, bf16, 0.9)
    add(("bf16 vs fp32 detections", f"{found}/{len(fp32.scores)}", f"IoU >= 0.9; max |score diff| {gap:.4f}"))
    found10, gap10 = agreement(_first(fp32, 10), bf16, 0.9)
    add(("bf16 vs fp32, the 10 best detections", f"{found10}/10", f"max |score diff| {gap10:.4f}"))
    bucket = torch.zeros(1, 3, *default_buckets(model.config)[2])  # 800x1344 holds 800x1216
    bucket[..., : image.shape[-2], : image.shape[-1]] = image
    eager = run(bf16_det, bucket)
    t0 = time.perf_counter()
    compiled_det = Detector(model, device="cuda", precision="bf16", compile=True)
    compiled = run(compiled_det, bucket)
    first = time.perf_counter() - t0
    found, gap = agreement(eager, compiled, 0.99)
    add(("compiled (inductor) vs eager, bf16, 800x1344 bucket", f"{found}/{len(eager.scores)}",
                 f"IoU >= 0.99; max |score diff| {gap:.5f}; compile {first:.0f} s"))  # fmt: skip
    return rows


def _first(c, k):
    from openglip.models.postprocess import Candidates

    return Candidates(c.boxes[:k], c.scores[:k], c.labels[:k])


def smoke_rows() -> list[tuple]:
    import openglip
    from openglip.config import TrainConfig, tiny
    from openglip.engine.optim import build_optimizer
    from openglip.tasks import GLIPTask

    torch.manual_seed(0)
    model = openglip.load_model("tiny", device="cpu").model
    with torch.no_grad():
        model.head.bias0.fill_(0.0)
    prompt = parse_prompt("cat. dog.")
    pixels = torch.randn(2, 3, 128, 192)
    sizes = [(128, 192)] * 2
    eager = Detector(model, device="cpu", buckets=default_buckets(model.config))
    compiled = Detector(model, device="cpu", compile=True, compile_backend="aot_eager")
    with torch.no_grad():
        a = eager.detect_batch(pixels, sizes, [prompt] * 2)[0][0]
        b = compiled.detect_batch(pixels, sizes, [prompt] * 2)[0][0]
    found, gap = agreement(a, b, 0.99)
    rows = [
        (
            "tiny: compiled (aot_eager) vs eager detections",
            f"{found}/{len(a.scores)}",
            f"max |score diff| {gap:.1e}",
        )
    ]
    cfg = TrainConfig()
    task = GLIPTask(tiny(), cfg)
    train_model = task.build_model().train()
    optimizer = build_optimizer(task.param_groups(train_model, cfg), torch.device("cpu"))

    batch = train_batch(2, (128, 160), torch.device("cpu"))
    losses = task.losses(train_model, batch)
    sum(losses.values()).backward()
    optimizer.step()
    rows.append(("tiny: one training step", "finite" if all(torch.isfinite(v) for v in losses.values()) else "NaN",
                 ", ".join(f"{k}={float(v):.3f}" for k, v in losses.items())))  # fmt: skip

    rows += [(*r, "") for r in loader_rows([2], images=16, batches=3)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke or not torch.cuda.is_available():
        print_table(("check", "result", "detail"), smoke_rows(), title="smoke path (tiny preset, CPU)")
        return
    print_table(
        ("check", "result", "detail"),
        gpu_rows(),
        title=f"GLIP-T output checks ({torch.cuda.get_device_name()})",
    )


if __name__ == "__main__":
    main()
