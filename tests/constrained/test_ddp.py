"""Distributed data parallel (gloo, 2 processes on the CPU) gives the single-process run.

A small MLP, wrapped in ``DistributedDataParallel``, with two constraint groups: the squared norm of
its parameters <= 4 (model level, dense multiplier) and the loss of each training sample <= 0.8
(sampled constraints: one per sample, an indexed multiplier, observed for the samples of the
batch). Simultaneous GDA, Adam primal, SGD dual, 20 steps of global batches of 8; each rank computes
its half of every global batch. After the run the parameters and the multipliers equal those of the
single-process run on the same global batches (rtol 1e-5, atol 1e-7 for entries near 0; measured:
max abs difference 3e-8, max relative 7e-6 on a parameter of 4e-3, the norm's multiplier exactly;
only the order of the float32 sums differs), and they are bitwise identical on the two ranks.

What a user of DDP must do (``DDPRun`` below), from the rule that the average over the ranks of each
rank's Lagrangian must be the global Lagrangian, since DDP averages the model's gradients:

1. the loss: the mean over the rank's shard (shards of equal size), as in any DDP training;
2. a model-level constraint (the norm): as it is; it is the same on every rank;
3. sampled constraints: the Lagrangian *sums* lambda_i g_i over the observed entries, so a rank's
   violations must be multiplied by the world size (valid for the Lagrangian formulation, linear in
   g; the reported violations of that group are then world_size * g);
4. the multipliers are not in the DDP module: nothing averages their gradients. Average them over
   the ranks before the dual step (``AveragedSGD``): the norm's gradient is the same everywhere, a
   sampled entry's is world_size * g_i on the rank that observed it and 0 on the others, so the
   average is the single-process gradient and every rank makes the same dual step.

The two controls check that 3 and 4 are both needed: without either, the run differs from the
single-process one by far more than the tolerance.
"""

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from optimlab.constrained import ConstrainedOptimizer, Constraint, Problem, State, Violation

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

WORLD, N, D, HIDDEN, K = 2, 32, 6, 16, 3
GLOBAL_BATCH, STEPS = 8, 20
NORM_BOUND, LOSS_BOUND = 5.0, 0.8
PRIMAL_LR, DUAL_LR = 3e-3, 0.2
VARIANTS = {"ddp": (True, True), "no_scaling": (False, True), "no_dual_average": (True, False)}


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


class AveragedSGD(torch.optim.SGD):
    """SGD on the gradients averaged over the ranks (what DDP does for the model's parameters).

    Every rank must call ``step`` (a collective per parameter); here every constraint is observed on
    every rank at every step, so every multiplier has a gradient."""

    @torch.no_grad()
    def step(self, closure=None):
        world = dist.get_world_size()
        for group in self.param_groups:
            for p in group["params"]:
                dist.all_reduce(p.grad)  # gloo has no ReduceOp.AVG
                p.grad.div_(world)
        return super().step(closure)


def run(world: int = 1, rank: int = 0, scale: bool = True, average: bool = True):
    """``STEPS`` steps on this rank's part of every global batch; the final parameters and multipliers."""
    x, y = data()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, K))
    net = DistributedDataParallel(model) if world > 1 else model
    factor = world if scale else 1

    def compute(idx):
        per_sample = F.cross_entropy(net(x[idx]), y[idx], reduction="none")
        norm = sum(p.pow(2).sum() for p in model.parameters()) - NORM_BOUND
        sampled = Violation(factor * (per_sample - LOSS_BOUND), indices=idx)
        return State(per_sample.mean(), {"norm": norm, "sample": sampled})

    problem = Problem(compute, {"norm": Constraint("<="),
                                "sample": Constraint("<=", N, multiplier="indexed")})
    dual = AveragedSGD if world > 1 and average else torch.optim.SGD
    opt = ConstrainedOptimizer(problem, torch.optim.Adam(model.parameters(), lr=PRIMAL_LR),
                               dual(problem.dual_parameters(), lr=DUAL_LR))
    for idx in plan():
        opt.step(idx.chunk(world)[rank])
    return [p.detach().clone() for p in model.parameters()], problem.multipliers()


def worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, WORLD), rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    results = {name: run(WORLD, rank, scale, average) for name, (scale, average) in VARIANTS.items()}
    torch.save(results, out.format(rank=rank))
    dist.barrier()  # both ranks have saved
    # then leave at once: gloo's threads, torn down with the interpreter (or by destroying the process
    # group), now and then abort the process ("terminate called without an active exception")
    os._exit(0)


def flat(result):
    params, multipliers = result
    return params + [multipliers["norm"], multipliers["sample"]]


def test_ddp_on_two_processes_equals_the_single_process_run(tmp_path):
    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(worker, args=(str(tmp_path / "store"), out), nprocs=WORLD, join=True)
    ranks = [torch.load(out.format(rank=r), weights_only=True) for r in range(WORLD)]
    ref_params, ref_mult = run()
    # the run is not trivial: the norm starts infeasible (7.5 > 5) and its multiplier rises to ~4.8;
    # the sampled multipliers move off 0 (measured: all 32, up to 0.8)
    assert ref_mult["norm"].item() > 1.0
    assert (ref_mult["sample"] > 0).sum() >= N // 2

    params, mult = ranks[0]["ddp"]
    for a, b in zip(params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for name in ("norm", "sample"):
        torch.testing.assert_close(mult[name], ref_mult[name], rtol=1e-5, atol=1e-7)
    # every rank holds the very same parameters and multipliers
    for other in ranks[1:]:
        for a, b in zip(flat(ranks[0]["ddp"]), flat(other["ddp"]), strict=True):
            assert torch.equal(a, b)

    # the controls: leave out the scaling of the sampled violations, or the averaging of the dual
    # gradients, and the run is another one
    reference = flat((ref_params, ref_mult))
    for name in ("no_scaling", "no_dual_average"):
        worst = max(max(a.sub(b).abs().max().item() for a, b in zip(flat(r[name]), reference, strict=True))
                    for r in ranks)
        assert worst > 1e-2, name
