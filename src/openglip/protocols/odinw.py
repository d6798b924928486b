"""ODinW: zero-shot and few-shot AP on every dataset of an ODinW root, as GLIP reports it.

Per dataset: the prompt is the category names (GLIP-cleaned, Roboflow's background entry dropped) or a
per-dataset entry of a prompts JSON (names, or GLIP's ``{"prefix", "name", "suffix"}`` caption prompts);
zero-shot AP is measured on ``test`` (``valid`` when there is none, as GLIP does for PascalVOC); for every
adaptation mode x shots x seed, a k-shot training set is drawn from ``train`` as GLIP draws it
(:func:`~openglip.data.odinw.glip_few_shot`), the model is adapted (:data:`ADAPTERS`) and evaluated on the
same test split. The reported number is COCO AP@[.5:.95] (GLIP's ODinW metric); AP50 is kept too.

Every unit of work (dataset x mode x shots x seed) writes its result file as soon as it is done; a rerun with
the same ``out_dir`` skips finished units and continues a killed tuning run from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .. import load_model
from ..data.coco import read_coco
from ..data.odinw import (
    GLIP_SEEDS,
    OdinwDataset,
    find_odinw_datasets,
    glip_few_shot,
    read_odinw_split,
    subset_coco,
)
from ..errors import DataError, UsageError
from ..files import write_text_atomic
from ..metrics import coco_detection_metrics
from ..prompt_tuning import load_tuned_prompt
from ..prompts import Prompt
from ..tasks.tune import MODES as TUNE_MODES
from ..tasks.tune import tune, tune_config
from .common import category_prompt, detect_coco, fmt, markdown_table, mean_std, write_report

log = logging.getLogger("openglip.protocols.odinw")


@dataclass
class AdaptContext:
    """Everything an adaptation mode needs for one unit.

    Attributes:
        weights: the model being adapted (an OpenGLIP checkpoint).
        train_file: the k-shot training set as a COCO file (background dropped), images in ``image_root``.
        image_root: folder of the training images.
        prompt: the dataset's prompt (one phrase per category, in id order).
        run_dir: where the adaptation writes (checkpoints are resumed from here).
        overrides: ``key=value`` TrainConfig overrides of the tuning recipe.
        seed: the unit's seed (also the training seed).
        device: "cpu", "cuda" or None.
    """

    weights: str
    train_file: Path
    image_root: Path
    prompt: Prompt
    run_dir: Path
    overrides: Sequence[str] = ()
    seed: int = 0
    device: str | None = None


def mode_overrides(overrides: Sequence[str], mode: str) -> list[str]:
    """The overrides that apply to ``mode``: plain ``key=value`` ones and ``mode.key=value`` ones of this mode
    (``prompt.lr=0.01 full.lr=1e-4``), without the prefix."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if "." in key:
            prefix, rest = item.split(".", 1)
            if prefix == mode:
                out.append(rest)
        else:
            out.append(item)
    return out


def _tuned(mode: str) -> Callable[[AdaptContext], object]:
    """An adapter that runs :func:`openglip.tasks.tune.tune` in ``mode`` and loads the result."""

    def adapt(ctx: AdaptContext):
        records, categories, _ = read_coco(ctx.train_file, ctx.image_root)
        overrides = [f"seed={ctx.seed}", *mode_overrides(ctx.overrides, mode)]
        cfg, tune_cfg = tune_config(mode, overrides, out_dir=str(ctx.run_dir))
        out = tune(ctx.weights, records, categories, cfg=cfg, tune_cfg=tune_cfg, device=ctx.device, resume=True,
                   prompt=ctx.prompt)  # fmt: skip
        if mode == "prompt":
            det = load_model(ctx.weights, device=ctx.device)
            det.add_tuned_prompt(load_tuned_prompt(out))
            return det
        return load_model(out, device=ctx.device)

    adapt.__name__ = f"adapt_{mode}"
    return adapt


# Adaptation modes by name: a plain function ``(AdaptContext) -> Detector``. Forgetting-aware modes (e.g.
# "wise": weight-space interpolation with the zero-shot model, "replay": tuning mixed with pretraining data)
# are added here under their names.
ADAPTERS: dict[str, Callable[[AdaptContext], object]] = {m: _tuned(m) for m in TUNE_MODES}


@dataclass
class OdinwPlan:
    """What to run.

    Attributes:
        shots: k of the few-shot settings (empty: zero-shot only).
        seeds: GLIP's shuffle seeds of the k-shot draws (default its 3, 30, 300).
        modes: adaptation modes (keys of :data:`ADAPTERS`).
        prompts: per-dataset prompt entries (dataset name -> list), see :func:`prompt_from_entries`.
        overrides: ``key=value`` overrides of the tuning recipe (:func:`~openglip.tasks.tune.tune_config`).
        max_test_images: evaluate on the first N test images only (0: all).
        batch_size: images per forward pass in evaluation.
        device: "cpu", "cuda" or None.
        keep_runs: keep the tuning run folders (weights, checkpoints) after their result is written.
    """

    shots: tuple[int, ...] = ()
    seeds: tuple[int, ...] = GLIP_SEEDS
    modes: tuple[str, ...] = ("full",)
    prompts: dict[str, list] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    max_test_images: int = 0
    batch_size: int = 8
    device: str | None = None
    keep_runs: bool = False


