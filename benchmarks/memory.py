"""Peak resident memory of training runs, one process at a time, so that a user can tell what a run needs before
the kernel kills it.

    python benchmarks/memory.py [--steps 3] [--cases nano_shapes_4,nano_photos_2,...]

Each case is the real ``openglip train`` command in a child process that reports its own peak resident set size
(``VmHWM``) when it exits: the model, the optimiser state, the EMA copy, the activations of the largest batch
(multi-scale training draws the shorter side from ``train_min_sizes``: the peak comes from the largest) and the
data pipeline. The server's memory over 1,000 requests is in ``benchmarks/serve.py`` (its "memory" table).
Run it on a quiet machine: two trainings at once share the cores and the memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, print_table

# the wrapper runs the CLI in-process and prints VmHWM (peak RSS) to stderr on exit, whatever the exit code
WRAPPER = """
import atexit, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("PEAK_KB", line.split()[1], file=sys.stderr)
atexit.register(_peak)
from openglip.cli import main
sys.exit(main(sys.argv[1:]))
"""


def photo_coco(folder: Path, side: int = 640) -> Path:
    """The real-photo check set, each photo resized so that its longer side is ``side``, as a COCO file."""
    from PIL import Image

    from openglip.shapes.photos import load_check_set, load_photo, to_coco

    entries = load_check_set()
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        photo = Image.fromarray(load_photo(entry))
        scale = side / max(photo.size)
        photo.resize((round(photo.width * scale), round(photo.height * scale))).save(
            images / f"{entry['id']}.png"
        )
        entry["file_hint"] = f"images/{entry['id']}.png"
        entry["objects"] = [{**o, "bbox": [v * scale for v in o["bbox"]]} for o in entry["objects"]]
        entry["height"], entry["width"] = round(entry["height"] * scale), round(entry["width"] * scale)
    path = folder / "photos.coco.json"
    path.write_text(json.dumps(to_coco(entries)))
    return path


def shapes_shards(folder: Path) -> Path:
    """64 shapes images as WebDataset shards of 16."""
    from openglip.cli import main

    assert main(["data", "shapes", "--out", str(folder / "shapes"), "--images", "64"]) == 0
    out = folder / "shards"
    coco = str(folder / "shapes" / "annotations.coco.json")
    assert main(["data", "shard", coco, "--out", str(out), "--shard-size", "16"]) == 0
    return out


def cases(tmp: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (what it is, ``openglip train`` arguments after the preset)."""
    photos = str(photo_coco(tmp / "photos"))
    shards = str(shapes_shards(tmp))
    return {
        "nano_shapes_4": (
            "glip_nano, shapes world, batch 4",
            ["glip_nano", "--data", "shapes", "batch_size=4"],
        ),
        "nano_shapes_8": (
            "glip_nano, shapes world, batch 8",
            ["glip_nano", "--data", "shapes", "batch_size=8"],
        ),
        "nano_photos_2": (
            "glip_nano, 640-px photos, batch 2",
            ["glip_nano", "--data", photos, "batch_size=2"],
        ),
        "nano_photos_4": (
            "glip_nano, 640-px photos, batch 4",
            ["glip_nano", "--data", photos, "batch_size=4"],
        ),
        "nano_vqa_4": ("glip_nano task=vqa, shapes, batch 4", ["glip_nano", "task=vqa", "--data", "shapes"]),
        "nano_caption_4": (
            "glip_nano task=caption, shapes, batch 4",
            ["glip_nano", "task=caption", "--data", "shapes"],
        ),
        "tiny_shards_4": ("tiny from shards, batch 4", ["tiny", "--data", shards, "batch_size=4"]),
        "nano_photos_4_small": (
            "glip_nano, 640-px photos, batch 4, train_min_sizes=(480,) train_max_size=640",
            ["glip_nano", "--data", photos, "batch_size=4", "train_min_sizes=(480,)", "train_max_size=640"],
        ),
    }


def peak_mb(args: list[str], steps: int, out: Path) -> tuple[float | None, float]:
    """(peak RSS in MiB, seconds) of ``openglip train ARGS`` for ``steps`` steps; None when the kernel killed it."""
    run = ["train", *args, "--out", str(out), f"max_steps={steps}", "log_every=1", "checkpoint_every=0"]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *run], capture_output=True, text=True, cwd=REPO, timeout=3600
    )
    seconds = time.perf_counter() - start
    peaks = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_KB")]
    if proc.returncode == -9:  # SIGKILL: the kernel's out-of-memory killer (nothing else sends it here)
        return None, seconds
    if proc.returncode != 0 or not peaks:
        raise SystemExit(f"openglip {' '.join(run)} failed:\n{proc.stderr[-3000:]}")
    return int(peaks[-1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="training steps a case (default 3)")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        table = cases(Path(tmp))
        chosen = args.cases.split(",") if args.cases else list(table)
        for name in chosen:
            what, run = table[name]
            print(f"{name}: {what} ...", file=sys.stderr)
            peak, seconds = peak_mb(run, args.steps, Path(tmp) / "runs" / name)
            shown = "killed: out of memory" if peak is None else f"{peak / 1024:.2f} GiB"
            rows.append((what, shown, f"{seconds:.0f} s"))
    print_table(("run (default training sizes unless said)", "peak RSS", "wall time"), rows,
                title=f"openglip train, {args.steps} steps, CPU, one process at a time")  # fmt: skip


if __name__ == "__main__":
    main()
