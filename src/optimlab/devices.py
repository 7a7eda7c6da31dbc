"""Choosing the device to compute on: CUDA when present, overridable by name."""

from __future__ import annotations

import torch

from optimlab.errors import OptimlabError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else MPS if available, else CPU), or an explicit device name.

    An unknown or unavailable device raises :class:`OptimlabError` listing the available ones.
    """
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise OptimlabError(
            f"unknown device {name!r}; valid: {', '.join(available_devices())}"
        ) from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise OptimlabError(
            f"device {name!r} is not available here; available: {', '.join(available_devices())}"
        )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise OptimlabError(f"device 'mps' is not available here; available: "
                            f"{', '.join(available_devices())}")
    if device.type not in ("cpu", "cuda", "mps"):
        raise OptimlabError(f"unsupported device {name!r}; valid: {', '.join(available_devices())}")
    return device


def available_devices() -> list[str]:
    """Names accepted by :func:`resolve_device` on this machine."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        names.append("mps")
    return names
