"""Time per step of simultaneous gradient descent-ascent: a hand-written loop, optimlab, and Cooper.

The problem is small on purpose, so that the per-step overhead of each library shows: a logistic
regression Linear(32, 10) on one fixed batch of 64 random inputs (CPU), with

* 1 constraint group: the squared L2 norm of all parameters <= 1;
* 10 constraint groups: the squared L2 norm of each of the 10 weight rows <= 0.1 (ten scalar
  constraints, ten multipliers: ten ``cooper.Constraint`` objects for Cooper).

Two hand loops are the baselines: ``hand``, one multiplier tensor per group, and ``hand_vector``,
all multipliers in one vector (one dot product, one tensor to step and clamp), the fastest one
would write; the ratios are to the latter.

Every way uses ``torch.optim.SGD`` on both sides (the dual one maximising) and projects the
multipliers onto lambda >= 0 after each dual step; the hand loop is the few lines one would write:
forward, L = loss + sum(lambda_i * g_i), one backward, two optimizer steps, clamp. Before timing, the
ways are run for the same steps and must end with the same parameters and multipliers (else the
timings would compare different work). The ways are timed interleaved, in blocks of steps, by the CPU
time of this process (``time.process_time``: on a shared machine, time spent descheduled does not
count), and the median per step of each is reported, with the ratios and the targets: optimlab
<= 1.2x the vector hand loop with 1 group and <= 1.15x with 10, and at least 2x faster than Cooper
with 10 constraint groups.

Run: python benchmarks/bench_constrained.py [--steps 100] [--repeats 30] [--threads 1]
(Cooper is timed when installed: pip install --no-deps cooper-optim)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from optimlab.constrained import ConstrainedOptimizer, Constraint, Problem

try:
    import cooper
except ImportError:  # timed only when installed
    cooper = None

D, CLASSES, BATCH, LR, DUAL_LR = 32, 10, 64, 1e-2, 1e-2
DATA = torch.Generator().manual_seed(0)
X = torch.randn(BATCH, D, generator=DATA)
Y = torch.randint(0, CLASSES, (BATCH,), generator=DATA)


def fresh_model() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(D, CLASSES)


def violations(model: torch.nn.Linear, groups: int) -> list[torch.Tensor]:
    if groups == 1:
        return [model.weight.pow(2).sum() + model.bias.pow(2).sum() - 1.0]
    return [model.weight[i].pow(2).sum() - 0.1 for i in range(groups)]


def hand(groups: int):
    model = fresh_model()
    lams = [torch.zeros((), requires_grad=True) for _ in range(groups)]
    primal = torch.optim.SGD(model.parameters(), lr=LR)
    dual = torch.optim.SGD(lams, lr=DUAL_LR, maximize=True)

    def step() -> None:
        primal.zero_grad()
        dual.zero_grad()
        lagrangian = F.cross_entropy(model(X), Y)
        for lam, g in zip(lams, violations(model, groups), strict=True):
            lagrangian = lagrangian + lam * g
        lagrangian.backward()
        primal.step()
        dual.step()
        with torch.no_grad():
            for lam in lams:
                lam.clamp_(min=0)

    return step, model, lambda: torch.stack([lam.detach() for lam in lams])


def hand_vector(groups: int):
    """The hand loop with all multipliers in one vector: one dot product, one tensor to step and clamp."""
    model = fresh_model()
    lam = torch.zeros(groups if groups > 1 else (), requires_grad=True)
    primal = torch.optim.SGD(model.parameters(), lr=LR)
    dual = torch.optim.SGD([lam], lr=DUAL_LR, maximize=True)

    def step() -> None:
        primal.zero_grad()
        dual.zero_grad()
        g = violations(model, groups)
        lagrangian = F.cross_entropy(model(X), Y) + (lam @ torch.stack(g) if groups > 1 else lam * g[0])
        lagrangian.backward()
        primal.step()
        dual.step()
        with torch.no_grad():
            lam.clamp_(min=0)

    return step, model, lambda: lam.detach().clone()


def optimlab(groups: int):
    model = fresh_model()
    names = [f"g{i}" for i in range(groups)]

    def compute(x, y):
        return F.cross_entropy(model(x), y), dict(zip(names, violations(model, groups), strict=True))

    problem = Problem(compute, {n: Constraint("<=") for n in names})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD(model.parameters(), lr=LR),
                               torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR))
    return (lambda: opt.step(X, Y)), model, lambda: torch.stack([problem.multipliers()[n] for n in names])


def cooper_way(groups: int):
    model = fresh_model()

    class Norms(cooper.ConstrainedMinimizationProblem):
        def __init__(self):
            super().__init__()
            self.constraints_ = []
            for i in range(groups):
                c = cooper.Constraint(constraint_type=cooper.ConstraintType.INEQUALITY,
                                      formulation_type=cooper.formulations.Lagrangian,
                                      multiplier=cooper.multipliers.DenseMultiplier(num_constraints=1))
                setattr(self, f"c{i}", c)  # Cooper finds constraints among the attributes
                self.constraints_.append(c)

        def compute_cmp_state(self, x, y):
            observed = {c: cooper.ConstraintState(violation=g)
                        for c, g in zip(self.constraints_, violations(model, groups), strict=True)}
            return cooper.CMPState(loss=F.cross_entropy(model(x), y), observed_constraints=observed)

    cmp = Norms()
    opt = cooper.optim.SimultaneousOptimizer(
        cmp=cmp, primal_optimizers=torch.optim.SGD(model.parameters(), lr=LR),
        dual_optimizers=torch.optim.SGD(cmp.dual_parameters(), lr=DUAL_LR, maximize=True))
    return ((lambda: opt.roll(compute_cmp_state_kwargs={"x": X, "y": Y})), model,
            lambda: torch.cat([c.multiplier.weight.detach() for c in cmp.constraints_]))


def check_same_work(ways: dict, groups: int, steps: int = 50) -> None:
    finals = {}
    for name, make in ways.items():
        step, model, multipliers = make(groups)
        for _ in range(steps):
            step()
        finals[name] = (torch.cat([p.detach().reshape(-1) for p in model.parameters()]), multipliers())
    ref = finals["hand"]
    for name, (params, lams) in finals.items():
        torch.testing.assert_close(params, ref[0], rtol=1e-5, atol=1e-6, msg=f"{name}: other parameters")
        torch.testing.assert_close(lams.reshape(-1), ref[1].reshape(-1), rtol=1e-5, atol=1e-6,
                                   msg=f"{name}: other multipliers")
    assert (ref[1] > 0).any(), "no constraint is active: the benchmark would not exercise the multipliers"


def time_ways(ways: dict, groups: int, steps: int, repeats: int) -> dict[str, float]:
    steppers = {name: make(groups)[0] for name, make in ways.items()}
    for step in steppers.values():  # warm up
        for _ in range(steps):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, step in steppers.items():
            start = time.process_time()
            for _ in range(steps):
                step()
            samples[name].append((time.process_time() - start) / steps)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=30, help="timed blocks per way")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ways = {"hand": hand, "hand_vector": hand_vector, "optimlab": optimlab}
    if cooper is not None:
        ways["cooper"] = cooper_way
    print(f"torch {torch.__version__}, {args.threads} thread(s), cooper "
          f"{getattr(cooper, '__version__', 'not installed')}; median of {args.repeats} blocks of "
          f"{args.steps} steps; us per step (ratio to the one-vector hand loop)")
    ok = True
    for groups in (1, 10):
        check_same_work(ways, groups)
        t = time_ways(ways, groups, args.steps, args.repeats)
        base = t["hand_vector"]
        ratio = t["optimlab"] / base
        cells = [f"{name} {v * 1e6:6.1f} ({v / base:.2f}x)" for name, v in t.items()]
        target = 1.15 if groups == 10 else 1.2
        line = f"{groups:2d} group(s): " + ", ".join(cells) + f"; optimlab target <= {target}x hand_vector"
        ok &= ratio <= target
        if "cooper" in t:
            speedup = t["cooper"] / t["optimlab"]
            line += f"; optimlab {speedup:.2f}x faster than cooper"
            line += " (target >= 2x)" if groups == 10 else ""
            ok &= speedup >= 2 or groups != 10
        print(line)
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
