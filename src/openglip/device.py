"""Choosing the device a model runs on (shared by the inference API, the trainer and the teachers)."""

from __future__ import annotations

import torch

from .errors import UsageError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"``: the GPU when there is one, else the CPU; otherwise the named device.

    Raises:
        UsageError: an unknown device name, or CUDA asked for on a machine without a CUDA GPU.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"device {str(device)!r} was asked for but no CUDA GPU is available; use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {str(device)!r} is not supported; use cpu, cuda or cuda:N")
    return device
