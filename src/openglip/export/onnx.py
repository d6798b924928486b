"""``export_onnx``: a loaded OpenGLIP detector -> an ONNX model that ONNX Runtime runs with numpy alone.

What gets written (``OUT`` is e.g. ``deploy/model.onnx``):

* ``OUT``: the graph, opset >= 17, dynamic batch, height and width (multiples of the model's size divisibility),
  with openglip's metadata (preset, phrases, pixel statistics, strides, post-processing thresholds).
* ``openglip_onnx.py`` beside it: the numpy runner (pre-processing, prompt encoding, post-processing, and a
  ``OnnxDetector`` on top of ``onnxruntime``); it imports neither torch nor openglip.
* open vocabulary only: ``OUT`` with ``.tokenizer.json`` in place of ``.onnx``, the tokenizer that the runner
  loads with the ``tokenizers`` package.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is tried first; where it fails the TorchScript
exporter is used, and :class:`ExportResult` says which one wrote the file and why the other did not.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.export import Dim

from ..api import Detector
from ..errors import UsageError
from ..files import atomic_write
from ..models.glip import TextFeatures
from ..prompts import parse_prompt
from .graphs import FixedVocabGraph, OpenVocabGraph, nms_onnx_translation, onnx_nms
from .patches import export_friendly

RUNNER = Path(__file__).with_name("openglip_onnx.py")
MIN_OPSET = 17  # LayerNormalization (17) and GridSample (16) are plain ONNX ops from here on
DEFAULT_OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        mode: "fixed" (prompt baked in) or "open" (prompt is an input).
        exporter: "dynamo" or "torchscript", the exporter that wrote the file.
        inputs, outputs: the graph's input and output names.
        files: every file written (model, runner, tokenizer).
        fallback_reason: why the dynamo exporter was not used, when it was tried and failed.
    """

    path: Path
    mode: str
    exporter: str
    inputs: list[str]
    outputs: list[str]
    files: list[Path] = field(default_factory=list)
    fallback_reason: str | None = None


def tokenizer_path(model_path: str | os.PathLike) -> Path:
    """Where the tokenizer of an open-vocabulary export lives: ``model.onnx`` -> ``model.tokenizer.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + ".tokenizer.json")


def _metadata(detector, *, mode: str, nms: bool, exporter: str, prompt, tokenizer_file: str | None) -> dict:
    cfg = detector.config
    post = detector.postprocessor
    meta = {
        "openglip.format": 1,
        "openglip.mode": mode,
        "openglip.nms": nms,
        "openglip.exporter": exporter,
        "openglip.preset": cfg.name,
        "openglip.pixel_mean": list(cfg.pixel_mean),
        "openglip.pixel_std": list(cfg.pixel_std),
        "openglip.bgr": cfg.bgr,
        "openglip.min_size": cfg.min_size,
        "openglip.max_size": cfg.max_size,
        "openglip.size_divisibility": cfg.size_divisibility,
        "openglip.strides": list(detector.model.anchor_generator.strides),
        "openglip.pre_nms_thresh": post.pre_nms_thresh,
        "openglip.pre_nms_top_n": post.pre_nms_top_n,
        "openglip.nms_thresh": post.nms_thresh,
        "openglip.detections_per_image": post.detections_per_image,
        "openglip.max_text_len": detector.model.max_text_len,
    }
    if prompt is not None:
        meta["openglip.caption"] = prompt.caption
        meta["openglip.phrases"] = list(prompt.phrases)
    if tokenizer_file is not None:
        meta["openglip.tokenizer"] = tokenizer_file
    return {k: json.dumps(v) for k, v in meta.items()}  # every value is JSON text


def _build_graph(detector, prompt, nms: bool):
    """The module to trace, its example inputs, input/output names and dynamic dimensions."""

    model = detector.model
    post = detector.postprocessor
    common = dict(
        box_coder=post.box_coder,
        nms=nms,
        pre_nms_thresh=post.pre_nms_thresh,
        pre_nms_top_n=post.pre_nms_top_n,
        nms_thresh=post.nms_thresh,
        detections_per_image=post.detections_per_image,
    )
    d = detector.config.size_divisibility
    # distinct example sizes (2 images, H != W) so that no dimension is taken for another or for a constant
    images = torch.randn(2, 3, 5 * d, 7 * d)
    image_sizes = torch.tensor([[5 * d, 7 * d], [4 * d - 3, 6 * d + 1]], dtype=torch.long)
    # a second input of other sizes, to check that the exported graph did not freeze any of them
    check_images = torch.randn(1, 3, 3 * d, 4 * d)
    check_sizes = torch.tensor([[3 * d - 5, 4 * d]], dtype=torch.long)
    batch, h, w = "batch", "height", "width"
    if prompt is not None:
        chunks = detector.encode_prompt(prompt)
        if len(chunks) > 1:
            raise UsageError(
                f"the prompt is {len(chunks)} chunks of {model.max_text_len} tokens; a fixed-vocabulary export "
                "holds one: give fewer phrases, or export without --prompt (open vocabulary)"
            )
        text: TextFeatures = chunks[0].text.to("cpu")
        graph = FixedVocabGraph(
            model,
            hidden=text.hidden,
            text_mask=text.attention_mask,
            positive_map=chunks[0].pmap.cpu(),
            **common,
        )
        args = (images, image_sizes) if nms else (images,)
        check = (check_images, check_sizes) if nms else (check_images,)
        inputs = ["images", "image_sizes"] if nms else ["images"]
        outputs = ["scores", "boxes", "centerness", "logits", "box_regression"]
        axes = {"images": {0: batch, 2: h, 3: w}, "image_sizes": {0: batch}}
    else:
        enc = model.tokenizer(["a photo. a thing in it.", "a cat"], padding="longest", return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        pmap = torch.zeros(2, 3, ids.shape[1])
        pmap[0, 0, 1:3] = 1
        pmap[0, 1, 4:7] = 1
        pmap[1, 0, 1:3] = 1
        graph = OpenVocabGraph(model, **common)
        args = (images, ids, mask, pmap, image_sizes) if nms else (images, ids, mask)
        enc = model.tokenizer(["a cat"], return_tensors="pt")
        check_pmap = torch.zeros(1, 1, enc["input_ids"].shape[1])
        check_pmap[0, 0, 2] = 1
        check = (check_images, enc["input_ids"], enc["attention_mask"])
        check += (check_pmap, check_sizes) if nms else ()
        inputs = ["images", "input_ids", "attention_mask"]
        inputs += ["positive_map", "image_sizes"] if nms else []
        outputs = ["logits", "boxes", "centerness", "box_regression"]
        axes = {
            "images": {0: batch, 2: h, 3: w},
            "input_ids": {0: batch, 1: "tokens"},
            "attention_mask": {0: batch, 1: "tokens"},
            "positive_map": {0: batch, 1: "phrases", 2: "tokens"},
            "image_sizes": {0: batch},
        }
    if nms:
        outputs += ["det_boxes", "det_scores", "det_labels"]
    axes = {k: v for k, v in axes.items() if k in inputs}
    return graph.eval(), args, check, inputs, outputs, axes


def _verify(graph, path: Path, check: tuple, inputs: list[str], outputs: list[str]) -> str | None:
    """Run the exported file in ONNX Runtime on inputs of other sizes than the example's and compare it with the
    module; returns what differs, or None. Skipped (None) when onnxruntime is not installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: t.numpy() for name, t in zip(inputs, check)})
    want = graph(*check)
    for name, g, w in zip(outputs, got, want):
        if name.startswith("det_"):  # ties may order detections differently; the raw outputs decide them
            continue
        w = w.numpy()
        if g.shape != w.shape:
            return f"output {name} is {g.shape} in ONNX Runtime, {w.shape} in PyTorch"
        error = float(abs(g - w).max() / max(abs(w).max(), 1e-6))
        if not error <= 1e-3:
            return f"output {name} differs from PyTorch by {error:.2g} (relative)"
    return None


