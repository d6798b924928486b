"""Runs exported models the way a deployment does: ONNX Runtime, numpy and the copied ``openglip_onnx.py``, in a
process that never imports torch (asserted at the end).

Usage: ``python tests/onnx_worker.py job.json``; the job lists ``runner_dir`` (a folder holding
``openglip_onnx.py``) and ``tasks``: ``{"model", "images" (files), "prompts" (one per image, open vocabulary
only), "out" (.npz)}``. Each task's .npz holds the preprocessed batch, every model output (``out_<name>``) and the
detections of each image in input pixels, from the numpy post-processing (``numpy_<b>_<field>``) and, for models
exported with ``--nms``, from the graph's own selection (``graph_<b>_<field>``).
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(job_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    sys.path.insert(0, job["runner_dir"])
    import openglip_onnx as rt

    sessions: dict[str, rt.OnnxDetector] = {}
    for task in job["tasks"]:
        if task["model"] not in sessions:
            sessions[task["model"]] = rt.OnnxDetector(task["model"], threads=2)
        det = sessions[task["model"]]
        pixel_values, sizes, _ = rt.preprocess(task["images"], det.meta)
        prompts = None if det.fixed else [rt.parse_prompt(p) for p in task["prompts"]]
        outputs, maps = det.run(pixel_values, sizes, prompts, names=det.outputs)
        meta = {**det.meta, "padded_size": pixel_values.shape[-2:]}
        saved = {"pixel_values": pixel_values, "sizes": np.asarray(sizes)}
        saved.update({f"out_{k}": v for k, v in outputs.items()})
        raw = {k: v for k, v in outputs.items() if not k.startswith("det_")}
        routes = {"numpy": raw, "graph": outputs} if det.meta["nms"] else {"numpy": raw}
        for route, outs in routes.items():
            for b, (boxes, scores, labels) in enumerate(rt.postprocess(outs, sizes, meta, maps)):
                saved.update(
                    {
                        f"{route}_{b}_boxes": boxes,
                        f"{route}_{b}_scores": scores,
                        f"{route}_{b}_labels": labels,
                    }
                )
        np.savez(task["out"], **saved)
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert "torch" not in sys.modules, f"torch was imported: {loaded[:5]}"
    print(json.dumps({"tasks": len(job["tasks"]), "torch_imported": False}))


if __name__ == "__main__":
    main(sys.argv[1])
