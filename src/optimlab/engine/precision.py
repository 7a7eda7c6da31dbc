"""The arithmetic of a run's forward pass: ``precision = "fp32" | "bf16" | "fp16"``.

fp32 (the default) is plain PyTorch. bf16 and fp16 are mixed precision as ``torch.amp`` does it:
the forward pass (and every evaluation) runs under ``torch.autocast`` of the data's device (CPU or
CUDA), so matmuls and convolutions compute in the low precision; the parameters, their gradients
and the optimizer's state stay fp32 (master weights), and the model's output is cast to fp32 before
the loss. fp16's narrow exponent range needs a gradient scaler (``torch.amp.GradScaler``): the loss is
scaled before the backward pass, the gradients unscaled before the step, and a step whose
gradients overflowed is skipped while the scale backs off; its state is part of the checkpoint, so a
resumed run is the uninterrupted one. bf16 has fp32's range and needs none.

What to expect (``benchmarks/bench_study.py --precisions bf16 fp16``): on a CPU with native bf16 dot
products (AVX512-BF16 or AMX) bf16 matmuls are several times faster than fp32 ones (4.4x measured on
1024^3, AVX512-BF16); a CPU without native fp16 arithmetic emulates fp16, several times slower than
fp32, so fp16 is for GPUs. Runs in bf16 or fp16 are not bit-exact reproductions of their fp32 runs:
their final test losses agree to a few 1e-3 relative on the study benchmark (3e-2 to 9e-2 at its
largest Adam learning rate, where a whole epoch amplifies any rounding).
"""

from __future__ import annotations

import contextlib

import torch

from optimlab.errors import OptimlabError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(value: object) -> str:
    """``value`` if it names a precision, else a clear error naming the valid ones."""
    if value not in PRECISIONS:
        raise OptimlabError(f"unknown precision {value!r}; valid: {', '.join(PRECISIONS)} (fp32: plain, "
                            "bf16/fp16: mixed precision with fp32 master weights)")
    return value


class Precision:
    """The precision of one run (or of a vectorized group) on ``device``: ``autocast()`` around its
    forward passes, ``forward(model, x)`` one of them; ``backward(loss)`` and ``step(optimizer)``
    (through the gradient scaler for fp16); ``state_dict()`` for its checkpoint (the scaler's state;
    {} without one)."""

    def __init__(self, name: str, device: torch.device):
        self.name = check_precision(name)
        self.device = torch.device(device)
        self.dtype = PRECISIONS[self.name]
        self.scaler = torch.amp.GradScaler(self.device.type) if self.name == "fp16" else None

    @property
    def mixed(self) -> bool:
        return self.name != "fp32"

    def autocast(self):
        """A context in which forward passes compute in this precision (fp32: no change)."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def forward(self, model, x: torch.Tensor) -> torch.Tensor:
        """``model(x)`` in this precision, the output in fp32 for the loss (fp32: ``model(x)`` itself)."""
        if not self.mixed:
            return model(x)
        with self.autocast():
            out = model(x)
        return out.float()

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with the scaler: unscaled gradients, skipped when they overflowed."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        """The checkpoint's entries of this precision: ``grad_scaler`` for fp16, else none."""
        return {} if self.scaler is None else {"grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, checkpoint: dict) -> None:
        if self.scaler is not None and "grad_scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["grad_scaler"])