def _dynamo_shapes(inputs: list[str], axes: dict, divisibility: int) -> dict:
    dims: dict[str, object] = {}
    for name in ("batch", "tokens", "phrases"):
        dims[name] = Dim(name, min=1)
    # H and W are multiples of the size divisibility; saying so keeps the exporter's shape reasoning exact
    dims["height"] = divisibility * Dim("height_blocks", min=1)
    dims["width"] = divisibility * Dim("width_blocks", min=1)
    return {name: {axis: dims[label] for axis, label in axes[name].items()} for name in inputs}


def _export_dynamo(graph, args, inputs, outputs, axes, opset, divisibility, metadata, path) -> None:
    program = torch.onnx.export(
        graph,
        args,
        dynamo=True,
        opset_version=opset,
        input_names=inputs,
        output_names=outputs,
        dynamic_shapes=_dynamo_shapes(inputs, axes, divisibility),
        custom_translation_table={torch.ops.openglip_export.nms.default: nms_onnx_translation},
        optimize=True,
        verbose=False,
    )
    program.model.metadata_props.update(metadata)
    atomic_write(path, lambda tmp: program.save(tmp, external_data=False))


def _export_torchscript(graph, args, inputs, outputs, axes, opset, metadata, path) -> None:
    import onnx

    buffer = io.BytesIO()
    torch.onnx.export(
        graph,
        args,
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=axes,
        do_constant_folding=True,
    )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))


