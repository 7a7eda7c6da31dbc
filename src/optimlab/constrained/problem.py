"""The constrained problem: a function giving the loss and the observed violations, and its constraints.

``Problem(compute, {"name": Constraint(...), ...})``: ``compute(*args, **kwargs)`` (the optimizer's
step arguments, e.g. a batch) returns a :class:`State` or a pair ``(loss, {name: violation})``. The
problem is an ``nn.Module`` holding the multipliers (its parameters are the dual parameters) and the
penalty coefficients (buffers): ``.to(device)`` moves them all and ``state_dict()`` saves them, with
a signature of the constraints that ``load_state_dict`` checks before changing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from optimlab.constrained.constraints import Constraint, State, Violation
from optimlab.constrained.multipliers import DenseMultiplier
from optimlab.errors import OptimlabError

STATE_FORMAT = "optimlab.constrained.problem/1"


@dataclass(slots=True)
class Observed:
    """One constraint group as observed at a step, validated (see :class:`Violation`)."""

    name: str
    constraint: Constraint
    value: torch.Tensor
    strict: torch.Tensor | None
    indices: torch.Tensor | None
    features: torch.Tensor | None
    primal: bool = True  # contributes to the primal update at this step
    dual: bool = True  # contributes to the dual update at this step
    strict_indices: torch.Tensor | None = None
    strict_features: torch.Tensor | None = None
    separate_strict: bool = False  # the strict measurement observes entries of its own

    @property
    def true_value(self) -> torch.Tensor:
        """The strict violation when given, else the violation (no gradient)."""
        return (self.strict if self.strict is not None else self.value).detach()

    @property
    def dual_indices(self) -> torch.Tensor | None:
        """The entries of ``true_value``: the strict indices where given, else the indices."""
        return self.strict_indices if self.separate_strict else self.indices

    @property
    def dual_features(self) -> torch.Tensor | None:
        return self.strict_features if self.separate_strict else self.features


@dataclass(slots=True)
class Evaluation:
    loss: torch.Tensor | None
    observed: list[Observed]
    misc: dict[str, Any]


class Problem(nn.Module):
    """Minimise the loss subject to the named constraint groups.

    ``compute``: the function of the step's arguments returning the loss and the violations (or
    override :meth:`compute` in a subclass and pass None). ``constraints``: name -> :class:`Constraint`.
    ``compute_violations``: optional cheaper function of the same arguments returning only the
    violations dict, used where a scheme re-evaluates the constraints at the new point without
    gradients (alternating primal-then-dual); by default ``compute`` is called under ``no_grad``.

    """

    def __init__(self, compute: Callable[..., State | tuple] | None,
                 constraints: Mapping[str, Constraint] | None = None,
                 compute_violations: Callable[..., Mapping] | None = None):
        super().__init__()
        if compute is not None and not callable(compute):
            raise OptimlabError(f"compute must be a function returning the state; got {compute!r}")
        self._compute = compute
        self._compute_violations = compute_violations
        constraints = dict(constraints or {})
        for name, c in constraints.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise OptimlabError(
                    f"constraint names must be identifiers (letters, digits, _); got {name!r}")
            if not isinstance(c, Constraint):
                raise OptimlabError(f"constraint {name!r} must be a Constraint; got {type(c).__name__}")
        self.constraints = nn.ModuleDict(constraints)
        self._by_name: dict[str, Constraint] = dict(constraints)
        self.flat_groups: list[tuple[str, slice]] = []  # (name, its entries in dense_multipliers)
        self.flat_inequalities = 0  # dense_multipliers[:flat_inequalities] are >= 0

    def store_flat(self, names: list[str]) -> nn.Parameter:
        """Move the dense multipliers of the groups ``names`` (of one dtype and device) into one flat
        parameter, ``dense_multipliers`` (inequality groups first, then equality groups, each in the
        order of ``constraints``); each group's ``multiplier.weight`` becomes a view of its slice.
        Done by :class:`ConstrainedOptimizer` when one elementwise dual optimizer holds them all."""
        if self.flat_groups:
            raise OptimlabError("the problem's dense multipliers are already stored in one buffer")
        dense = [(n, self._by_name[n]) for n in self._by_name if n in names]
        bad = [n for n, c in dense
               if type(c.multiplier) is not DenseMultiplier or c.multiplier.flat is not None]
        if bad or len(dense) != len(set(names)):
            raise OptimlabError(f"cannot store the multipliers of {', '.join(bad or names)} in one buffer")
        first = dense[0][1].multiplier.weight
        dense.sort(key=lambda nc: not nc[1].inequality)  # stable: inequalities first, in order
        total = sum(c.multiplier.weight.numel() for _, c in dense)
        flat = nn.Parameter(torch.empty(total, dtype=first.dtype, device=first.device))
        start = 0
        for name, c in dense:
            stop = c.multiplier.store_in(flat, start)
            self.flat_groups.append((name, slice(start, stop)))
            if c.inequality:
                self.flat_inequalities = stop
            start = stop
        self.dense_multipliers = flat
        return flat

    # -- evaluation -------------------------------------------------------------------------------

    def compute(self, *args: Any, **kwargs: Any) -> State | tuple:
        """The loss and violations for the step's arguments (see the class docstring)."""
        if self._compute is None:
            raise OptimlabError("Problem needs compute=..., or a subclass that overrides compute()")
        return self._compute(*args, **kwargs)

    def evaluate(self, args: tuple = (), kwargs: Mapping | None = None) -> Evaluation:
        """Call :meth:`compute` and check what it returned against the constraints."""
        out = self.compute(*args, **(kwargs or {}))
        if isinstance(out, State):
            loss, violations, misc = out.loss, out.violations, out.misc
        elif isinstance(out, tuple) and len(out) == 2:
            (loss, violations), misc = out, {}
        else:
            raise OptimlabError(
                f"compute must return a State(loss, violations) or a pair (loss, violations); got "
                f"{type(out).__name__}"
            )
        if loss is not None and not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
            raise OptimlabError(f"the loss must be a scalar tensor or None; got {_describe(loss)}")
        return Evaluation(loss, self._observe(violations), misc)

    @torch.no_grad()
    def evaluate_violations(self, args: tuple = (), kwargs: Mapping | None = None) -> list[Observed]:
        """The violations alone at the current point, without gradients."""
        if self._compute_violations is not None:
            return self._observe(self._compute_violations(*args, **(kwargs or {})))
        return self.evaluate(args, kwargs).observed

    def _observe(self, violations: Mapping) -> list[Observed]:
        if not isinstance(violations, dict) and not isinstance(violations, Mapping):
            raise OptimlabError(f"violations must be a dict name -> tensor; got {type(violations).__name__}")
        observed = []
        for name, v in violations.items():
            c = self._by_name.get(name)
            if c is None:
                raise OptimlabError(
                    f"compute returned a violation for {name!r}, which is not a constraint of this "
                    f"problem; constraints: {', '.join(self._by_name) or 'none'}"
                )
            if isinstance(v, torch.Tensor):
                if c.plain_shape is not None and v.shape == c.plain_shape:  # the common case, fast
                    observed.append(Observed(name, c, v, None, None, None))
                else:
                    observed.append(self._check(name, c, v, None, None, None))
            elif isinstance(v, Violation):
                ob = self._check(name, c, v.value, v.strict, v.indices, v.features,
                                 v.strict_indices, v.strict_features)
                for flag in ("contributes_to_primal_update", "contributes_to_dual_update"):
                    if not isinstance(getattr(v, flag), bool):
                        raise OptimlabError(f"{flag} of {name!r} must be True or False; got "
                                            f"{getattr(v, flag)!r}")
                ob.primal, ob.dual = v.contributes_to_primal_update, v.contributes_to_dual_update
                observed.append(ob)
            else:
                raise OptimlabError(
                    f"the violation of {name!r} must be a torch.Tensor (or a Violation); got "
                    f"{_describe(v)}. Build it from tensors, e.g. sq_norm - 1.0"
                )
        return observed

    def _check(self, name, c: Constraint, value, strict, indices, features, strict_indices=None,
               strict_features=None) -> Observed:
        if not isinstance(value, torch.Tensor):
            raise OptimlabError(f"the violation of {name!r} must be a torch.Tensor; got {_describe(value)}")
        kind = c.multiplier.kind if c.multiplier is not None else "none"
        expected = _expected_shape(name, c, kind, indices, "indices")
        if kind != "implicit" and tuple(value.shape) != expected:
            what = "the observed indices" if indices is not None else f"its multiplier ({kind})"
            raise OptimlabError(
                f"the violation of {name!r} has shape {tuple(value.shape)} but {what} has shape "
                f"{expected}; declare Constraint(..., shape={tuple(value.shape)}) or observe "
                "some entries with Violation(value, indices=...)"
            )
        separate = strict_indices is not None or strict_features is not None
        if separate:
            if strict is None:
                raise OptimlabError(
                    f"strict_indices/strict_features of {name!r} say which entries the strict "
                    "violation observes: give the strict violation too, "
                    "Violation(value, strict=..., strict_indices=...)"
                )
            if kind == "implicit" and strict_indices is not None:
                raise OptimlabError(
                    f"constraint {name!r} has an implicit multiplier, which is addressed by features: give "
                    "strict_features (one row per entry of the strict violation), not strict_indices")
            if kind != "implicit" and strict_features is not None:
                raise OptimlabError(
                    f"constraint {name!r} has a {kind} multiplier, addressed by index: give strict_indices, "
                    "not strict_features")
            if kind == "implicit":
                if not isinstance(strict, torch.Tensor):
                    raise OptimlabError(f"the strict violation of {name!r} must be a tensor; got "
                                        f"{_describe(strict)}")
            else:
                s_expected = _expected_shape(name, c, kind, strict_indices, "strict_indices")
                if not isinstance(strict, torch.Tensor) or tuple(strict.shape) != s_expected:
                    raise OptimlabError(
                        f"the strict violation of {name!r} must have the shape of its strict_indices "
                        f"{s_expected}; got {_describe(strict)}"
                    )
        elif strict is not None and (not isinstance(strict, torch.Tensor) or strict.shape != value.shape):
            raise OptimlabError(
                f"the strict violation of {name!r} must be a tensor of the violation's shape "
                f"{tuple(value.shape)} (or give strict_indices for the entries it observes); got "
                f"{_describe(strict)}"
            )
        return Observed(name, c, value, strict, indices, features, strict_indices=strict_indices,
                        strict_features=strict_features, separate_strict=separate)

    # -- parameters and values --------------------------------------------------------------------

    def dual_parameters(self) -> list[nn.Parameter]:
        """The parameters of the multipliers (what the dual optimizer maximises over)."""
        return list(self.parameters())

    def named_dual_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(whose multipliers, parameter) for each dual parameter: a constraint's name, or for the flat
        buffer the names of its groups, ``"a, b"``."""
        named = []
        if self.flat_groups:
            named.append((", ".join(n for n, _ in self.flat_groups), self.dense_multipliers))
        named += [(name, p) for name, c in self._by_name.items() for p in c.parameters()]
        return named

    def multipliers(self) -> dict[str, torch.Tensor]:
        """Current values of the explicit (dense, indexed) multipliers, by constraint name."""
        out = {}
        for name, c in self._by_name.items():
            w = c.multiplier.explicit_weight() if c.multiplier is not None else None
            if w is not None:
                out[name] = w.detach().clone()
        return out

    def penalties(self) -> dict[str, torch.Tensor]:
        """Current penalty coefficients, by constraint name (penalty formulations only)."""
        return {n: c.penalty.clone() for n, c in self._by_name.items() if c.formulation.uses_penalty}

    # -- checkpoints ------------------------------------------------------------------------------

    def signature(self) -> dict[str, list]:
        return {name: c.signature() for name, c in self._by_name.items()}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination.pop(prefix + "dense_multipliers", None)  # each group saves its own view

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        flat = self._parameters.pop("dense_multipliers", None)  # loaded through the groups' views
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
        finally:
            if flat is not None:
                self._parameters["dense_multipliers"] = flat

    def get_extra_state(self) -> dict:
        return {"format": STATE_FORMAT, "constraints": self.signature()}

    def set_extra_state(self, state: dict) -> None:
        self.check_state_dict({"_extra_state": state}, tensors=False)

    def check_state_dict(self, state_dict: Mapping, tensors: bool = True) -> None:
        """Raise :class:`OptimlabError` unless ``state_dict`` is a state of this very problem with valid
        values (inequality multipliers >= 0, everything finite)."""
        extra = state_dict.get("_extra_state") if isinstance(state_dict, Mapping) else None
        if not isinstance(extra, Mapping) or extra.get("format") != STATE_FORMAT:
            raise OptimlabError("not a state of an optimlab constrained Problem (no problem signature in it)")
        saved, mine = dict(extra.get("constraints", {})), self.signature()
        if saved != mine:
            differ = [f"{n}: checkpoint {saved.get(n, 'absent')}, here {mine.get(n, 'absent')}"
                      for n in sorted(set(saved) | set(mine)) if saved.get(n) != mine.get(n)]
            raise OptimlabError(
                "the checkpoint is of a different problem ([kind, shape, formulation, multiplier] per "
                f"constraint): {'; '.join(differ)}"
            )
        if not tensors:
            return
        for key in self.state_dict():
            if key != "_extra_state" and key not in state_dict:
                raise OptimlabError(f"the checkpoint lacks {key!r} of this problem")
        for name, c in self._by_name.items():
            w = c.multiplier.explicit_weight() if c.multiplier is not None else None
            if w is None:
                continue
            t = state_dict[f"constraints.{name}.multiplier.weight"]
            if tuple(t.shape) != tuple(w.shape) or not bool(torch.isfinite(t).all()):
                raise OptimlabError(
                    f"the checkpoint's multiplier of {name!r} is not finite or of another shape")
            if c.inequality and bool((t < 0).any()):
                raise OptimlabError(
                    f"the checkpoint has negative multipliers for the inequality constraint {name!r} "
                    f"(min {t.min().item():.4g}); inequality multipliers must be >= 0"
                )

    def load_state_dict(self, state_dict: Mapping, strict: bool = True, assign: bool = False):
        """Load after checking the signature and the values; nothing changes when it is refused.

        Values are copied into the existing tensors (``assign=True`` is refused: it would replace the
        multipliers that the dual optimizers hold)."""
        if assign:
            raise OptimlabError("Problem.load_state_dict copies values in place; assign=True is not "
                                "supported")
        self.check_state_dict(state_dict)
        return super().load_state_dict(state_dict, strict=strict)


def _expected_shape(name: str, c: Constraint, kind: str, indices, field: str) -> tuple[int, ...]:
    """The shape a violation observed at ``indices`` must have (checking the indices themselves)."""
    if indices is None:
        if kind == "indexed":
            raise OptimlabError(
                f"constraint {name!r} has an indexed multiplier: return Violation(value, {field}=...)")
        return c.shape
    if not (isinstance(indices, torch.Tensor) and indices.dtype == torch.long and indices.dim() == 1):
        raise OptimlabError(
            f"{field} of {name!r} must be a 1-D torch.long tensor of entries of the flattened group; got "
            f"{_describe(indices)}"
        )
    return tuple(indices.shape)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"[:80]
