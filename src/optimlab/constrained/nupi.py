"""The nuPI optimizer: a proportional-integral controller on the parameters (made for the multipliers).

With the error e_t = the gradient (its negative with ``maximize=True``; plus ``weight_decay * p``):

    xi_t = nu * xi_{t-1} + (1 - nu) * e_t
    p    <- p - lr * (Ki * e_t + Kp * (xi_t - xi_{t-1}))

``Kp = 0, Ki = 1`` is plain gradient descent (ascent with ``maximize``); ``Kp = 1, Ki = 1, nu = 0``
is the optimistic gradient method, p <- p - lr * (2 e_t - e_{t-1}). The first step needs xi_{-1}:
``init="sgd"`` takes xi_{-1} = e_0 (the first step is plain gradient descent with lr * Ki),
``init="zeros"`` takes xi_{-1} = 0 (first step lr * (Ki + Kp (1 - nu)) e_0). ``Kp``, ``Ki``, ``nu``
are per parameter group, like ``lr``. State per parameter: ``xi`` (the last smoothed error, the
parameter's shape).

Gains per entry: ``Kp`` and ``Ki`` may be tensors (finite, >= 0, real), broadcastable to the shape of
every parameter of their group, e.g. for a table of shape (n, d): (n, d) one gain per entry, (n, 1)
per row, (d,) per column, () one for all. They are copied at construction, saved in ``state_dict()``
and cast to each parameter's device and dtype when used. The formula above then holds per entry.

Sparse gradients (a COO ``p.grad``, as from ``embedding(..., sparse=True)``, any sparse dimension):
duplicate indices are summed first; the entries present (the observed ones) follow the formula above,
their weight decay included, and only their ``xi`` changes; entries absent keep their value and state
bit for bit. Each entry runs its own recursion over the steps that observe it: with ``init="sgd"``
its first observation is plain gradient descent (xi_{-1} = e_0, so xi = e_0 after it), wherever that
step falls, so one more state tensor, ``observed`` (bool, the parameter's shape), says which entries
have been seen; a dense gradient observes every entry and drops it. With ``init="zeros"`` an unseen
entry's xi is 0, as for a first step. An empty sparse gradient changes nothing.

Where Cooper's nuPI differs: its weight decay is added to the update outside the controller (as in
AdamW) rather than to e_t; its ``xi`` smooths the gradient, not e_t (the sign differs with
``maximize``); its dense ``"sgd"`` init keeps xi = 0 after the first step (so its second step's P term
is Kp (1 - nu) e_1), its sparse one keeps xi = (1 - nu) e_0 (ours: xi = e_0 in both, equal to Cooper's
sparse for nu = 0); it takes one parameter group (unless the gains have shape (1,)), tensor gains with
dense gradients only, and sparse gradients over the first dimension only (rows); negative gains only
warn there. The "zeros" init, and "sgd" on rows with nu = 0, agree with Cooper's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from optimlab.errors import OptimlabError

INITS = ("sgd", "zeros")
GAINS = ("Kp", "Ki")


class NuPI(torch.optim.Optimizer):
    """nuPI(params, lr, Kp=0, Ki=1, nu=0, weight_decay=0, init="sgd", maximize=False).

    ``Kp``, ``Ki``: numbers >= 0, or tensors of gains per entry (broadcastable to each parameter of the
    group). Gradients may be dense or sparse COO (see the module docstring).
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, Kp: float | torch.Tensor = 0.0,
                 Ki: float | torch.Tensor = 1.0, nu: float = 0.0, weight_decay: float = 0.0,
                 init: str = "sgd", maximize: bool = False):
        defaults = dict(lr=lr, Kp=Kp, Ki=Ki, nu=nu, weight_decay=weight_decay, init=init,
                        maximize=maximize)
        _check(defaults)
        for name in GAINS:
            defaults[name] = _own(defaults[name])
        super().__init__(params, defaults)  # checks each group in add_param_group

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check(group, len(self.param_groups) - 1)
        for name in GAINS:
            group[name] = _own(group[name])

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("param_groups", [])
        if len(saved) == len(self.param_groups):  # else torch says what does not match
            for i, (group, new) in enumerate(zip(self.param_groups, saved, strict=True)):
                _check({**group, **{k: v for k, v in new.items() if k != "params"}}, i)
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                if "observed" in state:  # torch casts state to the parameter's dtype on loading
                    state["observed"] = state["observed"].bool()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is None:
                    continue
                kp, ki = (_gain_for(group, name, p, i) for name in GAINS)
                if p.grad.is_sparse and p.grad.sparse_dim() > 0:
                    self._sparse_step(p, group, kp, ki)
                else:
                    self._dense_step(p, group, kp, ki)
        return loss

    def _dense_step(self, p: torch.Tensor, group: dict, kp, ki) -> None:
        grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
        e = -grad if group["maximize"] else grad
        if group["weight_decay"]:
            e = e.add(p, alpha=group["weight_decay"])
        state = self.state[p]
        previous, first = state.get("xi"), state.pop("observed", None)
        if first is not None:
            first = ~first
        if previous is None and group["init"] == "zeros":
            previous = torch.zeros_like(p)
        update, state["xi"] = _pi(e, previous, first, kp, ki, group["nu"])
        p.add_(update, alpha=-group["lr"])

    def _sparse_step(self, p: torch.Tensor, group: dict, kp, ki) -> None:
        grad = p.grad.coalesce()  # duplicate indices summed (index_put_ would keep only one)
        if grad._nnz() == 0:
            return
        at = tuple(grad.indices())  # k index tensors of shape (nnz,): values (nnz, *p.shape[k:])
        values = p[at]
        e = -grad.values() if group["maximize"] else grad.values()
        if group["weight_decay"]:
            e = e.add(values, alpha=group["weight_decay"])
        state = self.state[p]
        if "xi" not in state:
            state["xi"] = torch.zeros_like(p)
            if group["init"] == "sgd":
                state["observed"] = torch.zeros_like(p, dtype=torch.bool)
        observed = state.get("observed")
        first = None if observed is None else ~observed[at]
        kp, ki = (g if not isinstance(g, torch.Tensor) else g.expand(p.shape)[at] for g in (kp, ki))
        update, xi = _pi(e, state["xi"][at], first, kp, ki, group["nu"])
        p.index_put_(at, values.add(update, alpha=-group["lr"]))
        state["xi"].index_put_(at, xi)
        if observed is not None:
            observed.index_put_(at, torch.ones((), dtype=torch.bool, device=p.device))


