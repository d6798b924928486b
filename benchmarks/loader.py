"""The training data loader alone: decoding + GLIP's training augmentation + collation, in images/s.

    python benchmarks/loader.py [--workers 0 2 8] [--images 256] [--batches 40] [--train-step]

The data: ``--images`` shapes-world scenes rendered at 640x480 (COCO's typical size), saved as JPEG (quality
90), described by a COCO file and packed into shards of up to 64 samples (two shards per worker at least) (``openglip data shard``). Each row streams
the shards through :class:`~openglip.data.shards.ShardDataset` and its :class:`ShardSampler` in a
``DataLoader`` (batch 4) with GLIP-T's training transforms (flip, multi-scale resize 480-800 / 1333, colour
jitter, normalisation, BGR) and the trainer's collate (padding, tokenisation, token maps), as the trainer runs
them; the same images read from the COCO file (``GroundingDataset``) give the file row. ``--train-step``
adds the GLIP-T training step's throughput (benchmarks/speed.py) beside the loader's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from _common import print_table, train_step_rows

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from openglip.config import glip_t  # noqa: E402
from openglip.data.collate import Collate  # noqa: E402
from openglip.data.transforms import default_train_transforms, to_model_input  # noqa: E402


def make_data(root: Path, images: int, shard_size: int = 64) -> tuple[Path, Path]:
    """JPEG shapes scenes + a COCO file under ``root``, and their shards; returns (coco file, shard folder)."""
    from PIL import Image

    from openglip.data.shard_writing import write_shards
    from openglip.shapes import ShapesWorld, to_coco

    world = ShapesWorld(split="train", image_size=(480, 640), seed=0, max_objects=8)
    (root / "images").mkdir(parents=True, exist_ok=True)
    samples, names = [], []
    for i in range(images):
        sample = world.sample(i)
        name = f"images/{i:06d}.jpg"
        Image.fromarray(sample.image).save(root / name, quality=90)
        samples.append(sample)
        names.append(name)
    coco = root / "annotations.coco.json"
    coco.write_text(json.dumps(to_coco(samples, names)))
    shards = root / "shards"
    write_shards([coco], shards, shard_size=shard_size, progress=False)
    return coco, shards


def loader_throughput(source: Path, workers: int, batches: int, batch_size: int = 4) -> float:
    """Images/s of ``batches`` batches (after two warm-up batches) from a shard folder or a COCO file."""
    from torch.utils.data import DataLoader

    from openglip.data.datasets import GroundingDataset
    from openglip.data.shards import ShardDataset, is_shard_dir

    cfg = glip_t()
    kwargs = {
        "transform": default_train_transforms(),
        "to_tensor": partial(to_model_input, mean=cfg.pixel_mean, std=cfg.pixel_std, bgr=cfg.bgr),
        "num_negatives": 85,
    }
    if is_shard_dir(source):
        dataset = ShardDataset(source, **kwargs)
        sampler = dataset.sampler(batch_size=batch_size, num_workers=workers)
    else:
        from openglip.data.coco import read_coco
        from openglip.engine.sampler import ResumableSampler

        records, categories, _ = read_coco(source)
        dataset = GroundingDataset(records, categories, **kwargs)
        sampler = ResumableSampler(len(dataset))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=Collate(),
        prefetch_factor=4 if workers else None,
    )
    it = iter(loader)
    for _ in range(2):  # warm-up: worker start, tokenizer load, first shard index
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - t0
    del it
    return batches * batch_size / elapsed


def loader_rows(workers: list[int], images: int, batches: int) -> list[tuple]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # at least two shards per worker, at most 64 samples per shard
        coco, shards = make_data(
            Path(tmp), images, shard_size=max(1, min(64, images // (2 * max(*workers, 1))))
        )
        for n in workers:
            rate = loader_throughput(shards, n, batches)
            rows.append(
                (f"data loader, shards, {n} workers, GLIP-T training augmentation", f"{rate:.1f} img/s")
            )
        rate = loader_throughput(coco, workers[-1], batches)
        rows.append((f"data loader, COCO file + JPEG files, {workers[-1]} workers", f"{rate:.1f} img/s"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--train-step", action="store_true", help="also time the GLIP-T training step")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = loader_rows(args.workers, args.images, args.batches)
    if args.train_step:
        rows += [r[:2] for r in train_step_rows(repeats=2)]
    print_table(("case", "throughput"), rows, title=f"data loader, batch 4, {args.images} images of 640x480")


if __name__ == "__main__":
    main()
