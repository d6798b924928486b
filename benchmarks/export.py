"""ONNX Runtime vs PyTorch latency of exported models on CPU, batch 1, the same number of threads for both.

    python benchmarks/export.py [--threads 2] [--repeats 5] [--presets glip_nano,glip_t] [--exporter auto]

For each preset the model is exported twice (fixed vocabulary: the prompt baked in; open vocabulary: the prompt
tokenized at run time) and timed on scikit-image's chelsea photo through the model's own resize rule: glip_nano at
512x769 (padded 512x800), glip_t at 800x1202 (padded 800x1216, the input of benchmarks/speed.py). The PyTorch side
is ``GLIP.forward`` in fp32 with the text features cached (fixed vocabulary) or encoded in the call (open
vocabulary), the ONNX Runtime side ``InferenceSession.run`` on CPUExecutionProvider; post-processing is not timed.
Each figure is the median of ``--repeats`` runs after one warm-up. glip_t takes the conformance fill rule's weights
when shared/reference/glip_t is present (random weights otherwise; latency does not depend on them), glip_nano
its pretrained parts and a random head.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import find_reference, load_official_fill, print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from openglip.api import Detector  # noqa: E402
from openglip.config import get_preset  # noqa: E402
from openglip.export import export_onnx  # noqa: E402
from openglip.models.glip import build_model  # noqa: E402
from openglip.prompts import parse_prompt  # noqa: E402

PROMPT = "cat. dog. person."


def build(preset: str) -> Detector:
    model = build_model(get_preset(preset)).eval()
    ref = find_reference()
    if preset == "glip_t" and ref is not None:
        load_official_fill(model, ref)
    return Detector(model, device="cpu")


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_preset(preset: str, args, folder: Path) -> list[tuple]:
    import onnxruntime as ort
    from skimage import data

    det = build(preset)
    pixel_values, sizes = det.transform([Image.fromarray(data.chelsea())])
    (h, w), (H, W) = sizes[0], pixel_values.shape[-2:]
    chunk = det.encode_prompt(parse_prompt(PROMPT))[0]
    rows = []
    for mode in ("fixed", "open"):
        t0 = time.perf_counter()
        result = export_onnx(
            det,
            folder / preset / mode / "model.onnx",
            prompt=PROMPT if mode == "fixed" else None,
            exporter=args.exporter,
        )
        export_s = time.perf_counter() - t0
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
        feeds = {"images": pixel_values.numpy()}
        if mode == "open":
            feeds.update(
                input_ids=chunk.text.input_ids.numpy(), attention_mask=chunk.text.attention_mask.numpy()
            )

        def torch_forward(mode=mode):
            with torch.no_grad():
                if mode == "fixed":
                    return det.model(pixel_values, sizes, text=chunk.text)
                return det.model(
                    pixel_values,
                    sizes,
                    input_ids=chunk.text.input_ids,
                    attention_mask=chunk.text.attention_mask,
                )

        torch_s, out = median_seconds(torch_forward, args.repeats)
        ort_s, got = median_seconds(lambda s=session, f=feeds: s.run(["logits"], f)[0], args.repeats)
        ref = torch.cat(out.logits, 1).numpy()
        diff = float(np.abs(got - ref).max() / np.abs(ref).max())
        rows.append(
            (
                preset,
                f"{h}x{w} (pad {H}x{W})",
                mode,
                result.exporter,
                f"{export_s:.0f}",
                f"{torch_s:.3f}",
                f"{ort_s:.3f}",
                f"{torch_s / ort_s:.2f}x",
                f"{diff:.1e}",
            )
        )
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
        del session
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="threads for PyTorch and for ONNX Runtime")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--presets", default="glip_nano,glip_t")
    parser.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            rows += bench_preset(preset, args, Path(tmp))
    print_table(
        [
            "model",
            "input",
            "vocabulary",
            "exporter",
            "export s",
            "PyTorch s",
            "ONNX Runtime s",
            "speed-up",
            "logits rel. diff",
        ],
        rows,
        title=f"CPU latency, batch 1, {args.threads} threads each, median of {args.repeats} (benchmarks/export.py)",
    )


if __name__ == "__main__":
    main()
