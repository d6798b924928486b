"""What the benchmark scripts share: the plain-text table every one prints, timing, the GLIP-T reference
(weights by the official fill rule, its input and detections), detection agreement, and the GLIP-T training step
(speed.py, gpu_checks.py and loader.py all use it)."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from openglip.config import glip_t  # noqa: E402


def print_table(header: Sequence[str], rows: Sequence[Sequence], title: str | None = None) -> None:
    """Print ``rows`` under ``header`` in left-aligned columns separated by ``|`` (and ``title`` above)."""
    if title is not None:
        print(f"\n{title}")
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def find_reference(name: str = "glip_t") -> Path | None:
    """shared/reference/NAME beside the checkout, under $OPENGLIP_REFERENCE, or carried in .gpu/reference."""
    roots = [os.environ.get("OPENGLIP_REFERENCE", ""), REPO.parent / "shared" / "reference"]
    roots += [REPO / "shared" / "reference", REPO / ".gpu" / "reference"]
    for root in roots:
        if root and (Path(root) / name).is_dir():
            return Path(root) / name
    return None


def load_official_fill(model: torch.nn.Module, ref_dir: Path) -> torch.nn.Module:
    """``model`` with the reference's deterministic official weights (shared/reference/glip_t's fill rule)."""
    from openglip.checkpoints import load_into
    from openglip.conformance import official_fill, read_shape_table

    load_into(model, official_fill(read_shape_table(ref_dir / "state_dict_shapes.tsv")))
    return model


def matched_official(result, ref) -> int:
    from torchvision.ops import box_iou

    want = ref["detections"]
    iou = box_iou(result.boxes.float().cpu(), want["boxes_xyxy_resized"])
    same = ((result.labels.cpu()[:, None] + 1) == want["labels"][None]) & (
        (result.scores.float().cpu()[:, None] - want["scores"][None]).abs() <= 1e-5
    )
    return int(((iou >= 0.99) & same).any(1).sum())


def agreement(a, b, iou_min: float) -> tuple[int, float]:
    """How many of ``a``'s detections ``b`` has too (same label, IoU >= iou_min), and the largest score gap."""
    from torchvision.ops import box_iou

    if len(a.scores) == 0 or len(b.scores) == 0:
        return 0, float("nan")
    iou = box_iou(a.boxes.float().cpu(), b.boxes.float().cpu())
    same = (a.labels.cpu()[:, None] == b.labels.cpu()[None]) & (iou >= iou_min)
    best = torch.where(same, iou, -1.0).argmax(1)
    found = same.any(1)
    gap = (a.scores.float().cpu()[found] - b.scores.float().cpu()[best[found]]).abs()
    return int(found.sum()), float(gap.max()) if len(gap) else float("nan")


COCO = ("person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
        "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
        "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
        "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
        "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote "
        "keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
        "hair_drier toothbrush").replace("_", "~").split()  # fmt: skip
COCO = [c.replace("~", " ") for c in COCO]
GPU_CAPTION = ". ".join(COCO[:8]) + "."  # person. bicycle. ... truck.


def train_batch(batch: int, size: tuple[int, int], device: torch.device):
    """A collated training batch of random images with COCO-class detection prompts and 3 boxes each."""
    import numpy as np

    from openglip.data.collate import Collate
    from openglip.data.datasets import detection_prompt

    rng = np.random.default_rng(0)
    items = []
    for b in range(batch):
        labels = rng.choice(len(COCO), size=3, replace=False)
        caption, spans = detection_prompt(labels.tolist(), COCO, rng, num_negatives=85)
        h, w = size
        xy = rng.uniform(0, [w * 0.6, h * 0.6], size=(3, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(40, 300, size=(3, 2))], 1).clip(0, [w, h, w, h])
        target = {
            "boxes": boxes.astype("float32"),
            "caption": caption,
            "spans": [[spans[int(c)]] for c in labels],
        }
        items.append((torch.randn(3, h, w), {**target, "labels": labels, "image_id": b}))
    return Collate()(items).to(device)


def train_step_rows(
    repeats: int = 3, compile_train: bool = False, device: torch.device | None = None
) -> list[tuple]:
    """GLIP-T training-step images/s, with the trainer's own loss, optimiser and EMA."""
    from openglip.config import TrainConfig
    from openglip.engine.optim import build_optimizer
    from openglip.engine.state import ModelEMA
    from openglip.tasks import GLIPTask

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    # the CPU row is smaller (1 x 480x640) so that it fits a small machine's memory (2 x 512x768: 15.8 GiB)
    size, batch = ((800, 1333), 4) if cuda else ((480, 640), 1)
    cfg = TrainConfig(compile=compile_train)
    task = GLIPTask(glip_t(), cfg)
    torch.manual_seed(0)
    model = task.build_model().to(device).train()
    if compile_train:
        model.compile_parts()
    optimizer = build_optimizer(task.param_groups(model, cfg), device)
    ema = ModelEMA(model, cfg.ema_decay)
    data = train_batch(batch, size, device)
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        with ctx:
            losses = task.losses(model, data)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    median, times = timed(step, repeats, device)
    precision = "bf16" if cuda else "fp32"
    name = f"GLIP-T training step {precision}{' compiled' if compile_train else ''}, {device.type}, batch {batch}"
    if cuda:
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB peak"
    else:
        import resource

        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB peak RSS"
    return [(f"{name}, {size[0]}x{size[1]}, {data.input_ids.shape[1]} tokens", f"{batch / median:.2f} img/s",
             f"{median:.2f} s/step (first {first:.1f} s), {memory}", ", ".join(f"{t:.2f}" for t in times))]  # fmt: skip
