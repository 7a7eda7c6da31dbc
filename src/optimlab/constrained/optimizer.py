"""The primal-dual optimizer: one ``step(*batch)`` evaluates the problem and moves primal and dual variables.

Schemes (``scheme=``), with theta the primal parameters and lambda the multipliers; "descend"/"ascend"
mean one step of the given ``torch.optim`` optimizers (the dual ones are set to ``maximize=True``):

* ``simultaneous``: descend theta on L(theta_t, lambda_t), ascend lambda with g(theta_t). ONE
  backward pass of L_primal + L_dual, where L_primal = f + terms(lambda.detach(), g) and L_dual =
  sum(lambda * s.detach()) (s = the formulation's dual signal; see ``formulations``); plain
  Lagrangian groups without a proxy enter once as sum(lambda * g), which gives both gradients.
* ``primal_then_dual``: descend theta, then re-evaluate the violations at theta_{t+1} (no gradient)
  and ascend lambda with them.
* ``dual_then_primal``: ascend lambda with g(theta_t), then descend theta on L(theta_t, lambda_{t+1});
  one forward and one backward through the model (the dual backward touches only the multipliers).
* ``extragradient``: an extrapolation step of both from (theta_t, lambda_t), then the update step
  from (theta_t, lambda_t) with the gradients at the extrapolated point. Two forwards and two
  backwards. ``extrapolation_states="kept"`` (the default): the optimizers' states advance at both
  half-steps, which with Adam is ExtraAdam and with SGD ExtraSGD (Gidel et al. 2019, and Cooper's
  ``ExtraAdam``/``ExtraSGD``): the update step's moments, momentum and step count include the
  extrapolation's. ``"restored"``: the states go back to theirs at (theta_t, lambda_t) before the
  update step, so each iteration advances them once, with the extrapolated gradients. Both are the
  extragradient method with plain SGD.
* ``unconstrained``: descend theta on f + the penalty terms; for problems without multipliers.

After every dual step the inequality multipliers are projected onto lambda >= 0, and penalty
updaters of the observed constraints are applied (every ``updater.every`` steps). The step returns a
:class:`StepResult` describing the point where it started. A step whose loss, violations or
Lagrangian is not finite is refused with nothing changed (raised, or reported with
``on_nonfinite="skip"``).
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from optimlab.constrained.diagnostics import KKT, Tolerances, measure
from optimlab.constrained.distributed import Ranks
from optimlab.constrained.distributed import active as distributed_active
from optimlab.constrained.flat import FlatSteps
from optimlab.constrained.lagrangian import Terms, assemble
from optimlab.constrained.multipliers import DenseMultiplier
from optimlab.constrained.problem import Evaluation, Observed, Problem
from optimlab.constrained.rows import elementwise, elementwise_names, step_entries, takes_sparse
from optimlab.errors import OptimlabError

SCHEMES = ("simultaneous", "primal_then_dual", "dual_then_primal", "extragradient", "unconstrained")
EXTRAPOLATION_STATES = ("kept", "restored")
FORMAT = "optimlab.constrained.optimizer/1"
Optimizers = torch.optim.Optimizer | Sequence[torch.optim.Optimizer]


@dataclass
class StepResult:
    """What one step did, described at the point (theta_t, lambda_t) where it started.

    ``step``: steps taken so far (this one included when it was taken). ``loss``: f(theta_t) (None
    for a feasibility problem). ``lagrangian``: the primal Lagrangian f + the formulation terms at
    (theta_t, lambda_t). ``violations``: name -> the (strict) violations observed at theta_t.
    ``multipliers``: name -> lambda_t of the observed entries. ``misc``: passed through from compute.
    ``kkt``: the KKT measures when diagnostics are on; ``converged``: whether they met the
    tolerances. ``skipped``/``reason``: a refused step (nothing changed). All tensors are detached.
    """

    step: int
    loss: torch.Tensor | None
    lagrangian: torch.Tensor | None
    violations: dict[str, torch.Tensor]
    multipliers: dict[str, torch.Tensor]
    misc: dict[str, Any] = field(default_factory=dict)
    kkt: KKT | None = None
    converged: bool | None = None
    skipped: bool = False
    reason: str = ""


def _as_list(opts: Optimizers | None, side: str) -> list[torch.optim.Optimizer]:
    if opts is None:
        return []
    seq = [opts] if isinstance(opts, torch.optim.Optimizer) else list(opts)
    for o in seq:
        if not isinstance(o, torch.optim.Optimizer):
            raise OptimlabError(f"{side} optimizers must be torch.optim.Optimizer instances; got "
                                f"{type(o).__name__}")
    return seq


def _params(opts: Iterable[torch.optim.Optimizer]) -> list[torch.Tensor]:
    return [p for o in opts for g in o.param_groups for p in g["params"]]


class _Snapshot:
    """Parameters and states of some optimizers, to come back to (extragradient, refused steps)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        self.items = []
        for o in optimizers:
            params = [p for g in o.param_groups for p in g["params"]]
            values = [p.detach().clone() for p in params]
            state = {p: {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                         for k, v in s.items()} for p, s in o.state.items()}
            self.items.append((o, params, values, state))

    @torch.no_grad()
    def restore(self, states: bool = True) -> None:
        for o, params, values, state in self.items:
            for p, v in zip(params, values, strict=True):
                p.copy_(v)
            if states:
                o.state = defaultdict(dict, state)