def glip_seeds(n: int) -> tuple[int, ...]:
    """The first ``n`` of GLIP's few-shot seeds 3, 30, 300, 3000, ..."""
    if n < 1:
        raise UsageError("--seeds must be at least 1")
    return tuple(3 * 10**i for i in range(n))


def read_prompts(path: str | Path) -> dict[str, list]:
    """A prompts JSON: ``{dataset name: [entry per category]}``, an entry a name or ``{prefix, name, suffix}``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"prompts file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(f"{path}: expected {{dataset name: [prompt entry per category]}}")
    return data


def _unit_name(mode: str, shots: int, seed: int) -> str:
    return "zero_shot" if shots == 0 else f"{mode}_{shots}shot_seed{seed}"


def _safe(name: str) -> str:
    return name.replace("/", "__").replace(" ", "_")


class _TestSet:
    """A dataset's test split loaded once: gt, image paths, prompt."""

    def __init__(self, ds: OdinwDataset, plan: OdinwPlan):
        coco, folder = read_odinw_split(ds, "test")
        self.split = ds.split_used("test")  # "valid" where the dataset has no test split
        if self.split != "test":
            tqdm.write(
                f"odinw: {ds.name} has no test split; it is scored on its {self.split} split (as GLIP does)",
                file=sys.stderr,
            )
        if plan.max_test_images:
            coco = subset_coco(coco, [im["id"] for im in coco["images"][: plan.max_test_images]])
        self.gt = coco
        self.images = [str(folder / im["file_name"]) for im in coco["images"]]
        cats = sorted(coco["categories"], key=lambda c: c["id"])
        entries = plan.prompts.get(ds.name, plan.prompts.get(ds.name.rsplit("/", 1)[-1]))
        self.prompt = category_prompt(cats, entries, where=f"prompt of {ds.name}")

    def evaluate(self, detector, batch_size: int, desc: str) -> dict[str, float]:
        results = detect_coco(detector, self.gt, self.images, self.prompt, batch_size=batch_size, desc=desc)
        m = coco_detection_metrics(self.gt, results)
        return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"]}


def _few_shot_file(ds: OdinwDataset, shots: int, seed: int, run_dir: Path) -> tuple[Path, Path, int]:
    coco, folder = read_odinw_split(ds, "train")
    ids = glip_few_shot(coco, shots, seed)
    if not ids:
        raise DataError(f"ODinW dataset {ds.name!r}: its train split has no image with a valid box")
    path = run_dir / "train_fewshot.coco.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(subset_coco(coco, ids)))
    return path, folder, len(ids)


def _check_plan(plan: OdinwPlan) -> None:
    unknown = [m for m in plan.modes if m not in ADAPTERS]
    if unknown:
        raise UsageError(f"unknown adaptation mode(s) {unknown}; choose from {', '.join(ADAPTERS)}")
    if any(k < 1 for k in plan.shots):
        raise UsageError("--shots must be positive numbers (zero-shot is always run)")


def _adapt_and_evaluate(
    weights, ds, test: _TestSet, setting: tuple[str, int, int], run_dir: Path, plan
) -> dict:
    """One few-shot unit: sample the shots, adapt the model with ``mode``, evaluate it on the test split."""
    mode, shots, seed = setting
    train_file, image_root, n_images = _few_shot_file(ds, shots, seed, run_dir)
    ctx = AdaptContext(
        str(weights), train_file, image_root, test.prompt, run_dir, plan.overrides, seed, plan.device
    )
    detector = ADAPTERS[mode](ctx)
    metrics = test.evaluate(detector, plan.batch_size, desc=f"{ds.name} {_unit_name(mode, shots, seed)}")
    if not plan.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"mode": mode, "shots": shots, "seed": seed, "train_images": n_images, **metrics}


