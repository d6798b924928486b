"""``openglip data``: write built-in datasets to disk, convert data into shards."""

from __future__ import annotations

from ..errors import UsageError
from ..shapes.renderers import RENDERERS


def _add_data(sub):
    p = sub.add_parser(
        "data",
        help="built-in datasets and shards",
        description="Write a built-in dataset to disk, or pack data into WebDataset shards.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="DATASET")
    kinds.required = True
    s = kinds.add_parser(
        "shapes",
        help="the synthetic shapes grounding world",
        description="Render the shapes world: images/, annotations.coco.json, detection.odvg.jsonl, "
        "grounding.odvg.jsonl. The train split never contains the 8 novel colour-shape combinations. "
        "--format writes it in a benchmark's layout instead (odinw: Roboflow datasets; lvis: federated LVIS "
        "JSON; flickr / refcoco: MDETR final_*.json; ovcoco: COCO + base/novel split file), for the "
        "openglip benchmark commands.",
        epilog="example: openglip data shapes --format odinw --out data/odinw_shapes",
    )
    s.add_argument("--out", required=True)
    s.add_argument(
        "--format",
        default="coco",
        choices=["coco", "odinw", "lvis", "flickr", "refcoco", "ovcoco"],
        help="layout (default coco: COCO + ODVG files)",
    )
    s.add_argument(
        "--images",
        type=int,
        default=None,
        help="images (coco: required; others: images per file, or per "
        "ODinW split scaled from train 40 / valid 8 / test 24)",
    )
    s.add_argument("--split", default="train", choices=["train", "val", "test", "all"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.add_argument(
        "--renderer",
        default="shapes",
        choices=list(RENDERERS),
        help="shapes: the world's own renderer; alt: a second, independent one (other look, varied canvases)",
    )
    s.set_defaults(func=cmd_data_shapes)
    w = kinds.add_parser(
        "shard",
        help="convert annotation files and their images into WebDataset shards",
        description="Pack COCO / ODVG / MDETR annotation files or caption JSONL files, with their images, into "
        "tar shards (image bytes + one JSON record per sample) and a manifest.json with the sample count of "
        "every shard. Train on the folder with --data DIR (ranks and data-loader workers read shards of their "
        "own); give caption shards to openglip label --captions DIR.",
        epilog="example: openglip data shard train.coco.json flickr.odvg.jsonl --out shards/ --shard-size 1000",
    )
    w.add_argument("inputs", nargs="+", metavar="INPUT", help="annotation or caption files")
    w.add_argument("--out", required=True, help="new folder for the shards")
    w.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    w.add_argument(
        "--image-root", default=None, help="folder image names are relative to (default: each file's)"
    )
    w.set_defaults(func=cmd_data_shard)

    lad = kinds.add_parser(
        "ladder",
        help="the shapes world as detection, grounding and image-caption corpora (GLIP's ablation ladder)",
        description="Write GLIP's pre-training corpora in the shapes world: detection.coco.json (Objects365: "
        "circles, squares, triangles, stars), grounding.odvg.jsonl (GoldG: captions with boxes, hexagons too), "
        "captions.jsonl (Cap4M: captions without boxes, crosses too) and ladder.json, the training recipe. The 8 "
        "novel combinations are in no corpus. See openglip.shapes.ladder.",
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
    from ..files import check_output_dir
    from ..shapes import write_dataset

    check_output_dir(args.out, "--out")
    if args.images is not None and args.images < 1:
        raise UsageError("--images must be at least 1")
    if args.size < 32:
        raise UsageError("--size must be at least 32")
    if args.format != "coco":
        return _write_format(args)
    if args.images is None:
        raise UsageError("--images is required for --format coco")
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


def _write_format(args) -> int:
    from ..shapes import formats as shapes_formats

    kwargs = {"image_size": args.size, "seed": args.seed}
    if args.format == "odinw":
        if args.images is not None:  # --images = test images; train and valid keep their proportions
            base = shapes_formats.ODINW_SPLIT_SIZES
            kwargs["sizes"] = {k: max(1, round(v * args.images / base["test"])) for k, v in base.items()}
        written = shapes_formats.write_odinw(args.out, **kwargs)
    else:
        if args.images is not None:
            kwargs["num_images"] = args.images
        written = shapes_formats.WRITERS[args.format](args.out, **kwargs)
    items = (
        written.items()
        if isinstance(written, dict)
        else enumerate(written if isinstance(written, list) else [written])
    )
    for key, path in items:
        print(f"{key}: {path}")
    return 0


def cmd_data_ladder(args) -> int:
    from ..config import get_preset
    from ..shapes.ladder import write_ladder

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


def cmd_data_shard(args) -> int:
    from ..data.shard_writing import write_shards

    manifest = write_shards(args.inputs, args.out, shard_size=args.shard_size, image_root=args.image_root)
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(manifest["kinds"].items()))
    print(f"{manifest['total']} samples ({kinds}) in {len(manifest['shards'])} shards -> {args.out}")
    return 0


# --------------------------------------------------------------------------------------------------------------


def register(sub) -> None:
    _add_data(sub)