def _pi(e: torch.Tensor, previous: torch.Tensor | None, first: torch.Tensor | None, kp, ki, nu: float):
    """(update, xi_t) from e_t and xi_{t-1} (one shape; the gains numbers or tensors of that shape).

    ``previous=None``: every entry is at its first observation under init "sgd"; ``first``: a bool mask
    of the entries that are (None: none is); those take xi_{-1} = e_t, so their xi_t = e_t exactly and
    their update is Ki e_t."""
    if previous is None:
        return e * ki, e.clone()
    xi = previous * nu + e * (1 - nu) if nu else e.clone()
    if first is not None:
        xi = torch.where(first, e, xi)
    update = e * ki
    if isinstance(kp, torch.Tensor) or kp:
        p_term = (xi - previous) * kp
        if first is not None:
            p_term = p_term.masked_fill(first, 0.0)
        update = update + p_term
    return update, xi


def _gain_for(group: dict, name: str, p: torch.Tensor, index: int):
    """The group's gain, a number or a tensor cast to p's device and dtype (its shape checked)."""
    gain = group[name]
    if not isinstance(gain, torch.Tensor):
        return gain
    _check_fits(name, gain, p, index)
    return gain.to(device=p.device, dtype=p.dtype)


def _own(gain):
    return gain.detach().clone() if isinstance(gain, torch.Tensor) else gain


def _check_fits(name: str, gain: torch.Tensor, p: torch.Tensor, index: int | None) -> None:
    try:
        fits = torch.broadcast_shapes(gain.shape, p.shape) == p.shape
    except RuntimeError:
        fits = False
    if not fits:
        where = "" if index is None else f" in group {index}"
        raise OptimlabError(
            f"NuPI: {name} of shape {tuple(gain.shape)} does not fit a parameter of shape "
            f"{tuple(p.shape)}{where}; valid: a number, or a tensor of the shape of every parameter of its "
            "group or broadcastable to it (for a parameter of shape (n, d): (n, d), (n, 1), (d,) or ()); "
            "give parameters of other shapes their own group")


def _check_gain(name: str, v, params, index: int | None) -> None:
    valid = "a number >= 0 or a tensor of finite gains >= 0"
    if isinstance(v, torch.Tensor):
        if v.is_complex() or v.dtype == torch.bool:
            raise OptimlabError(f"NuPI: {name} must be {valid}; got a tensor of dtype {v.dtype}")
        bad = int((~torch.isfinite(v)).sum()) if v.is_floating_point() else 0
        if bad:
            raise OptimlabError(f"NuPI: {name} must be {valid}; got a tensor with {bad} NaN or "
                                "infinite entries")
        if bool((v < 0).any()):
            raise OptimlabError(f"NuPI: {name} must be {valid}; got a tensor with {int((v < 0).sum())} "
                                f"negative entries (smallest {v.min().item()!r})")
        for p in params:
            _check_fits(name, v, p, index)
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
        raise OptimlabError(f"NuPI: {name} must be {valid}; got {v!r}")


def _check(group: dict, index: int | None = None) -> None:
    for name in ("lr", "weight_decay"):
        v = group[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise OptimlabError(f"NuPI: {name} must be a number >= 0; got {v!r}")
    for name in GAINS:
        _check_gain(name, group[name], group.get("params", []), index)
    if isinstance(group["nu"], bool) or not isinstance(group["nu"], (int, float)) or not 0 <= group["nu"] < 1:
        raise OptimlabError(f"NuPI: nu must be in [0, 1); got {group['nu']!r}")
    if group["init"] not in INITS:
        raise OptimlabError(f"NuPI: unknown init {group['init']!r}; valid: {', '.join(INITS)}")
