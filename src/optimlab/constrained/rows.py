"""Stepping a stock ``torch.optim`` optimizer on some entries of a parameter, the others left alone.

For an elementwise optimizer (each entry's update depends on that entry's gradient and state only),
stepping the entries ``rows`` of a parameter ``p`` means: gather ``p[rows]`` and the rows of its
per-entry state (momentum, moments, ...) into a temporary parameter, let the optimizer step that one
(with its own hyperparameters), and scatter the values and state back. The other entries keep their
values and state bit for bit; scalar state (the step count) is the parameter's, or ``step`` when
given. Per-entry state that the optimizer creates at that step is zero for the entries not stepped,
which is how every optimizer of ``ELEMENTWISE`` starts it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from optimlab.constrained.nupi import NuPI

ELEMENTWISE: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.RAdam,
    torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta, NuPI)


def elementwise(optimizer: torch.optim.Optimizer) -> bool:
    """Whether optimlab can step ``optimizer`` on part of a parameter (one of ``ELEMENTWISE``; NuPI
    with ``init="zeros"``, whose state of an entry never stepped is 0; with ``init="sgd"`` it is not)."""
    if isinstance(optimizer, NuPI):
        return all(g["init"] == "zeros" for g in optimizer.param_groups)
    return isinstance(optimizer, ELEMENTWISE)


def stateless(optimizer: torch.optim.Optimizer) -> bool:
    """SGD without momentum or weight decay: a zero gradient leaves an entry exactly where it is."""
    return type(optimizer) is torch.optim.SGD and all(
        not g["momentum"] and not g["weight_decay"] for g in optimizer.param_groups)


def elementwise_names() -> str:
    return ", ".join(c.__name__ for c in ELEMENTWISE)


def takes_sparse(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` steps on sparse gradients: SGD without weight decay, SparseAdam, Adagrad,
    NuPI."""
    if isinstance(optimizer, torch.optim.SGD):
        return all(not g["weight_decay"] for g in optimizer.param_groups)
    return isinstance(optimizer, (torch.optim.SparseAdam, torch.optim.Adagrad, NuPI))


Entries = Mapping[torch.Tensor, tuple[torch.Tensor, torch.Tensor, "int | None"]]


@torch.no_grad()
def step_entries(optimizer: torch.optim.Optimizer, entries: Entries) -> None:
    """One ``optimizer.step()`` in which each parameter ``p`` of ``entries`` (p -> (rows, gradient of
    those rows, step)) moves at ``rows`` only (1-D long, no repeats; rows of the first dimension);
    the other parameters of the optimizer step as usual with their ``.grad``. ``step``: the step count
    those rows have taken so far (their state's ``step``), or None for the parameter's own."""
    if not entries:
        optimizer.step()
        return
    groups = optimizer.param_groups
    saved = [g["params"] for g in groups]
    proxies = {}
    for p, (rows, grad, step) in entries.items():
        q = p.detach()[rows].clone()
        q.grad = grad.to(q.dtype)
        full = optimizer.state.pop(p, None)
        part = {}
        for key, v in (full or {}).items():
            if isinstance(v, torch.Tensor) and v.dim() and v.shape == p.shape:
                part[key] = v[rows].clone()
            elif key == "step" and step is not None:
                part[key] = torch.full_like(v, step) if isinstance(v, torch.Tensor) else step
            else:
                part[key] = v.clone() if isinstance(v, torch.Tensor) else v
        if part:
            optimizer.state[q] = part
        proxies[p] = (q, rows, full)
    for g in groups:
        g["params"] = [proxies[p][0] if p in proxies else p for p in g["params"]]
    stepped = False
    try:
        optimizer.step()
        stepped = True
    finally:
        for g, params in zip(groups, saved, strict=True):
            g["params"] = params
        for p, (q, rows, full) in proxies.items():
            new = optimizer.state.pop(q, {})
            if not stepped:  # the optimizer refused: everything as it was
                if full is not None:
                    optimizer.state[p] = full
                continue
            full = {} if full is None else full
            for key, v in new.items():
                if isinstance(v, torch.Tensor) and v.dim() and v.shape == q.shape:
                    if key not in full:
                        full[key] = torch.zeros_like(p, dtype=v.dtype)
                    full[key][rows] = v
                else:
                    full[key] = v
            p[rows] = q
            optimizer.state[p] = full