def export_onnx(
    detector,
    out: str | os.PathLike,
    *,
    prompt=None,
    nms: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    verify: bool = True,
    progress=None,
) -> ExportResult:
    """Export a detector to ONNX.

    Args:
        detector: an :class:`openglip.Detector` (its model, post-processing settings and transform are used;
            a model on the GPU is moved to the CPU, where the graph is traced).
        out: the ``.onnx`` file to write.
        prompt: a prompt (``"person. car."``, a list of names or a :class:`~openglip.prompts.Prompt`) to bake in
            (fixed vocabulary); None exports the open-vocabulary graph that takes ``input_ids`` and
            ``attention_mask``.
        nms: also run the candidate selection and per-phrase ``NonMaxSuppression`` in the graph.
        opset: ONNX opset, 17 or higher.
        exporter: "auto" (dynamo, falling back to TorchScript), "dynamo" or "torchscript".
        verify: run the written graph in ONNX Runtime (when installed) at an input size other than the traced
            one and compare it with PyTorch; a dynamo graph that fails falls back to TorchScript.
        progress: optional callable taking a one-line status message.

    Returns:
        An :class:`ExportResult`.

    Raises:
        UsageError: a bad opset or exporter name, a prompt longer than one text chunk, or (with ``exporter``
            "dynamo") a model the dynamo exporter cannot export.
    """

    _check_export_options(opset, exporter)
    say = progress or (lambda message: None)
    if getattr(detector.model, "mask_head", None) is not None:
        say("note: the mask head is not exported (boxes only)")
    out = Path(out)
    parsed = parse_prompt(prompt) if prompt is not None else None
    mode = "fixed" if parsed is not None else "open"
    detector = _on_cpu_in_fp32(detector)

    files = [out]
    tokenizer_file = None
    if mode == "open":
        tokenizer_file = tokenizer_path(out).name
    divisibility = detector.config.size_divisibility
    fallback_reason = None
    used = None
    metadata = partial(_metadata, detector, mode=mode, nms=nms, prompt=parsed, tokenizer_file=tokenizer_file)
    with export_friendly(), torch.no_grad():
        graph, args, check, inputs, outputs, axes = _build_graph(detector, parsed, nms)
        if exporter in ("auto", "dynamo"):
            say("exporting with the dynamo exporter (torch.onnx.export(dynamo=True))")
            meta = metadata(exporter="dynamo")
            fallback_reason = _try_dynamo(
                (graph, args, inputs, outputs, axes, opset, divisibility, meta, out), check, verify, exporter
            )
            if fallback_reason is None:
                used = "dynamo"
            else:
                say(f"the dynamo exporter failed ({fallback_reason}); using the TorchScript exporter")
        if used is None:
            say("exporting with the TorchScript exporter (torch.onnx.export(dynamo=False))")
            meta = metadata(exporter="torchscript")
            _export_torchscript(graph, args, inputs, outputs, axes, opset, meta, out)
            problem = _verify(graph, out, check, inputs, outputs) if verify else None
            if problem is not None:
                out.unlink()
                raise RuntimeError(f"the TorchScript exporter wrote a wrong graph: {problem}")
            used = "torchscript"
    files += _write_companions(detector, out, tokenizer_file)
    return ExportResult(out, mode, used, inputs, outputs, files, fallback_reason)


def _check_export_options(opset: int, exporter: str) -> None:
    """Bad options and missing packages, before any work."""
    if opset < MIN_OPSET:
        raise UsageError(f"--opset {opset} is too old: the export needs opset {MIN_OPSET} or newer")
    if exporter not in EXPORTERS:
        raise UsageError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    needed = ["onnx"] + (["onnxscript"] if exporter != "torchscript" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"ONNX export needs the package(s) {', '.join(missing)}: pip install 'openglip[export]'"
        )


def _on_cpu_in_fp32(detector):
    """The detector to trace: the graph is traced on the CPU in fp32 (the text features baked in are computed
    the same way), with the same tuned prompts."""
    if detector.device.type != "cpu" or detector.precision != "fp32":
        tuned = {caption: delta.cpu() for caption, delta in detector._tuned.items()}
        detector = Detector(detector.model, device="cpu", precision="fp32")
        detector._tuned = tuned
    detector.model.eval()
    return detector


def _try_dynamo(export_args: tuple, check, verify: bool, exporter: str) -> str | None:
    """Export with the dynamo exporter (and verify the graph); None when it worked, else why it failed (raised as
    a UsageError when ``exporter`` is "dynamo" alone)."""
    graph, _, inputs, outputs, _, _, _, _, out = export_args
    try:
        _export_dynamo(*export_args)
        problem = _verify(graph, out, check, inputs, outputs) if verify else None
        if problem is not None:
            raise RuntimeError(f"the exported graph is wrong at another input size: {problem}")
        return None
    except Exception as err:  # the exporter's failures have no common type
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        if exporter == "dynamo":
            raise UsageError(f"the dynamo exporter failed ({reason}); try --exporter torchscript") from err
        return reason


def _write_companions(detector, out: Path, tokenizer_file: str | None) -> list[Path]:
    """The files that travel with the graph: the tokenizer (open vocabulary) and the NumPy runner."""
    files = []
    if tokenizer_file is not None:
        tok_path = out.with_name(tokenizer_file)
        atomic_write(tok_path, lambda tmp: detector.model.tokenizer.backend_tokenizer.save(tmp))
        files.append(tok_path)
    runner = out.with_name(RUNNER.name)
    atomic_write(runner, lambda tmp: shutil.copyfile(RUNNER, tmp))
    return [*files, runner]


__all__ = ["ExportResult", "export_onnx", "onnx_nms", "tokenizer_path"]
