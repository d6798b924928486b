"""``openglip data``: write built-in datasets to disk."""

from __future__ import annotations

from ..errors import UsageError


def _add_data(sub):
    p = sub.add_parser("data", help="built-in datasets", description="Write a built-in dataset to disk.")
    kinds = p.add_subparsers(dest="kind", metavar="DATASET")
    kinds.required = True
    s = kinds.add_parser(
        "shapes",
        help="the synthetic shapes grounding world",
        description="Render the shapes world: images/, annotations.coco.json, detection.odvg.jsonl, "
        "grounding.odvg.jsonl. The train split never contains the 8 novel colour-shape combinations.",
    )
    s.add_argument("--out", required=True)
    s.add_argument("--images", type=int, required=True)
    s.add_argument("--split", default="train", choices=["train", "val", "test", "all"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.add_argument(
        "--renderer",
        default="shapes",
        choices=["shapes", "alt"],
        help="shapes: the world's own renderer; alt: a second, independent one (other look, varied canvases)",
    )
    s.set_defaults(func=cmd_data_shapes)


def cmd_data_shapes(args) -> int:
    from ..data.shapes import write_dataset

    if args.images < 1:
        raise UsageError("--images must be at least 1")
    if args.size < 32:
        raise UsageError("--size must be at least 32")
    paths = write_dataset(
        args.out,
        num_images=args.images,
        split=args.split,
        image_size=args.size,
        seed=args.seed,
        renderer=args.renderer,
    )
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


# --------------------------------------------------------------------------------------------------------------


def register(sub) -> None:
    _add_data(sub)