def run_odinw(
    weights: str | Path,
    root: str | Path,
    out_dir: str | Path,
    *,
    datasets: Sequence[str] | None = None,
    plan: OdinwPlan | None = None,
    on_unit: Callable[[str, str, dict], None] | None = None,
) -> dict:
    """Run the ODinW protocol and write ``odinw.json`` and ``odinw.md`` into ``out_dir``.

    Args:
        weights: the model (an OpenGLIP ``.safetensors``; zero-shot also takes an official GLIP ``.pth``).
        root: the ODinW root (see :mod:`openglip.data.odinw`).
        out_dir: results folder; ``units/<dataset>/<unit>.json`` per finished unit, ``runs/`` for tuning.
        datasets: only these datasets (default: all under ``root``).
        plan: what to run (default: zero-shot only).
        on_unit: called as ``on_unit(dataset, unit, result)`` after each newly computed unit.

    Returns:
        ``{"datasets": {name: {unit: result}}, "summary": ..., "table": markdown}``.
    """

    plan = plan or OdinwPlan()
    _check_plan(plan)
    found = find_odinw_datasets(root, datasets)
    out = Path(out_dir)
    # zero-shot everywhere first, then one seed at a time over every setting: a run stopped early still gives
    # a full table, with fewer seeds
    units = [(ds, "", 0, 0) for ds in found]
    units += [(ds, m, k, s) for s in plan.seeds for m in plan.modes for k in plan.shots for ds in found]
    results: dict[str, dict[str, dict]] = {ds.name: {} for ds in found}
    zero_shot_model = None
    tests: dict[str, _TestSet] = {}
    bar = tqdm(units, desc="odinw", unit="run", dynamic_ncols=True)
    for ds, mode, shots, seed in bar:
        unit = _unit_name(mode, shots, seed)
        path = out / "units" / _safe(ds.name) / f"{unit}.json"
        bar.set_postfix_str(f"{ds.name} {unit}")
        if path.exists():
            results[ds.name][unit] = json.loads(path.read_text())
            continue
        if ds.name not in tests:
            tests[ds.name] = _TestSet(ds, plan)
        test = tests[ds.name]
        if shots == 0:
            if zero_shot_model is None:
                zero_shot_model = load_model(str(weights), device=plan.device)
            metrics = test.evaluate(zero_shot_model, plan.batch_size, desc=f"{ds.name} zero-shot")
            result = {"mode": "zero-shot", "shots": 0, "seed": 0, **metrics}
        else:
            result = _adapt_and_evaluate(
                weights, ds, test, (mode, shots, seed), out / "runs" / _safe(ds.name) / unit, plan
            )
        result["test_images"] = len(test.images)
        result["split"] = test.split
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(result))
        results[ds.name][unit] = result
        if on_unit is not None:
            on_unit(ds.name, unit, result)
    bar.close()
    summary, table = summarize(results, plan)
    payload = {
        "weights": str(weights),
        "root": str(root),
        "plan": plan.__dict__,
        "datasets": results,
        "summary": summary,
    }
    write_report(out, "odinw", payload, table)
    return {**payload, "table": table}


def summarize(results: dict[str, dict[str, dict]], plan: OdinwPlan, metric: str = "AP") -> tuple[dict, str]:
    """Per dataset and setting the mean ± std over seeds, and the mean over datasets (its std: over seeds of
    the dataset-averaged value, as ODinW papers report it). Returns (summary dict, Markdown table)."""
    settings = [("zero-shot", 0)] + [(m, k) for m in plan.modes for k in plan.shots]
    names = list(results)
    summary: dict = {"metric": metric, "datasets": {}, "mean": {}}
    rows = []
    splits = {name: _scored_split(units) for name, units in results.items()}
    for name in names:
        row, entry = [name if splits[name] == "test" else f"{name} ({splits[name]} split)"], {}
        for mode, k in settings:
            seeds = [0] if k == 0 else list(plan.seeds)
            vals = [results[name].get(_unit_name(mode, k, s), {}).get(metric) for s in seeds]
            m, s = mean_std([v for v in vals if v is not None])
            entry[f"{mode} {k}-shot" if k else "zero-shot"] = {
                "mean": m,
                "std": s,
                "n": sum(v is not None for v in vals),
            }
            done = sum(v is not None for v in vals)
            row.append(fmt(m, s if k else None) + (f" (n={done})" if k and 0 < done < len(seeds) else ""))
        summary["datasets"][name] = entry
        rows.append(row)
    mean_row = [f"mean ({len(names)} datasets)"]
    for mode, k in settings:
        seeds = [0] if k == 0 else list(plan.seeds)
        per_seed = []
        for s in seeds:
            vals = [results[n].get(_unit_name(mode, k, s), {}).get(metric) for n in names]
            if all(v is not None for v in vals) and vals:
                per_seed.append(sum(vals) / len(vals))
        m, sd = mean_std(per_seed)
        summary["mean"][f"{mode} {k}-shot" if k else "zero-shot"] = {"mean": m, "std": sd, "n": len(per_seed)}
        partial = f" (n={len(per_seed)})" if k and 0 < len(per_seed) < len(seeds) else ""
        mean_row.append(fmt(m, sd if k else None) + partial)
    rows.append(mean_row)
    headers = ["dataset"] + ["zero-shot" if k == 0 else f"{mode} {k}-shot" for mode, k in settings]
    seeds_note = f", mean ± std over seeds {', '.join(map(str, plan.seeds))}" if plan.shots else ""
    split_note = "" if set(splits.values()) <= {"test"} else ", test split unless marked"
    table = markdown_table(headers, rows, title=f"ODinW {metric} (%){seeds_note}{split_note}")
    summary["splits"] = splits
    return summary, table


def _scored_split(units: dict[str, dict]) -> str:
    """The split a dataset's units were scored on (units written before the split was recorded: ``test``)."""
    return next((u["split"] for u in units.values() if "split" in u), "test")
