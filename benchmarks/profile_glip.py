"""Where a GLIP forward spends its time, per module, with the op count and the host syncs of each part.

    python benchmarks/profile_glip.py [--preset glip_t glip_nano] [--threads 2] [--device cpu]

One warm-up pass, then one pass under ``torch.profiler``: the forward (image backbone, FPN, text encoder, each
kind of fusion-tower module summed over the layers, head) and the post-processing (token -> phrase scores,
candidates, per-phrase NMS). Columns:

* ``time``: the part's own wall time in the profiled pass (profiler overhead included, a few percent).
* ``ops``: ATen operators called directly from Python (on a GPU each launches one kernel or more); nested
  calls inside an operator are not counted again.
* ``syncs``: operators that make the host wait for the device: ``item()``/``float()``/``bool()`` on a tensor
  (``_local_scalar_dense``, ``is_nonzero``), ``nonzero`` (also behind boolean-mask indexing) and
  ``masked_select``. On CPU they cost little; on a GPU each one stalls the launch queue.

GLIP-T runs on the conformance reference input (800x1216, "cat. dog. person.") when shared/reference/glip_t is
present, else on chelsea resized the same way; glip_nano on chelsea at its own test size (512x768).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from _common import find_reference, load_official_fill, print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from openglip.config import get_preset  # noqa: E402
from openglip.models.glip import build_model  # noqa: E402
from openglip.models.postprocess import PostProcessor  # noqa: E402
from openglip.models.transform import ImageTransform  # noqa: E402
from openglip.prompts import load_tokenizer, positive_map, split_caption, token_spans  # noqa: E402

SYNC_OPS = ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select")
CAPTION = "cat. dog. person."


def build(preset: str, device: torch.device):
    """Model, input batch and image sizes of one preset."""
    cfg = get_preset(preset)
    model = build_model(cfg).eval()
    ref = find_reference() if preset == "glip_t" else None
    if ref is not None:
        load_official_fill(model, ref)
        inputs = torch.load(ref / "reference.pt", weights_only=True)["inputs"]
        image, sizes = inputs["image"], inputs["image_sizes"]
    else:
        from PIL import Image
        from skimage import data

        tf = ImageTransform(
            min_size=cfg.min_size, max_size=cfg.max_size, mean=cfg.pixel_mean, std=cfg.pixel_std, bgr=cfg.bgr
        )
        image, sizes = tf([Image.fromarray(data.chelsea())])
    return model.to(device), image.to(device), sizes


def module_groups(model) -> dict[str, list[torch.nn.Module]]:
    """The parts reported on their own (tower modules grouped by kind over all layers)."""
    groups = {
        "image backbone": [model.backbone],
        "FPN": [model.fpn],
        "text encoder": [model.text_encoder],
        "tower: cross-attention (X-MHA)": [b.cross_attn for b in model.tower.layers],
        "tower: text layers (BERT)": [b.text_layer for b in model.tower.layers if b.text_layer is not None],
        "tower: DyConv (deformable)": [b.dyconv for b in model.tower.layers],
        "head": [model.head],
    }
    return {k: v for k, v in groups.items() if v}


def annotate(groups) -> list:
    """Forward hooks that open/close a profiler range named after the module's group."""
    handles = []
    for name, modules in groups.items():
        for m in modules:
            ranges: list = []

            def pre(_m, _a, name=name, ranges=ranges):
                r = torch.profiler.record_function(name)
                r.__enter__()
                ranges.append(r)

            def post(_m, _a, _o, ranges=ranges):
                ranges.pop().__exit__(None, None, None)

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


def owner(event, labels: set[str]) -> str | None:
    p = event.cpu_parent
    while p is not None:
        if p.name in labels:
            return p.name
        p = p.cpu_parent
    return None


def profile_preset(preset: str, device: torch.device) -> tuple[list[tuple], dict]:
    model, image, sizes = build(preset, device)
    enc = load_tokenizer()([CAPTION], return_tensors="pt")
    pmap = positive_map(token_spans(enc[0], split_caption(CAPTION)), enc["input_ids"].shape[1]).to(device)
    post = PostProcessor()
    groups = module_groups(model)
    labels = set(groups) | {"post-process", "forward"}

    def run():
        with torch.no_grad():
            with torch.profiler.record_function("forward"):
                out = model(image, sizes, [CAPTION])
            with torch.profiler.record_function("post-process"):
                result = post(out, [pmap])[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
            return result

    handles = annotate(groups)
    try:
        run()  # warm-up: allocator, anchor cache, lazy inits
        t0 = time.perf_counter()
        run()
        plain = time.perf_counter() - t0
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            run()
    finally:
        for h in handles:
            h.remove()
    events = prof.events()
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name in labels:
            totals[e.name] += e.cpu_time_total / 1000.0  # ms
    ops: Counter = Counter()
    syncs: dict[str, Counter] = defaultdict(Counter)
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        where = owner(e, set(groups) | {"post-process"})
        where = where or ("forward (glue)" if owner(e, {"forward"}) else "outside")
        parent = e.cpu_parent
        if parent is None or not parent.name.startswith("aten::"):
            ops[where] += 1
        if e.name in SYNC_OPS:
            syncs[where][e.name.removeprefix("aten::")] += 1
    forward_ms = totals["forward"]
    glue_ms = forward_ms - sum(totals[g] for g in groups)
    rows = []
    for name in [*groups, "forward (glue)", "post-process"]:
        ms = glue_ms if name == "forward (glue)" else totals[name]
        total_ms = forward_ms + totals["post-process"]
        sync = ", ".join(f"{v} {k}" for k, v in sorted(syncs[name].items())) or "0"
        rows.append((name, f"{ms:8.1f}", f"{100 * ms / total_ms:5.1f}%", ops[name], sync))
    all_syncs = sum(sum(c.values()) for k, c in syncs.items() if k != "outside")
    rows.append(
        (
            "total (forward + post-process)",
            f"{forward_ms + totals['post-process']:8.1f}",
            "100.0%",
            sum(v for k, v in ops.items() if k != "outside"),
            all_syncs,
        )
    )
    info = {"shape": tuple(image.shape), "plain_s": plain}
    return rows, info


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", nargs="+", default=["glip_t", "glip_nano"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for preset in args.preset:
        rows, info = profile_preset(preset, device)
        title = (
            f"{preset}, input {info['shape'][2]}x{info['shape'][3]}, fp32, {device.type}"
            + (f", {args.threads} threads" if device.type == "cpu" else "")
            + f"; unprofiled pass {info['plain_s']:.2f} s"
        )
        print_table(("part", "time (ms)", "share", "ops", "host syncs"), rows, title=title)


if __name__ == "__main__":
    main()
