"""Lagrange multipliers: dense (one per constraint entry), indexed (looked up by entry), implicit (a model).

Sign convention: lambda >= 0 for an inequality group g(theta) <= 0, mu free for an equality group
h(theta) = 0. The multipliers are *maximised* by the dual optimizer. Explicit multipliers (dense,
indexed) are projected onto lambda >= 0 after every dual step; an implicit multiplier's output is
clamped at 0 on the way out instead.

Lookups by index give dense gradients (zero where nothing was observed) by default, so any
``torch.optim`` optimizer works; an indexed multiplier may instead give sparse gradients, or be stepped
lazily on its observed entries (``IndexedMultiplier(dual_step=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from optimlab.errors import OptimlabError


class Multiplier(nn.Module):
    """Base class. ``nonnegative`` is set by the constraint that owns the multiplier (inequality)."""

    kind = "multiplier"
    nonnegative: bool = False
    flat = None  # dense multipliers: (the problem's buffer,) when their values live there

    def value(self, indices: torch.Tensor | None = None, features: torch.Tensor | None = None
              ) -> torch.Tensor:
        """The multiplier values for the observed entries (differentiable w.r.t. the dual parameters)."""
        raise NotImplementedError

    def explicit_weight(self) -> torch.Tensor | None:
        """The tensor of values, for multipliers that are stored explicitly (None for implicit ones)."""
        return None


class DenseMultiplier(Multiplier):
    """One multiplier per entry of a constraint group of shape ``shape``: ``weight`` has that shape.

    ``value(None)`` is the whole tensor; ``value(indices)`` the entries at ``indices`` (a 1-D long
    tensor into the flattened group), for constraints sampled entry by entry.

    Storage: its own parameter ``weight``, or (set by the :class:`Problem`) a slice of the problem's
    one flat buffer of dense multipliers, ``weight`` being then a view of it. The state dict holds
    ``weight`` either way.
    """

    kind = "dense"

    def __init__(self, shape: Sequence[int] | int = (), init: float | torch.Tensor = 0.0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device | None = None):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        init_t = torch.as_tensor(init, dtype=dtype, device=device)
        if init_t.dim() and tuple(init_t.shape) != shape:
            raise OptimlabError(
                f"multiplier init has shape {tuple(init_t.shape)} but the constraint has shape {shape}; "
                "give a number or a tensor of the constraint's shape"
            )
        self.shape = shape
        self.flat: tuple[nn.Parameter] | None = None  # (the problem's buffer,) when stored there
        self.span = (0, 0)  # its entries in that buffer
        self._parameters["weight"] = nn.Parameter(init_t.expand(shape).clone())

    @property
    def weight(self) -> torch.Tensor:
        """The multipliers, of the group's shape (a view of the problem's buffer when stored there)."""
        if self.flat is None:
            return self._parameters["weight"]
        start, stop = self.span
        return self.flat[0][start:stop].view(self.shape)

    @torch.no_grad()
    def store_in(self, flat: nn.Parameter, start: int) -> int:
        """Move the values into ``flat[start:]``; from now on ``weight`` is a view. Returns the end."""
        own = self._parameters.pop("weight")
        stop = start + own.numel()
        flat[start:stop] = own.reshape(-1)
        self.flat, self.span = (flat,), (start, stop)
        return stop

    def value(self, indices: torch.Tensor | None = None, features: torch.Tensor | None = None
              ) -> torch.Tensor:
        if indices is None:
            return self.weight
        return self.weight.reshape(-1)[indices]

    def explicit_weight(self) -> torch.Tensor:
        return self.weight

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.flat is not None:
            destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self.flat is None:
            return
        key = prefix + "weight"
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key not in state_dict:
            missing_keys.append(key)
        elif tuple(state_dict[key].shape) != self.shape:
            error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                              f"{tuple(state_dict[key].shape)}, the shape here is {self.shape}")
        else:
            with torch.no_grad():
                self.weight.copy_(state_dict[key])


DUAL_STEPS = ("dense", "sparse", "lazy")


class IndexedMultiplier(DenseMultiplier):
    """A table of ``num_constraints`` multipliers of which each step observes some, by index.

    Same storage as :class:`DenseMultiplier` of shape ``(num_constraints,)``; every observation must
    give ``indices`` (1-D long). ``dual_step`` says what the dual step touches, chosen by the user:

    * ``"dense"`` (default): a dense gradient, zero at the entries not observed. Any optimizer; a
      stateless one (SGD without momentum or weight decay) leaves unobserved entries exactly where
      they are, but a stateful one (Adam, momentum) keeps moving them and decays their state, and
      every step costs time in the size of the table.
    * ``"sparse"``: a sparse COO gradient of the observed entries (duplicates summed), for the
      optimizers that take one: ``torch.optim.SGD`` (without weight decay), ``SparseAdam``,
      ``Adagrad`` and optimlab's ``NuPI``, each with its own semantics for sparse gradients (SparseAdam
      and NuPI update only the observed entries and their state).
    * ``"lazy"``: the dual step takes the observed entries through any elementwise stock optimizer
      (``rows.ELEMENTWISE``: SGD, Adam, AdamW, ...): only they move and only their state changes, as
      if the optimizer were run on the observed rows alone; the scalar state (Adam's step count) is
      the table's, counting the dual steps that observed any entry (as torch's SparseAdam does for
      Adam). Weight decay applies to the observed entries only.
    """

    kind = "indexed"

    def __init__(self, num_constraints: int, init: float | torch.Tensor = 0.0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
                 dual_step: str = "dense"):
        super().__init__((int(num_constraints),), init, dtype, device)
        if dual_step not in DUAL_STEPS:
            raise OptimlabError(f"unknown dual_step {dual_step!r} of an indexed multiplier; valid: "
                                f"{', '.join(DUAL_STEPS)}")
        self.dual_step = dual_step

    def value(self, indices: torch.Tensor | None = None, features: torch.Tensor | None = None
              ) -> torch.Tensor:
        if indices is None or self.dual_step == "dense":
            return super().value(indices, features)
        return _SparseLookup.apply(self.weight, indices)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, dual_step={self.dual_step}"


class _SparseLookup(torch.autograd.Function):
    """weight[indices] forward; backward a sparse COO gradient of weight's shape at ``indices``."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(indices)
        ctx.size = weight.shape
        return weight[indices]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (indices,) = ctx.saved_tensors
        return torch.sparse_coo_tensor(indices[None], grad, ctx.size, check_invariants=False), None


