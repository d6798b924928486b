"""Shared fixtures: reference data location, a tiny model, real photos from packages."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def reference_dir(name: str) -> Path | None:
    """``shared/reference/<name>`` beside the checkout (CI layout) or under $OPENGLIP_REFERENCE."""
    candidates = []
    if os.environ.get("OPENGLIP_REFERENCE"):
        candidates.append(Path(os.environ["OPENGLIP_REFERENCE"]) / name)
    candidates += [REPO.parent / "shared" / "reference" / name, REPO / "shared" / "reference" / name]
    for c in candidates:
        if c.is_dir():
            return c
    return None


IN_CI = os.environ.get("OPENGLIP_CI") == "1"  # set by .ci/run: nothing may skip there


def require_reference(name: str) -> Path:
    path = reference_dir(name)
    if path is None:
        if IN_CI or os.environ.get("OPENGLIP_REQUIRE_REFERENCE") == "1":
            pytest.fail(f"reference data shared/reference/{name} not found (required in CI)")
        pytest.skip(f"reference data shared/reference/{name} not found")
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped test is a failed test: a missing dependency or reference file must not pass unnoticed."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (not allowed there): {report.longrepr}"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    from skimage import data

    return data.chelsea()  # 300x451 RGB cat photo shipped with scikit-image


@pytest.fixture(scope="session")
def tiny_detector():
    """A tiny random detector whose alignment bias is raised so that it returns boxes."""
    import openglip

    torch.manual_seed(0)
    det = openglip.load_model("tiny", device="cpu")
    with torch.no_grad():
        det.model.head.bias0.fill_(0.0)
    return det


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_detector) -> Path:
    from openglip.checkpoints import save_safetensors

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_safetensors(tiny_detector.model, path)
    return path


@pytest.fixture
def kill_at_step():
    """:func:`_kill_at_step`: a training run killed by SIGKILL once it has logged a step."""
    return _kill_at_step


def _kill_at_step(cmd: list[str], run_dir: Path, step: int, *, env: dict, worker: bool = False, timeout=600):
    """Start ``cmd``, wait until ``run_dir/metrics.jsonl`` logs ``step``, then SIGKILL the process (``worker``: its
    first child, the training process that ``torch.distributed.run`` supervises and restarts) as a crash would.

    Returns:
        the started process (finished: killed, or restarted and done when ``worker``).
    """
    import json
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = Path(run_dir) / "metrics.jsonl", time.time() + timeout
    while not _logged(metrics, step, json):
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"step {step} not logged within {timeout} s"
        time.sleep(0.005)
    if worker:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=timeout)
    return proc


def _logged(metrics: Path, step: int, json) -> bool:
    if not metrics.exists():
        return False
    for line in metrics.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) >= step:
                return True
        except json.JSONDecodeError:
            continue  # a line being written
    return False