class ConstrainedOptimizer:
    """Primal-dual optimization of a :class:`Problem` with any ``torch.optim`` optimizers.

    ``primal``: optimizer(s) of the model's parameters. ``dual``: optimizer(s) of
    ``problem.dual_parameters()``, or a function ``params -> optimizer`` (e.g.
    ``functools.partial(torch.optim.SGD, lr=1e-2)``); None when the problem has no multipliers. Dual
    optimizers must have a ``maximize`` option and are set to ``maximize=True`` here. ``scheme``:
    one of ``SCHEMES`` (see the module docstring). ``diagnostics``: compute :class:`KKT` measures
    every step (implied by ``tolerances``, which also sets ``StepResult.converged``).
    ``check_finite``: refuse steps with non-finite values (one device sync per step);
    ``on_nonfinite``: ``"raise"`` an :class:`OptimlabError` or ``"skip"`` (return a result with
    ``skipped=True``). ``extrapolation_states``: ``"kept"`` or ``"restored"``, the extragradient
    scheme's handling of the optimizers' states (module docstring). ``flat_multipliers`` (default
    True): when one parameter group of one dual optimizer holds the dense multipliers of two groups or
    more, and the optimizer is elementwise (``rows.ELEMENTWISE``: SGD, Adam, AdamW, ...) without state
    yet, they are moved into one flat parameter, ``problem.dense_multipliers`` (each group's
    ``multiplier.weight`` a view of its slice), so that the dual step is one step of one tensor and
    the projection one clamp. Each group is still stepped as its own parameter would be (``flat``):
    the results are the same. False keeps one parameter per group.
    """

    def __init__(
        self,
        problem: Problem,
        primal: Optimizers,
        dual: Optimizers | Callable[[list], torch.optim.Optimizer] | None = None,
        scheme: str = "simultaneous",
        *,
        diagnostics: bool = False,
        tolerances: Tolerances | Mapping[str, float] | None = None,
        check_finite: bool = True,
        on_nonfinite: str = "raise",
        extrapolation_states: str = "kept",
        flat_multipliers: bool = True,
        distributed: bool | str = "auto",
    ):
        if not isinstance(problem, Problem):
            raise OptimlabError(
                f"problem must be an optimlab.constrained.Problem; got {type(problem).__name__}")
        if scheme not in SCHEMES:
            raise OptimlabError(f"unknown scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
        if on_nonfinite not in ("raise", "skip"):
            raise OptimlabError(f"on_nonfinite must be 'raise' or 'skip'; got {on_nonfinite!r}")
        if extrapolation_states not in EXTRAPOLATION_STATES:
            raise OptimlabError(f"extrapolation_states must be one of {', '.join(EXTRAPOLATION_STATES)} "
                                f"(kept: ExtraAdam's); got {extrapolation_states!r}")
        self.extrapolation_states = extrapolation_states
        self.problem, self.scheme = problem, scheme
        if dual is not None and callable(dual) and not isinstance(dual, (torch.optim.Optimizer, Sequence)):
            dual = dual(problem.dual_parameters())
        self.primal_optimizers = _as_list(primal, "primal")
        self.dual_optimizers = _as_list(dual, "dual")
        if not self.primal_optimizers:
            raise OptimlabError("give at least one primal optimizer (of the model's parameters)")
        self._check_parameters()
        for o in self.dual_optimizers:
            set_maximize(o)
        if not isinstance(flat_multipliers, bool):
            raise OptimlabError(f"flat_multipliers must be True or False; got {flat_multipliers!r}")
        if flat_multipliers and not problem.flat_groups:
            self._store_flat()
        if isinstance(tolerances, Mapping):
            tolerances = Tolerances(**tolerances)
        self.tolerances = tolerances
        self.diagnostics = diagnostics or tolerances is not None
        self.check_finite, self.on_nonfinite = check_finite, on_nonfinite
        self.steps = 0
        self._primal_params = _params(self.primal_optimizers)
        active = distributed_active(distributed)
        self._ranks = Ranks(_device(problem, self._primal_params)) if active else None
        self._scale = self._ranks.world if self._ranks is not None else 1
        self._names = list(problem.constraints)
        self._flat = FlatSteps(problem, self.dual_optimizers) if problem.flat_groups else None
        # sparse and lazy tables: by optimizer, (weight, lazy, projected on the observed rows only)
        self._tables = self._check_indexed_steps()
        by_rows = {id(w) for ws in self._tables.values() for w, _, rows in ws if rows}
        self._nonneg = [c.multiplier.explicit_weight() for c in problem.constraints.values()
                        if c.inequality and c.multiplier is not None and c.multiplier.flat is None
                        and c.multiplier.explicit_weight() is not None
                        and id(c.multiplier.explicit_weight()) not in by_rows]
        if self._flat is not None and problem.flat_inequalities:
            self._nonneg.append(problem.dense_multipliers[:problem.flat_inequalities])
        self._updaters = any(c.formulation.uses_penalty and c.updater is not None
                             for c in problem.constraints.values())
        self._step = getattr(self, "_" + scheme)

    def _check_parameters(self) -> None:
        names = {id(p): name for name, p in self.problem.named_dual_parameters()}
        dual_ids = {id(p) for p in _params(self.dual_optimizers)}
        in_primal = sorted({names[id(p)] for p in _params(self.primal_optimizers) if id(p) in names})
        if in_primal:
            raise OptimlabError(
                f"a primal optimizer holds the multipliers of {', '.join(in_primal)}: they would be "
                "minimised; give the primal optimizers the model's parameters only"
            )
        strangers = dual_ids - set(names)
        if strangers:
            raise OptimlabError(
                f"a dual optimizer holds {len(strangers)} tensor(s) that are not multipliers of this "
                "problem (the model's parameters?); build it on problem.dual_parameters()"
            )
        missing = sorted({n for i, n in names.items() if i not in dual_ids})
        if self.scheme == "unconstrained":  # (a dual optimizer here holds strangers: refused above)
            if names:
                raise OptimlabError(
                    "the unconstrained scheme moves no multipliers, but constraints "
                    f"{', '.join(sorted(set(names.values())))} have some; use scheme='simultaneous' "
                    "(or another primal-dual scheme) with a dual optimizer, or the quadratic_penalty "
                    "formulation"
                )
        elif missing:
            raise OptimlabError(
                f"the multipliers of {', '.join(missing)} are in no dual optimizer; give dual="
                "torch.optim.SGD(problem.dual_parameters(), lr=...) (or another optimizer)"
            )

    def _store_flat(self) -> None:
        """Store the dense multipliers in one buffer (``Problem.store_flat``) when one parameter group
        of one elementwise dual optimizer, without state yet, holds them all (two groups or more)."""
        dense = {id(c.multiplier.weight): name for name, c in self.problem.constraints.items()
                 if type(c.multiplier) is DenseMultiplier}
        if len(dense) < 2:
            return
        for o in self.dual_optimizers:
            for g in o.param_groups:
                mine = [p for p in g["params"] if id(p) in dense]
                if not mine:
                    continue
                if (len(mine) != len(dense) or not elementwise(o) or any(p in o.state for p in mine)
                        or len({(p.dtype, p.device) for p in mine}) > 1):
                    return
                first = next(i for i, p in enumerate(g["params"]) if id(p) in dense)
                flat = self.problem.store_flat([dense[id(p)] for p in mine])
                rest = [p for p in g["params"] if id(p) not in dense]
                g["params"] = [*rest[:first], flat, *rest[first:]]
                return

    # -- the step ---------------------------------------------------------------------------------

    def step(self, *args: Any, **kwargs: Any) -> StepResult:
        """Evaluate ``problem.compute(*args, **kwargs)`` and update primal and dual variables."""
        return self._step(args, kwargs)

    def zero_grad(self) -> None:
        for o in self.primal_optimizers:
            o.zero_grad(set_to_none=True)
        for o in self.dual_optimizers:
            o.zero_grad(set_to_none=True)

    def _evaluate(self, args, kwargs) -> Evaluation:
        ev = self.problem.evaluate(args, kwargs)
        self._shared(ev.observed)
        return ev

    def _shared(self, observed: list[Observed]) -> list[Observed]:
        """Distributed: check that every rank observed the same groups, and give the groups that need
        it every rank's violations (``distributed``)."""
        if self._ranks is not None:
            self._ranks.share(observed, self._names)
        return observed

    def _finite(self, total: torch.Tensor, observed: list[Observed]) -> bool:
        """Whether the step may go on (its Lagrangian finite, on every rank when distributed)."""
        ok = not self.check_finite or math.isfinite(total.item())  # .item(): cheaper than isfinite
        return ok if self._ranks is None else not self._ranks.any(not ok)

    def _backward(self, total: torch.Tensor) -> None:
        if not total.requires_grad:
            raise OptimlabError(
                "the loss and the violations do not depend on any parameter (computed under "
                "torch.no_grad, or detached?); nothing to differentiate"
            )
        total.backward()

    def _primal_step(self) -> None:
        for o in self.primal_optimizers:
            o.step()

    def _check_indexed_steps(self) -> dict[int, list[tuple[torch.Tensor, bool, bool]]]:
        """Check the optimizer of each sparse or lazy indexed multiplier. Returns, by optimizer, its
        tables: (weight, whether lazy, whether only the observed rows can move, so that only they need
        the projection onto >= 0: lazy, and sparse but for SGD with momentum)."""
        tables: dict[int, list[tuple[torch.Tensor, bool, bool]]] = {}
        for name, c in self.problem.constraints.items():
            step = getattr(c.multiplier, "dual_step", "dense")
            if step == "dense":
                continue
            w = c.multiplier.weight
            o = next((o for o in self.dual_optimizers for g in o.param_groups
                      if any(p is w for p in g["params"])), None)
            if o is None:
                continue
            kind = type(o).__name__
            if step == "sparse" and not takes_sparse(o):
                raise OptimlabError(
                    f"the multiplier of {name!r} gives sparse gradients (dual_step='sparse'), which {kind} "
                    "does not take (or not with weight decay); use torch.optim.SGD, SparseAdam, Adagrad "
                    f"or optimlab's NuPI, or IndexedMultiplier(..., dual_step='lazy') to step {kind} on "
                    "the observed entries"
                )
            if step == "lazy" and not elementwise(o):
                raise OptimlabError(
                    f"the multiplier of {name!r} is stepped lazily on its observed entries "
                    f"(dual_step='lazy'), which needs an elementwise optimizer ({elementwise_names()}); "
                    f"{kind} is not one of them (use dual_step='sparse' or 'dense' with it)"
                )
            momentum = isinstance(o, torch.optim.SGD) and any(g["momentum"] for g in o.param_groups)
            rows_only = c.inequality and (step == "lazy" or not momentum)
            tables.setdefault(id(o), []).append((w, step == "lazy", rows_only))
        return tables

    def _observed_rows(self, o: torch.optim.Optimizer) -> tuple[dict, list]:
        """The observed entries of ``o``'s lazy tables (``rows.step_entries``), and (weight, rows) of
        its tables to project on their observed rows."""
        lazy, project = {}, []
        for w, is_lazy, rows_only in self._tables.get(id(o), ()):
            g = w.grad
            if g is None:
                continue
            if g.is_sparse:
                g = g.coalesce()
                rows, values = g.indices()[0], g.values()
            else:  # observed whole
                rows, values = torch.arange(w.shape[0], device=w.device), g
            if is_lazy:
                lazy[w] = (rows, values, None)
            if rows_only:
                project.append((w, rows))
        return lazy, project

    @torch.no_grad()
    def _dual_step(self, observed: list[Observed]) -> None:
        if self._ranks is not None:
            self._ranks.average_grads(_params(self.dual_optimizers))
        for o in self.dual_optimizers:
            lazy, project = self._observed_rows(o) if self._tables else ({}, ())
            if self._flat is not None and o is self._flat.optimizer:
                self._flat.step(observed, lazy)
            elif lazy:
                step_entries(o, lazy)
            else:
                o.step()
            for w, rows in project:
                w[rows] = w[rows].clamp_min(0)
        if self._nonneg:
            torch._foreach_clamp_min_(self._nonneg, 0.0)

    def _after(self, observed: list[Observed]) -> None:
        """Count the step; apply the penalty updaters due at it (with every rank's violations)."""
        self.steps += 1
        if self._updaters:
            for ob in observed:
                c = ob.constraint
                u = c.updater if c.formulation.uses_penalty else None
                if u is not None and self.steps % u.every == 0:
                    value, rows = ob.true_value, ob.dual_indices  # observed whole: shared already
                    if self._ranks is not None and rows is not None:
                        rows, value = self._ranks.gather(rows, value)
                    u.update_(c.penalty, c.penalty_init, value, c.inequality, rows)

    def _kkt(self, ev: Evaluation, terms: Terms) -> KKT | None:
        if not self.diagnostics:
            return None
        grads = [p.grad for p in self._primal_params if p.grad is not None]
        return measure(ev.observed, terms.multipliers, grads, self._primal_params[0].device)

    def _result(self, ev: Evaluation, terms: Terms, kkt: KKT | None) -> StepResult:
        converged = self.tolerances.met(kkt) if (kkt is not None and self.tolerances is not None) else None
        return StepResult(self.steps, None if ev.loss is None else ev.loss.detach(), terms.primal.detach(),
                          terms.violations, terms.multipliers, ev.misc, kkt, converged)

    def _simultaneous(self, args, kwargs) -> StepResult:
        self.zero_grad()
        ev = self._evaluate(args, kwargs)
        terms = assemble(ev.loss, ev.observed, fuse=True, scale=self._scale)
        total = terms.total
        if not self._finite(total, ev.observed):
            return self._refuse(ev, terms)
        self._backward(total)  # the one backward pass: primal and dual gradients
        kkt = self._kkt(ev, terms)
        self._primal_step()
        self._dual_step(ev.observed)
        self._after(ev.observed)
        return self._result(ev, terms, kkt)

    def _unconstrained(self, args, kwargs) -> StepResult:
        self.zero_grad()
        ev = self._evaluate(args, kwargs)
        terms = assemble(ev.loss, ev.observed, fuse=False, with_dual=False, scale=self._scale)
        if not self._finite(terms.primal, ev.observed):
            return self._refuse(ev, terms)
        self._backward(terms.primal)
        kkt = self._kkt(ev, terms)
        self._primal_step()
        self._after(ev.observed)
        return self._result(ev, terms, kkt)

    def _primal_then_dual(self, args, kwargs) -> StepResult:
        self.zero_grad()
        ev = self._evaluate(args, kwargs)
        terms = assemble(ev.loss, ev.observed, fuse=False, with_dual=False, scale=self._scale)
        if not self._finite(terms.primal, ev.observed):
            return self._refuse(ev, terms)
        self._backward(terms.primal)
        kkt = self._kkt(ev, terms)
        snapshot = _Snapshot(self.primal_optimizers) if self.check_finite else None
        self._primal_step()
        new = self._shared(self.problem.evaluate_violations(args, kwargs))
        dual = assemble(None, new, fuse=False, scale=self._scale).dual if any(
            ob.constraint.multiplier is not None and ob.dual for ob in new) else None
        if dual is not None:
            if not self._finite(dual, new):  # a non-finite violation makes lambda * g non-finite
                snapshot.restore()
                return self._refuse(Evaluation(ev.loss, new, ev.misc), terms, "at the new point ")
            dual.backward()
        self._dual_step(new)
        self._after(new)
        return self._result(ev, terms, kkt)

    def _dual_then_primal(self, args, kwargs) -> StepResult:
        self.zero_grad()
        ev = self._evaluate(args, kwargs)
        terms = assemble(ev.loss, ev.observed, fuse=False, scale=self._scale)
        if not self._finite(terms.total, ev.observed):
            return self._refuse(ev, terms)
        if terms.dual is not None:
            terms.dual.backward()  # only the multipliers' graph: the violations are detached in it
        self._dual_step(ev.observed)
        primal = assemble(ev.loss, ev.observed, fuse=False, with_dual=False, scale=self._scale).primal
        self._backward(primal)
        kkt = self._kkt(ev, terms)
        self._primal_step()
        self._after(ev.observed)
        return self._result(ev, terms, kkt)

    def _extragradient(self, args, kwargs) -> StepResult:
        self.zero_grad()
        ev = self._evaluate(args, kwargs)
        terms = assemble(ev.loss, ev.observed, fuse=True, scale=self._scale)
        total = terms.total
        if not self._finite(total, ev.observed):
            return self._refuse(ev, terms)
        snapshot = _Snapshot(self.primal_optimizers + self.dual_optimizers)
        counts = self._flat.counts.copy() if self._flat is not None else None
        self._backward(total)
        kkt = self._kkt(ev, terms)
        self._primal_step()
        self._dual_step(ev.observed)  # now at the extrapolated point
        self.zero_grad()
        ev2 = self._evaluate(args, kwargs)
        terms2 = assemble(ev2.loss, ev2.observed, fuse=True, scale=self._scale)
        total2 = terms2.total
        if not self._finite(total2, ev2.observed):
            snapshot.restore()
            if counts is not None:
                self._flat.counts = counts
            return self._refuse(ev2, terms2, "at the extrapolated point ")
        self._backward(total2)
        # back to (theta_t, lambda_t); the optimizers' states too unless they are kept (ExtraAdam)
        restored = self.extrapolation_states == "restored"
        snapshot.restore(states=restored)
        if restored and counts is not None:
            self._flat.counts = counts
        self._primal_step()
        self._dual_step(ev2.observed)
        self._after(ev2.observed)
        return self._result(ev, terms, kkt)

    def _refuse(self, ev: Evaluation, terms: Terms, where: str = "") -> StepResult:
        self.zero_grad()
        bad = []
        if ev.loss is not None and not bool(torch.isfinite(ev.loss.detach())):
            bad.append("loss")
        for ob in ev.observed:
            if not bool(torch.isfinite(ob.value.detach()).all()):
                bad.append(f"violation of {ob.name!r}")
            if ob.strict is not None and not bool(torch.isfinite(ob.strict).all()):
                bad.append(f"strict violation of {ob.name!r}")
            lam = terms.multipliers.get(ob.name)
            if lam is not None and not bool(torch.isfinite(lam).all()):
                bad.append(f"multiplier of {ob.name!r}")
        what = ", ".join(bad) or "Lagrangian (overflow)"
        reason = (f"step {self.steps + 1} refused {where}and nothing changed: non-finite {what}. "
                  "Lower the learning rates, or look at the data of this batch")
        if self.on_nonfinite == "raise":
            raise OptimlabError(reason)
        return StepResult(self.steps, None if ev.loss is None else ev.loss.detach(), None,
                          {ob.name: ob.true_value for ob in ev.observed}, terms.multipliers, ev.misc,
                          None, None, True, reason)

    # -- checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything but the model: the problem (multipliers, penalties), every optimizer, the step
        count. Tensors and plain values only (loads with ``torch.load(..., weights_only=True)``)."""
        state = {"format": FORMAT, "scheme": self.scheme, "steps": self.steps,
                 "problem": self.problem.state_dict(),
                 "primal": [o.state_dict() for o in self.primal_optimizers],
                 "dual": [o.state_dict() for o in self.dual_optimizers]}
        if self._flat is not None:
            state["flat_counts"] = self._flat.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore a :meth:`state_dict`; everything is checked first, and a refused one changes nothing."""
        if not isinstance(state_dict, Mapping) or state_dict.get("format") != FORMAT:
            raise OptimlabError("not a state of an optimlab ConstrainedOptimizer (format missing or other)")
        if state_dict["scheme"] != self.scheme:
            raise OptimlabError(f"the checkpoint was made with scheme {state_dict['scheme']!r}; this "
                                f"optimizer uses {self.scheme!r}")
        self.problem.check_state_dict(state_dict["problem"])
        counts = state_dict.get("flat_counts")
        if self._flat is not None and self._flat.optimizer is not None:  # maybe one parameter per group
            i = next(i for i, o in enumerate(self.dual_optimizers) if o is self._flat.optimizer)
            saved = state_dict["dual"]
            converted = self._flat.convert(saved[i], self._flat.optimizer) if i < len(saved) else None
            if converted is not None:
                state_dict = {**state_dict, "dual": [*saved[:i], converted[0], *saved[i + 1:]]}
                counts = converted[1]
        for side, opts in (("primal", self.primal_optimizers), ("dual", self.dual_optimizers)):
            saved = state_dict[side]
            if len(saved) != len(opts):
                raise OptimlabError(
                    f"the checkpoint has {len(saved)} {side} optimizer(s); this one has {len(opts)}")
            for i, (o, s) in enumerate(zip(opts, saved, strict=True)):
                mine = [len(g["params"]) for g in o.param_groups]
                theirs = [len(g["params"]) for g in s["param_groups"]]
                if mine != theirs:
                    raise OptimlabError(f"{side} optimizer {i} of the checkpoint has parameter groups of "
                                        f"sizes {theirs}; this one {mine}: a different problem or model")
        self.problem.load_state_dict(state_dict["problem"])
        for o, s in zip(self.primal_optimizers, state_dict["primal"], strict=True):
            o.load_state_dict(s)
        for o, s in zip(self.dual_optimizers, state_dict["dual"], strict=True):
            o.load_state_dict(s)
            set_maximize(o)
        if self._flat is not None:
            self._flat.load_counts(counts)
        self.steps = int(state_dict["steps"])


def _device(problem: Problem, primal: list[torch.Tensor]) -> torch.device:
    """Where the collectives' small tensors live: the problem's device, else the model's."""
    for p in [*problem.parameters(), *primal]:
        return p.device
    return torch.device("cpu")


def set_maximize(o: torch.optim.Optimizer) -> None:
    """Make a dual optimizer ascend (``maximize=True`` in every group), or say why it cannot."""
    if "maximize" not in o.defaults or any("maximize" not in g for g in o.param_groups):
        raise OptimlabError(
            f"the dual optimizer {type(o).__name__} has no 'maximize' option, so it cannot ascend on "
            "the multipliers; use one that has (torch.optim.SGD, Adam, AdamW, RMSprop, Adagrad, ..., "
            "or optimlab.constrained.NuPI)"
        )
    o.defaults["maximize"] = True
    for g in o.param_groups:
        g["maximize"] = True