class _ProjectedClamp(torch.autograd.Function):
    """max(x, 0) forward; backward passes the ascent direction unless it pushes a clamped entry down.

    The gradient reaching an implicit multiplier is that of the dual Lagrangian, which is maximised:
    at an entry clamped to 0 it is let through only when positive (it would raise the multiplier),
    the projected gradient of ascent on lambda >= 0 (a plain relu would stall there for ever).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.where((x > 0) | (grad > 0), grad, torch.zeros_like(grad))


class ImplicitMultiplier(Multiplier):
    """Multipliers predicted by a model from features of the observed constraints.

    ``model(features)`` must give one value per observed entry (shape of the violation, or that shape
    with a trailing 1). For an inequality group the values are clamped at 0 (see ``_ProjectedClamp``).
    The model's parameters are the dual parameters.
    """

    kind = "implicit"

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise OptimlabError(f"ImplicitMultiplier needs a torch.nn.Module; got {type(model).__name__}")
        self.model = model

    def value(self, indices: torch.Tensor | None = None, features: torch.Tensor | None = None
              ) -> torch.Tensor:
        if features is None:
            raise OptimlabError(
                "an implicit multiplier predicts its values from features: return "
                "Violation(value, features=...) for this constraint"
            )
        out = self.model(features)
        return _ProjectedClamp.apply(out) if self.nonnegative else out


MULTIPLIER_KINDS = ("dense", "indexed", "implicit")
