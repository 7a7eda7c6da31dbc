"""The stacked forward pass of a plain dense network, without vmap.

A model that is an ``nn.Sequential`` of Flatten, Linear and elementwise activations only (the
``logreg`` and ``mlp`` of the studies, DeepOBS's MLP, most users' MLPs) is applied to the stacked
parameters (S, L, *shape) by a few batched matmuls, the same ones vmap makes of it under
:class:`~optimlab.engine.stacking.SharedInputLinear`: the first Linear as one matmul per seed over
the batch shared by its L slots, (L * out, in) @ (in, B), every later one as a batched matmul over
the S * L slices, activations kept as (S, L, features, B). What it saves is vmap's and
``functional_call``'s work per step in Python (measured: 0.9 ms of fixed cost a step for 15 runs,
a seventh of an MLP step on one CPU thread, most of a logistic regression's). Anything else (other
modules, a subclass that overrides ``forward``, hooks, a Linear on inputs of more than one
dimension) has no plan and goes through vmap.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ELEMENTWISE", "dense_forward", "dense_plan"]

# modules that act elementwise, without parameters or buffers: they apply to any layout as they are
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Identity)


def dense_plan(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, object]] | None:
    """The layers of ``model`` (inputs of ``input_shape`` a sample) as steps of
    :func:`dense_forward`: ``("flatten", None)``, ``("linear", (weight name, bias name or None))``,
    ``("elementwise", module)``; None unless ``model`` is exactly such a network (its forward
    ``nn.Sequential``'s, no hooks, at least one Linear, each Linear fed one-dimensional samples, no
    layer used twice, no parameter shared between layers)."""
    if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
        return None
    if any(_hooked(m) for m in model.modules()) or _global_hooks():
        return None
    children = list(model._modules.items())  # every entry: named_children() skips a repeated module
    named = dict(model.named_parameters())  # a parameter shared by two layers: under its first name only
    if len({id(m) for _, m in children}) < len(children):
        return None
    shape, plan, linear = tuple(input_shape), [], False
    for name, m in children:
        if m is None:
            return None
        if list(m.parameters(recurse=False)) and type(m) is not nn.Linear or list(m.buffers()):
            return None
        if type(m) is nn.Flatten and not linear and m.start_dim == 1 and m.end_dim == -1:
            shape = (math.prod(shape),)
            plan.append(("flatten", None))
        elif type(m) is nn.Linear and shape == (m.in_features,) and named.get(f"{name}.weight") is m.weight \
                and (m.bias is None or named.get(f"{name}.bias") is m.bias):
            plan.append(("linear", (f"{name}.weight", None if m.bias is None else f"{name}.bias")))
            shape, linear = (m.out_features,), True
        elif type(m) in ELEMENTWISE and not list(m.children()):
            plan.append(("elementwise", m))
        else:
            return None
    return plan if linear else None


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _global_hooks() -> bool:
    from torch.nn.modules import module

    return bool(module._global_forward_hooks or module._global_forward_pre_hooks
                or module._global_backward_hooks or getattr(module, "_global_backward_pre_hooks", None))


def dense_forward(plan: list[tuple[str, object]], params: dict[str, torch.Tensor],
                  x: torch.Tensor) -> torch.Tensor:
    """The outputs of every slice: x (S, B, *input), each seed's batch shared by its L slots;
    ``params`` stacked (S, L, *shape) -> (S, L, B, out), a transposed view of (S, L, out, B)."""
    h, shared = x, True  # shared: (S, B, *shape), one batch per seed; else (S, L, features, B)
    for kind, what in plan:
        if kind == "flatten":
            h = h.flatten(2)
        elif kind == "linear":
            weight, bias = what
            w = params[weight]
            s, slots, out, inp = w.shape
            if shared:  # (S, L * out, in) @ (S, in, B): one matmul per seed
                h = torch.matmul(w.reshape(s, slots * out, inp), h.mT).view(s, slots, out, -1)
                shared = False
            else:  # (S * L, out, in) @ (S * L, in, B)
                h = torch.matmul(w.reshape(s * slots, out, inp), h.reshape(s * slots, inp, -1))
                h = h.view(s, slots, out, -1)
            if bias is not None:
                h = h + params[bias].unsqueeze(-1)
        else:
            h = what(h)
    return h.mT
