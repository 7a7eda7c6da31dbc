"""Data-parallel constrained training (``torch.distributed``): what the ranks must agree on.

Each rank evaluates its shard of the global batch, with the model wrapped in
``DistributedDataParallel``, which averages the model's gradients over the ranks. For the result to
be that of one process on the global batch, the average over the ranks of each rank's Lagrangian
must be the global Lagrangian. So, with W ranks:

* a group observed whole (no ``indices``/``features``) is a mean over the rank's shard, or the same
  on every rank (a norm of the parameters): it enters as it is, and its dual gradients are averaged;
* a group observed by entries (``indices``, or an implicit multiplier's ``features``) is a sum over
  the entries observed, each by the rank that holds its sample: its terms enter multiplied by W, and
  the averaged dual gradient of an entry is then its own g_i. This holds whatever the shard sizes (a
  global batch that W does not divide): each entry counts once;
* the dual gradients are averaged over the ranks before the dual step (one collective for the dense
  ones; sparse ones are gathered), so every rank takes the same dual step;
* a group observed whole in a penalty formulation (augmented Lagrangian, quadratic penalty), whose
  terms are not linear in the violation, is replaced by its mean over the ranks before the terms are
  built (a differentiable all-reduce: each rank's gradient reaches its own part);
* a step is refused on every rank when it is not finite on one (``check_finite``);
* the penalty updaters see the violations of all ranks: a group observed whole, their mean; entries,
  all of them;
* every rank must observe the same groups at a step (the entries may differ); a step where they do
  not is refused with an error on every rank.

The loss itself is the user's: a mean over the rank's shard, as in any DDP training (with shards of
unequal sizes DDP weighs every rank equally, and so does this module for groups observed whole).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from optimlab.errors import OptimlabError


def active(mode: bool | str) -> bool:
    """Whether to act for the ranks: ``"auto"`` when a process group of 2 ranks or more is initialized."""
    if not (mode is True or mode is False or mode == "auto"):
        raise OptimlabError(f"distributed must be 'auto', True or False; got {mode!r}")
    up = dist.is_available() and dist.is_initialized()
    if mode is True and not up:
        raise OptimlabError("distributed=True needs torch.distributed.init_process_group(...) first")
    return bool(mode) and up and dist.get_world_size() > 1


class Ranks:
    """The collectives of one step, on the default process group, with tensors on ``device`` (the
    problem's: CPU for gloo, CUDA for NCCL)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.world = dist.get_world_size()
        self.device = torch.device(device)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank."""
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return t.item() > 0

    def share(self, observed: list, names: Sequence[str]) -> None:
        """Check that every rank observed the same groups (and the same of them for the dual update),
        then replace the violations of the groups observed whole in a penalty formulation by their
        mean over the ranks (differentiably: the gradient reaches each rank's own part), in one
        collective: their terms are not linear in the violation, so averaging gradients would not do."""
        order = {n: i for i, n in enumerate(names)}
        flags = torch.zeros(2 * len(names), dtype=torch.float64, device=self.device)
        for ob in observed:
            flags[order[ob.name]] = 1
            flags[len(names) + order[ob.name]] = float(ob.dual)
        dist.all_reduce(flags)
        labels = [*names, *(f"{n} (dual update)" for n in names)]
        differ = [labels[i] for i, c in enumerate(flags.tolist()) if c not in (0.0, float(self.world))]
        if differ:
            raise OptimlabError(
                f"the ranks observed different constraint groups at this step ({', '.join(differ)} on some "
                "ranks only); under distributed training every rank must observe the same groups (their "
                "entries may differ)"
            )
        whole = sorted((ob for ob in observed if ob.constraint.formulation.uses_penalty
                        and ob.indices is None and ob.features is None and not ob.separate_strict),
                       key=lambda ob: order[ob.name])
        if not whole:
            return
        parts = [ob.value.reshape(-1) for ob in whole]
        parts += [ob.strict.detach().reshape(-1).to(ob.value.dtype) for ob in whole if ob.strict is not None]
        total = _SumOverRanks.apply(torch.cat(parts)) / self.world
        start = 0
        for ob in whole:
            n = ob.value.numel()
            ob.value = total[start:start + n].view_as(ob.value)
            start += n
        for ob in whole:
            if ob.strict is not None:
                n = ob.strict.numel()
                ob.strict = total[start:start + n].detach().view_as(ob.strict).to(ob.strict.dtype)
                start += n

    def average_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Average the gradients of ``params`` over the ranks: dense ones in one collective, sparse
        ones (COO, 1 sparse dimension) gathered from every rank."""
        dense = [p for p in params if p.grad is not None and not p.grad.is_sparse]
        if dense:
            flat = torch.cat([p.grad.reshape(-1) for p in dense])
            dist.all_reduce(flat)
            flat.div_(self.world)
            start = 0
            for p in dense:
                n = p.grad.numel()
                p.grad.copy_(flat[start:start + n].view_as(p.grad))
                start += n
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                g = p.grad.coalesce()
                rows, values = self.gather(g.indices()[0], g.values())
                p.grad = torch.sparse_coo_tensor(rows[None], values / self.world, g.shape,
                                                 check_invariants=False)

    def gather(self, rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's (rows, values), concatenated (rank order)."""
        count = torch.tensor([rows.numel()], dtype=torch.long, device=rows.device)
        counts = [torch.zeros_like(count) for _ in range(self.world)]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
        most = max(sizes)
        pad_r = torch.zeros(most, dtype=rows.dtype, device=rows.device)
        pad_v = torch.zeros((most, *values.shape[1:]), dtype=values.dtype, device=values.device)
        pad_r[:rows.numel()], pad_v[:values.shape[0]] = rows, values
        all_r = [torch.empty_like(pad_r) for _ in range(self.world)]
        all_v = [torch.empty_like(pad_v) for _ in range(self.world)]
        dist.all_gather(all_r, pad_r)
        dist.all_gather(all_v, pad_v)
        return (torch.cat([r[:n] for r, n in zip(all_r, sizes, strict=True)]),
                torch.cat([v[:n] for v, n in zip(all_v, sizes, strict=True)]))


class _SumOverRanks(torch.autograd.Function):
    """y = the sum over the ranks of x (every rank gets it); backward the sum over the ranks of the
    gradients of y, so that each rank's x receives the gradient of every rank's use of y."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()
        dist.all_reduce(g)
        return g
