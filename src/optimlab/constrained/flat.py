"""The dual step on a problem's flat buffer of dense multipliers, each group stepped as its own parameter.

With every group observed at every step (the common case) the step is one ``optimizer.step()`` on the
buffer: for an elementwise optimizer that is the same as one step per group. When some groups are
not observed at a step (or do not contribute to the dual update), stepping the whole buffer would
move them (momentum, weight decay) and advance their state; instead only the observed groups'
entries are stepped (``rows.step_entries``), and groups whose step counts differ (Adam's bias
correction) are stepped in one call per count. So each group's multipliers, state and step count
are those it would have as its own parameter.

Checkpoints of the layout with one parameter per group (before the buffer) are converted on loading.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch

from optimlab.constrained.rows import Entries, elementwise, elementwise_names, stateless, step_entries
from optimlab.errors import OptimlabError


class FlatSteps:
    """The dual steps of ``problem.dense_multipliers`` by the dual optimizer that holds it.

    ``counts[k]``: the dual steps group k (``problem.flat_groups[k]``) has taken (not kept for a
    stateless optimizer, SGD without momentum or weight decay, which has no step count)."""

    def __init__(self, problem, dual_optimizers: Sequence[torch.optim.Optimizer]):
        self.problem, self.flat = problem, problem.dense_multipliers
        holders = [o for o in dual_optimizers
                   if any(p is self.flat for g in o.param_groups for p in g["params"])]
        self.optimizer = holders[0] if holders else None
        if self.optimizer is not None and not elementwise(self.optimizer):
            name = type(self.optimizer).__name__
            raise OptimlabError(
                f"the dual optimizer {name} holds the problem's flat buffer of dense multipliers (stored "
                "there by an earlier ConstrainedOptimizer), which optimlab steps group by group with "
                f"elementwise optimizers only ({elementwise_names()}); build a fresh Problem for {name}"
            )
        self.index = {name: k for k, (name, _) in enumerate(problem.flat_groups)}
        self.counts = [0] * len(self.index)
        self.stateless = self.optimizer is not None and stateless(self.optimizer)
        self._rows: dict[tuple[int, ...], torch.Tensor] = {}
        self._synced = True  # the buffer's own step count is every group's

    def step(self, observed, lazy: Entries | None = None) -> None:
        """The optimizer's step, ``lazy``: entries of its other parameters to step alone (see
        ``rows.step_entries``)."""
        o, flat = self.optimizer, self.flat
        lazy = lazy or {}
        if self.stateless:  # a zero gradient moves nothing, and there is no state to keep apart
            step_entries(o, lazy)
            return
        stepped = sorted({self.index[ob.name] for ob in observed if ob.dual and ob.name in self.index})
        for k in stepped:
            self.counts[k] += 1
        counts = [self.counts[k] - 1 for k in stepped]  # before this step
        if flat.grad is None:
            step_entries(o, lazy)
            return
        if len(stepped) == len(self.counts) and min(counts) == max(counts):
            if not self._synced:
                self._set_step(counts[0])
                self._synced = True
            step_entries(o, lazy)
            return
        self._synced = False
        by_count: dict[int, list[int]] = defaultdict(list)
        for k, c in zip(stepped, counts, strict=True):
            by_count[c].append(k)
        others = [p for g in o.param_groups for p in g["params"] if p is not flat and p.grad is not None]
        if not by_count:  # a gradient reached the buffer, but no group contributes to the dual update
            flat.grad = None
            step_entries(o, lazy)
            return
        hidden = [(p, p.grad) for p in others]
        try:
            for i, (count, ks) in enumerate(by_count.items()):
                rows = self._rows_of(tuple(ks))
                step_entries(o, {flat: (rows, flat.grad[rows], count), **(lazy if i == 0 else {})})
                for p in others:  # the other parameters step once, with the first call
                    p.grad = None
        finally:
            for p, g in hidden:
                p.grad = g

    def _rows_of(self, ks: tuple[int, ...]) -> torch.Tensor:
        rows = self._rows.get(ks)
        if rows is None:
            spans = [self.problem.flat_groups[k][1] for k in ks]
            rows = torch.cat([torch.arange(s.start, s.stop) for s in spans]).to(self.flat.device)
            self._rows[ks] = rows
        return rows

    def _set_step(self, count: int) -> None:
        state = self.optimizer.state.get(self.flat)
        if state and "step" in state:
            v = state["step"]
            state["step"] = torch.full_like(v, count) if isinstance(v, torch.Tensor) else count

    # -- checkpoints --------------------------------------------------------------------------------

    def state_dict(self) -> list[int]:
        return list(self.counts)

    def load_counts(self, counts: Sequence[int] | None) -> None:
        if counts is None:  # a checkpoint from before the counts: every group took the buffer's steps
            state = self.optimizer.state.get(self.flat) if self.optimizer is not None else None
            step = state.get("step", 0) if state else 0
            counts = [int(step)] * len(self.counts)
        if len(counts) != len(self.counts):
            raise OptimlabError(f"the checkpoint has step counts of {len(counts)} flat multiplier groups; "
                                f"this problem has {len(self.counts)}")
        self.counts = [int(c) for c in counts]
        self._synced = len(set(self.counts)) <= 1

    def convert(self, saved: Mapping, current: torch.optim.Optimizer) -> tuple[dict, list[int]] | None:
        """A state dict of ``current`` (the optimizer holding the buffer) from ``saved``, a state dict
        of the same optimizer over one parameter per group (the layout before the buffer), with the
        groups' step counts; None when ``saved`` is not of that layout."""
        params = [p for g in current.param_groups for p in g["params"]]
        if len(current.param_groups) != 1 or len(saved.get("param_groups", ())) != 1:
            return None
        old: list[tuple[str, object]] = []  # the parameters in the old order
        for name, c in self.problem.constraints.items():
            if name in self.index:
                old.append(("flat", name))
            else:
                old += [("param", p) for p in c.parameters()]
        saved_ids = saved["param_groups"][0]["params"]
        if len(saved_ids) != len(old) or len(params) != len(old) - len(self.index) + 1:
            return None
        states = {name_or_p if kind == "flat" else id(name_or_p): saved["state"].get(i)
                  for (kind, name_or_p), i in zip(old, saved_ids, strict=True)}
        new_state, counts = {}, []
        for j, p in enumerate(params):
            if p is not self.flat:
                if states.get(id(p)) is not None:
                    new_state[j] = states[id(p)]
                continue
            per_group = [states.get(name) for name, _ in self.problem.flat_groups]
            keys = {k for s in per_group if s for k in s if k != "step"}
            flat_state = {}
            for key in sorted(keys):
                parts = []
                for (_, span), s in zip(self.problem.flat_groups, per_group, strict=True):
                    size = span.stop - span.start
                    v = s.get(key) if s else None
                    parts.append(torch.zeros(size, dtype=self.flat.dtype) if v is None else
                                 torch.as_tensor(v).reshape(-1).to(self.flat.dtype))
                flat_state[key] = torch.cat(parts)
            counts = [int(s["step"]) if s and "step" in s else 0 for s in per_group]
            steps = [s["step"] for s in per_group if s and "step" in s]
            if steps:
                flat_state["step"] = steps[0].clone() if isinstance(steps[0], torch.Tensor) else steps[0]
            if flat_state:
                new_state[j] = flat_state
        group = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
        group["params"] = list(range(len(params)))
        return {"state": new_state, "param_groups": [group]}, counts
