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
    s.set_defaults(func=cmd_data_shapes)

    lad = kinds.add_parser(
        "ladder",
        help="the shapes world as detection, grounding and image-caption corpora (GLIP's ablation ladder)",
        description="Write GLIP's pre-training corpora in the shapes world: detection.coco.json (Objects365: "
        "circles, squares, triangles, stars), grounding.odvg.jsonl (GoldG: captions with boxes, hexagons too), "
        "captions.jsonl (Cap4M: captions without boxes, crosses too) and ladder.json, the training recipe. The 8 "
        "novel combinations are in no corpus. See openglip.data.shapes_ladder.",
        epilog="example: openglip data ladder --out data/ladder && openglip train data/ladder/ladder.json --out runs/B",
    )
    lad.add_argument("--out", required=True)
    lad.add_argument("--detection-images", type=int, default=3000)
    lad.add_argument(
        "--grounding-images", type=int, default=1500, help="two records each (referring, listing)"
    )
    lad.add_argument("--caption-images", type=int, default=2000)
    lad.add_argument("--seed", type=int, default=0)
    lad.add_argument("--size", type=int, default=128, help="image side in pixels")
    lad.add_argument("--preset", default="glip_nano", help="model preset of the recipe ladder.json")
    lad.set_defaults(func=cmd_data_ladder)


def cmd_data_shapes(args) -> int:
    from ..data.shapes import write_dataset

    if args.images < 1:
        raise UsageError("--images must be at least 1")
    if args.size < 32:
        raise UsageError("--size must be at least 32")
    paths = write_dataset(
        args.out, num_images=args.images, split=args.split, image_size=args.size, seed=args.seed
    )
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


def cmd_data_ladder(args) -> int:
    from ..config import get_preset
    from ..data.shapes_ladder import write_ladder

    counts = (args.detection_images, args.grounding_images, args.caption_images)
    if min(counts) < 1:
        raise UsageError("--detection-images, --grounding-images and --caption-images must be at least 1")
    if args.size < 32:
        raise UsageError("--size must be at least 32")
    if args.seed < 0:
        raise UsageError("--seed must be 0 or more")
    get_preset(args.preset)  # an unknown preset fails here, before anything is written
    paths = write_ladder(
        args.out, detection_images=counts[0], grounding_images=counts[1], caption_images=counts[2],
        seed=args.seed, image_size=args.size, preset=args.preset,
    )  # fmt: skip
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


# --------------------------------------------------------------------------------------------------------------


def register(sub) -> None:
    _add_data(sub)
