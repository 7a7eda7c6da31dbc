"""Distributed data parallel done by the optimizer (gloo, 2 and 3 processes on the CPU) gives the
single-process run on the same global batches.

A small MLP, wrapped in ``DistributedDataParallel``; each rank computes its shard of every global
batch (``idx.chunk(world)``). Constraint groups:

* ``norm``: the squared norm of the parameters <= 5 (the same on every rank; dense multiplier);
* ``mean``: the batch's mean loss <= 1.0 (observed whole: written as the shard's sum over the
  global batch size times the world size, which is the global mean after DDP's average whatever the
  shard sizes), augmented Lagrangian with a multiplicative penalty updater;
* ``sample``: the loss of each training sample <= 0.8 (sampled: an indexed multiplier observed at the
  shard's samples), dense, or lazy under Adam.

The user writes the violations as in one process; the optimizer scales the sampled terms by the
world size, averages the dual gradients (the lazy table's sparse ones gathered), agrees on refused
steps and gives the penalty updater every rank's violations. After 16 steps the parameters, the
multipliers and the penalty equal the single-process run's (rtol 1e-5; only the order of the
float32 sums differs) and are bitwise identical on every rank. With 3 ranks the global batch of 8 is
split 3 + 3 + 2: the sampled constraints stay exact. A NaN in one rank's violations at one step makes
every rank skip it (as one process skips it). The controls: without the optimizer's handling
(``distributed=False``), the run is another one.
"""

import math
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from optimlab.constrained import (
    ConstrainedOptimizer,
    Constraint,
    IndexedMultiplier,
    MultiplicativeUpdater,
    Problem,
    State,
    Violation,
)

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

N, D, HIDDEN, K = 32, 6, 16, 3
GLOBAL_BATCH, STEPS, NAN_STEP = 8, 16, 9
NORM_BOUND, MEAN_BOUND, LOSS_BOUND = 5.0, 1.0, 0.8
PRIMAL_LR, DUAL_LR = 3e-3, 0.2
VARIANTS = {  # name: (dual_step of the sampled table, dual optimizer, distributed handling on)
    "dense": ("dense", torch.optim.SGD, True),
    "lazy_adam": ("lazy", torch.optim.Adam, True),
    "not_handled": ("dense", torch.optim.SGD, False),
}


def data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=gen), torch.randint(0, K, (N,), generator=gen)


def plan():
    """The global batches: a fresh permutation of the N samples each epoch, split in batches."""
    gen = torch.Generator().manual_seed(1)
    batches = []
    while len(batches) < STEPS:
        batches.extend(torch.randperm(N, generator=gen).split(GLOBAL_BATCH))
    return batches[:STEPS]


def run(variant: str, world: int = 1, rank: int = 0, nan_rank: int | None = None):
    """``STEPS`` steps on this rank's part of every global batch; the final parameters, multipliers,
    penalty and the steps skipped. ``nan_rank``: the rank whose violations are NaN at ``NAN_STEP``
    (in one process: that step's violations are NaN)."""
    dual_step, dual, handled = VARIANTS[variant]
    x, y = data()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, K))
    net = DistributedDataParallel(model) if world > 1 else model
    step = {"t": 0}

    def compute(idx):
        per_sample = F.cross_entropy(net(x[idx]), y[idx], reduction="none")
        if nan_rank is not None and step["t"] == NAN_STEP and rank == nan_rank:
            per_sample = per_sample * math.nan
        loss = per_sample.sum() * world / GLOBAL_BATCH  # the global mean after DDP's average
        norm = sum(p.pow(2).sum() for p in model.parameters()) - NORM_BOUND
        return State(loss, {"norm": norm, "mean": loss - MEAN_BOUND,
                            "sample": Violation(per_sample - LOSS_BOUND, indices=idx)})

    table = IndexedMultiplier(N, dual_step=dual_step)
    problem = Problem(compute, {"norm": Constraint("<="),
                                "mean": Constraint("<=", formulation="augmented_lagrangian", penalty=0.5,
                                                   updater=MultiplicativeUpdater(1.5, tolerance=0.01)),
                                "sample": Constraint("<=", N, multiplier=table)})
    opt = ConstrainedOptimizer(problem, torch.optim.Adam(model.parameters(), lr=PRIMAL_LR),
                               dual(problem.dual_parameters(), lr=DUAL_LR), on_nonfinite="skip",
                               distributed="auto" if handled else False)
    skipped = []
    for idx in plan():
        r = opt.step(idx.chunk(world)[rank] if world > 1 else idx)
        if r.skipped:
            skipped.append(step["t"])
        step["t"] += 1
    return ([p.detach().clone() for p in model.parameters()], problem.multipliers(), problem.penalties(),
            skipped)


def worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    results = {name: run(name, world, rank) for name in VARIANTS}
    results["nan"] = run("dense", world, rank, nan_rank=world - 1)
    torch.save(results, out.format(rank=rank))
    dist.barrier()  # every rank has saved
    # then leave at once: gloo's threads, torn down with the interpreter (or by destroying the process
    # group), now and then abort the process ("terminate called without an active exception")
    os._exit(0)


def tensors(result) -> list[torch.Tensor]:
    params, multipliers, penalties, _ = result
    return params + [multipliers[k] for k in sorted(multipliers)] + [penalties[k] for k in sorted(penalties)]


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_equals_the_single_process_run(tmp_path, world):
    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(worker, args=(world, str(tmp_path / "store"), out), nprocs=world, join=True)
    ranks = [torch.load(out.format(rank=r), weights_only=True) for r in range(world)]
    for name in ("dense", "lazy_adam", "nan"):
        ref = run("dense" if name == "nan" else name, nan_rank=0 if name == "nan" else None)
        params, mult, penalty, skipped = ref
        # the run is not trivial: the norm starts infeasible (7.5 > 5), the sampled multipliers move
        # off 0, the penalty grows
        assert mult["norm"].item() > 1.0 and (mult["sample"] > 0).sum() >= N // 4, name
        assert penalty["mean"].item() > 0.5, name
        assert skipped == ([NAN_STEP] if name == "nan" else []), name
        assert ranks[0][name][3] == skipped, name
        for a, b in zip(tensors(ranks[0][name]), tensors(ref), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
        for other in ranks[1:]:  # every rank holds the very same values
            for a, b in zip(tensors(ranks[0][name]), tensors(other[name]), strict=True):
                assert torch.equal(a, b), name
    # the control: the same code without the optimizer's handling gives another run
    reference = tensors(run("not_handled"))
    worst = max(max((a - b).abs().max().item() for a, b in zip(tensors(r["not_handled"]), reference,
                                                                strict=True)) for r in ranks)
    assert worst > 1e-2


def test_distributed_true_without_a_process_group_is_refused():
    from optimlab.errors import OptimlabError

    x = torch.nn.Parameter(torch.zeros(()))
    problem = Problem(lambda: State(x ** 2, {"c": 1 - x}), {"c": Constraint("<=")})
    primal, dual = torch.optim.SGD([x], lr=0.1), torch.optim.SGD(problem.dual_parameters(), lr=0.1)
    with pytest.raises(OptimlabError, match="distributed=True needs torch.distributed.init_process_group"):
        ConstrainedOptimizer(problem, primal, dual, distributed=True)
    with pytest.raises(OptimlabError, match="distributed must be 'auto', True or False; got 'yes'"):
        ConstrainedOptimizer(problem, primal, dual, distributed="yes")
