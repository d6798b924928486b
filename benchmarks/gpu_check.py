"""CPU vs CUDA equivalence of the raw GLIP forward (fp32, TF32 off), for the tiny preset and GLIP-T.

    python benchmarks/gpu_check.py

Prints the largest relative difference of the alignment logits, box regression and centerness between the same
randomly initialised model on CPU and on the GPU; with no GPU it says so and exits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def max_relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((u - v.cpu()).abs().max() / u.abs().max().clamp(min=1e-6)) for u, v in zip(a, b))


def main() -> int:
    if not torch.cuda.is_available():
        print("no GPU available")
        return 0
    from openglip.config import glip_t, tiny
    from openglip.models.glip import build_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    captions = ["cat. red car. traffic light.", "a person riding a horse."]
    print(
        f"{'preset':<8} | {'input':<9} | logits   | box      | centerness  ({torch.cuda.get_device_name()})"
    )
    for name, cfg, size in (("tiny", tiny(), 256), ("glip_t", glip_t(), 512)):
        torch.manual_seed(0)
        cpu = build_model(cfg).eval()
        gpu = build_model(cfg).eval().cuda()
        gpu.load_state_dict(cpu.state_dict())
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            a = cpu(x, [(size, size)] * 2, captions)
            b = gpu(x.cuda(), [(size, size)] * 2, captions)
        diffs = [max_relative(a.logits, b.logits), max_relative(a.box_regression, b.box_regression)]
        diffs.append(max_relative(a.centerness, b.centerness))
        print(f"{name:<8} | 2x{size}x{size} | " + " | ".join(f"{d:.1e}" for d in diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
