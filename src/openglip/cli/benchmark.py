"""``openglip benchmark odinw|lvis|flickr|refcoco|ovcoco``: the papers' evaluation protocols, one command each.

Every command prints its table (Markdown) and writes ``<name>.json`` and ``<name>.md`` into ``--out``.
"""

from __future__ import annotations

import sys

from ..errors import UsageError


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, not {text!r}") from None


def _common(p, name: str) -> None:
    p.add_argument("--weights", required=True, help="model: OpenGLIP .safetensors or an official GLIP .pth")
    p.add_argument(
        "--out", default=f"outputs/benchmark/{name}", help="folder for the JSON and Markdown results"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")


def _detector(args):
    from .. import load_model

    return load_model(args.weights, device=args.device)


def _no_overrides(args) -> None:
    if getattr(args, "overrides", None):
        raise UsageError(
            f"unexpected arguments {' '.join(args.overrides)} (only benchmark odinw takes key=value)"
        )


def _finish(args, name: str, payload: dict, table: str) -> int:
    from ..protocols.common import write_report

    paths = write_report(args.out, name, {"weights": args.weights, **payload}, table)
    print(table)
    print(f"\nresults: {paths['json']}  {paths['markdown']}", file=sys.stderr)
    return 0


# -- odinw ----------------------------------------------------------------------------------------------------
def cmd_odinw(args) -> int:
    import logging

    from ..protocols.odinw import ADAPTERS, OdinwPlan, glip_seeds, read_prompts, run_odinw

    modes = tuple(m.strip() for m in args.mode.split(",") if m.strip())
    unknown = [m for m in modes if m not in ADAPTERS]
    if unknown:
        raise UsageError(f"--mode {','.join(unknown)}: unknown; choose from {', '.join(ADAPTERS)}")
    plan = OdinwPlan(
        shots=_ints(args.shots, "--shots") if args.shots else (),
        seeds=glip_seeds(args.seeds),
        modes=modes,
        prompts=read_prompts(args.prompts) if args.prompts else {},
        overrides=tuple(args.overrides),
        max_test_images=args.max_test_images,
        batch_size=args.batch_size,
        device=args.device,
        keep_runs=args.keep_runs,
    )
    logging.basicConfig(level=logging.WARNING)
    datasets = [d for d in args.datasets.split(",") if d] if args.datasets else None
    result = run_odinw(args.weights, args.root, args.out, datasets=datasets, plan=plan)
    print(result["table"])
    print(f"\nresults: {args.out}/odinw.json  {args.out}/odinw.md", file=sys.stderr)
    return 0


def _add_odinw(sub) -> None:
    p = sub.add_parser(
        "odinw",
        help="ODinW zero-shot and few-shot AP",
        description="Zero-shot AP on the test split of every dataset under ROOT (Roboflow COCO layout), and with "
        "--shots k-shot adaptation (GLIP's sampling, seeds 3/30/300) in each --mode. Finished units are kept in "
        "--out; rerunning the same command continues a killed run. key=value arguments override the tuning recipe "
        "(max_steps=..., lr=..., batch_size=...); mode.key=value applies to one mode only (prompt.lr=0.01).",
        epilog="example: openglip benchmark odinw data/odinw --weights model.safetensors --shots 1,3,5,10 --seeds 3 "
        "--mode prompt,linear,full --out outputs/odinw max_steps=200",
    )
    p.add_argument("root", help="ODinW root: <name>/{train,valid,test}/_annotations.coco.json")
    _common(p, "odinw")
    p.add_argument("--datasets", default=None, help="comma-separated dataset names (default: all under ROOT)")
    p.add_argument("--shots", default="", help="few-shot settings, e.g. 1,3,5,10 (default: zero-shot only)")
    p.add_argument(
        "--seeds", type=int, default=3, help="seeds per few-shot setting: GLIP's 3, 30, 300, ... (default 3)"
    )
    p.add_argument("--mode", default="full", help="adaptation modes, comma-separated: prompt, linear, full")
    p.add_argument(
        "--prompts", default=None, help="JSON {dataset: [name or {prefix, name, suffix} per category]}"
    )
    p.add_argument(
        "--max-test-images", type=int, default=0, help="evaluate on the first N test images (0: all)"
    )
    p.add_argument("--keep-runs", action="store_true", help="keep the tuned weights of every run")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the tuning recipe")
    p.set_defaults(func=cmd_odinw)


# -- lvis -----------------------------------------------------------------------------------------------------
def cmd_lvis(args) -> int:
    from ..data.lvis import read_lvis
    from ..protocols.lvis import run_lvis

    _no_overrides(args)
    data = read_lvis(args.annotations, args.image_root)
    if args.max_images:
        data.gt["images"] = data.gt["images"][: args.max_images]
        keep = {im["id"] for im in data.gt["images"]}
        data.gt["annotations"] = [a for a in data.gt["annotations"] if a["image_id"] in keep]
        data.image_paths = data.image_paths[: args.max_images]
    metrics, table = run_lvis(_detector(args), data, chunk_size=args.chunk_size, per_chunk=args.per_chunk,
                              topk=args.topk, batch_size=args.batch_size, backend=args.evaluator)  # fmt: skip
    return _finish(args, "lvis", {"annotations": args.annotations, "metrics": metrics}, table)


def _add_lvis(sub) -> None:
    p = sub.add_parser(
        "lvis",
        help="LVIS fixed AP with AP_r / AP_c / AP_f",
        description="Fixed AP (Dave et al.: the best 10,000 detections per category over the split, no per-image "
        "cap) on an LVIS-format file, the vocabulary prompted 40 names at a time as GLIP does.",
        epilog="example: openglip benchmark lvis lvis_v1_minival.json --image-root coco/ --weights glip_t.pth",
    )
    p.add_argument("annotations", help="LVIS JSON (e.g. lvis_v1_minival_inserted_image_name.json)")
    _common(p, "lvis")
    p.add_argument("--image-root", default=None, help="folder the image names are relative to")
    p.add_argument("--chunk-size", type=int, default=40, help="category names per prompt (GLIP: 40)")
    p.add_argument(
        "--per-chunk", type=int, default=300, help="detections kept per image and chunk (GLIP: 300)"
    )
    p.add_argument("--topk", type=int, default=10000, help="detections kept per category over the split")
    p.add_argument(
        "--evaluator", default="faster", choices=["faster", "lvis"], help="faster-coco-eval or the lvis API"
    )
    p.add_argument("--max-images", type=int, default=0, help="evaluate on the first N images (0: all)")
    p.set_defaults(func=cmd_lvis)


# -- flickr / refcoco -----------------------------------------------------------------------------------------
def cmd_flickr(args) -> int:
    from ..data.mdetr_final import read_mdetr_final
    from ..protocols.flickr import run_flickr

    _no_overrides(args)
    records = read_mdetr_final(args.annotations, args.image_root)
    metrics, table = run_flickr(_detector(args), records, protocol=args.protocol, batch_size=args.batch_size)
    return _finish(
        args,
        "flickr",
        {"annotations": args.annotations, "protocol": args.protocol, "metrics": metrics},
        table,
    )


def cmd_refcoco(args) -> int:
    from pathlib import Path

    from ..data.mdetr_final import read_mdetr_final
    from ..protocols.refcoco import run_refcoco

    _no_overrides(args)
    detector = _detector(args)
    metrics, tables = {}, []
    for path in args.annotations:
        split = Path(path).stem.rsplit("_", 1)[-1]
        m, table = run_refcoco(
            detector, read_mdetr_final(path, args.image_root), batch_size=args.batch_size, split=split
        )
        metrics.update({f"{k.split('/')[0]}_{split}/{k.split('/')[1]}": v for k, v in m.items()})
        tables.append(table)
    return _finish(
        args, "refcoco", {"annotations": args.annotations, "metrics": metrics}, "\n\n".join(tables)
    )


def _add_grounding(sub) -> None:
    p = sub.add_parser(
        "flickr",
        help="Flickr30k Entities Recall@1/5/10",
        description="Phrase-grounding recall on MDETR's final_flickr_separateGT_{val,test}.json: each caption is the "
        "prompt; a phrase is found at k when one of its k best boxes has IoU >= 0.5 with any of its boxes (--protocol "
        "any) or with their union (merged).",
        epilog="example: openglip benchmark flickr final_flickr_separateGT_test.json --image-root flickr30k/images "
        "--weights glip_t.pth",
    )
    p.add_argument("annotations", help="MDETR final_flickr_*GT_{split}.json")
    _common(p, "flickr")
    p.add_argument("--image-root", default=None, help="Flickr30k image folder")
    p.add_argument(
        "--protocol", default="any", choices=["any", "merged"], help="ANY-box (default) or MERGED-box"
    )
    p.set_defaults(func=cmd_flickr)

    p = sub.add_parser(
        "refcoco",
        help="RefCOCO/+/g accuracy (top-1 box IoU >= 0.5)",
        description="Referring expression comprehension on MDETR's final_refcoco*_{split}.json files: accuracy is "
        "the share of expressions whose best box for the referent has IoU >= 0.5 with it.",
        epilog="example: openglip benchmark refcoco final_refcoco_val.json final_refcoco_testA.json "
        "--image-root coco/train2014 --weights glip_t.pth",
    )
    p.add_argument("annotations", nargs="+", help="one or more MDETR final_refcoco*_{split}.json files")
    _common(p, "refcoco")
    p.add_argument("--image-root", default=None, help="COCO train2014 image folder")
    p.set_defaults(func=cmd_refcoco)


# -- ovcoco ---------------------------------------------------------------------------------------------------
def cmd_ovcoco(args) -> int:
    from pathlib import Path

    from ..data.coco import load_json
    from ..data.splits import parse_category_split, read_category_split
    from ..errors import DataError
    from ..protocols.common import ovcoco_split
    from ..protocols.ovcoco import load_ov_detector, run_ovcoco

    _no_overrides(args)
    try:
        gt = load_json(args.annotations)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(str(err)) from None
    if not isinstance(gt, dict) or not isinstance(gt.get("categories"), list):
        raise DataError(f"{args.annotations}: not a COCO detection file (no 'categories' list)")
    if args.split:
        split, source = read_category_split(args.split), f"--split {args.split} (wrong split file?)"
    elif any("split" in c for c in gt.get("categories", [])):
        split, source = parse_category_split(gt, args.annotations), "the file's own 'split' fields"
    else:
        split = ovcoco_split()
        source = (
            "OVR-CNN's 48 base / 17 novel COCO split (the default: no --split was given and the file's categories "
            "have no 'split' fields); give --split FILE for another vocabulary"
        )
    root = args.image_root or str(Path(args.annotations).parent)
    detector = load_ov_detector(args.weights, args.model, device=args.device, batch_size=args.batch_size)
    metrics, table = run_ovcoco(detector, gt, root, split, batch_size=args.batch_size, split_source=source)
    return _finish(
        args, "ovcoco", {"annotations": args.annotations, "split": args.split, "metrics": metrics}, table
    )


def _add_ovcoco(sub) -> None:
    p = sub.add_parser(
        "ovcoco",
        help="open-vocabulary COCO: novel / base / all AP50",
        description="AP50 on the novel and base categories of a split (default: the categories' own 'split' "
        "fields, else OVR-CNN's 48 base / 17 novel COCO split that ships with OpenGLIP), the detector prompted "
        "with all of them.",
        epilog="example: openglip benchmark ovcoco instances_val2017.json --image-root coco/val2017 --weights m.safetensors",
    )
    p.add_argument("annotations", help="COCO detection JSON")
    _common(p, "ovcoco")
    p.add_argument("--image-root", default=None, help="image folder (default: the JSON's folder)")
    p.add_argument(
        "--split", default=None, help="split file: {'base': [...], 'novel': [...]}, {name: split}, ..."
    )
    p.add_argument("--model", default="glip", choices=["glip", "regionclip"], help="what --weights holds")
    p.set_defaults(func=cmd_ovcoco)


def register(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="the papers' benchmarks: odinw, lvis, flickr, refcoco, ovcoco",
        description="Run an evaluation protocol of the GLIP / GLIPv2 / RegionCLIP papers and print its table.",
    )
    kinds = p.add_subparsers(dest="protocol_name", metavar="PROTOCOL")
    kinds.required = True
    _add_odinw(kinds)
    _add_lvis(kinds)
    _add_grounding(kinds)
    _add_ovcoco(kinds)
