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

Sampled constraints at scale: a table of n = 1e4 and 1e6 indexed multipliers (margin constraints
of a linear model, one per sample), 128 observed per step; by hand (the table looked up densely,
and as an embedding with sparse gradients), optimlab's three dual steps (``dense``, ``sparse``,
``lazy``), and Cooper's indexed multiplier (sparse), with SGD and with Adam (lazy Adam against
SparseAdam, the same method with a negligible eps); targets: optimlab's sparse SGD and lazy Adam no
slower than Cooper's at n = 1e6.

Run: python benchmarks/bench_constrained.py [--steps 100] [--repeats 30] [--threads 1]
(Cooper is timed when installed: pip install --no-deps cooper-optim)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from optimlab.constrained import ConstrainedOptimizer, Constraint, IndexedMultiplier, Problem, Violation

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


# -- sampled constraints: a table of n indexed multipliers, BATCH_I of them observed per step --------------

BATCH_I, POOL, EPS = 128, 40, 1e-12


def sampled_batches(n: int):
    """POOL batches of margin constraints 1 - s_i <x_i, w> <= 0 on random samples i of n."""
    gen = torch.Generator().manual_seed(2)
    return [(torch.randperm(n, generator=gen)[:BATCH_I], torch.randn(BATCH_I, D, generator=gen),
             torch.randint(0, 2, (BATCH_I,), generator=gen).float() * 2 - 1) for _ in range(POOL)]


def margin(model, x, s):
    return 1 - s * model(x).squeeze(-1)


def sampled_model():
    torch.manual_seed(3)
    return torch.nn.Linear(D, 1, bias=False)


def hand_sampled(n: int, sparse: bool):
    """By hand: the table as one tensor, looked up densely (every multiplier gets a gradient and is
    projected) or sparsely (an embedding with sparse gradients, the observed rows projected)."""
    model, batches, it = sampled_model(), sampled_batches(n), [0]
    table = torch.zeros(n, 1, requires_grad=True)
    primal = torch.optim.SGD(model.parameters(), lr=LR)
    dual = torch.optim.SGD([table], lr=DUAL_LR, maximize=True)

    def step() -> None:
        idx, x, s = batches[it[0] % POOL]
        it[0] += 1
        primal.zero_grad()
        dual.zero_grad()
        lam = F.embedding(idx, table, sparse=True).squeeze(-1) if sparse else table[idx, 0]
        lagrangian = 0.5 * model.weight.pow(2).sum() + (lam * margin(model, x, s)).sum()
        lagrangian.backward()
        primal.step()
        dual.step()
        with torch.no_grad():
            if sparse:
                table[idx] = table[idx].clamp_min(0)
            else:
                table.clamp_(min=0)

    return step, model, lambda: table.detach().reshape(-1).clone()


def optimlab_sampled(n: int, dual_step: str, dual=torch.optim.SGD, **dual_kw):
    model, batches, it = sampled_model(), sampled_batches(n), [0]

    def compute():
        idx, x, s = batches[it[0] % POOL]
        it[0] += 1
        return 0.5 * model.weight.pow(2).sum(), {"m": Violation(margin(model, x, s), indices=idx)}

    table = IndexedMultiplier(n, dual_step=dual_step)
    problem = Problem(compute, {"m": Constraint("<=", n, multiplier=table)})
    opt = ConstrainedOptimizer(problem, torch.optim.SGD(model.parameters(), lr=LR),
                               dual(problem.dual_parameters(), lr=DUAL_LR, **dual_kw), check_finite=False)
    return opt.step, model, lambda: problem.multipliers()["m"]


def cooper_sampled(n: int, dual=torch.optim.SGD, **dual_kw):
    model, batches, it = sampled_model(), sampled_batches(n), [0]

    class Margins(cooper.ConstrainedMinimizationProblem):
        def __init__(self):
            super().__init__()
            self.m = cooper.Constraint(constraint_type=cooper.ConstraintType.INEQUALITY,
                                       formulation_type=cooper.formulations.Lagrangian,
                                       multiplier=cooper.multipliers.IndexedMultiplier(num_constraints=n))

        def compute_cmp_state(self):
            idx, x, s = batches[it[0] % POOL]
            it[0] += 1
            state = cooper.ConstraintState(violation=margin(model, x, s), constraint_features=idx)
            return cooper.CMPState(loss=0.5 * model.weight.pow(2).sum(), observed_constraints={self.m: state})

    cmp = Margins()
    opt = cooper.optim.SimultaneousOptimizer(
        cmp=cmp, primal_optimizers=torch.optim.SGD(model.parameters(), lr=LR),
        dual_optimizers=dual(cmp.dual_parameters(), lr=DUAL_LR, maximize=True, **dual_kw))
    return opt.roll, model, lambda: cmp.m.multiplier.weight.detach().reshape(-1).clone()


def sampled_ways() -> tuple[dict, dict]:
    """The SGD ways (one method: they must agree) and the Adam-like ways (lazy Adam and SparseAdam,
    one method when eps is negligible, as here)."""
    sgd = {"hand_dense": lambda n: hand_sampled(n, False), "hand_sparse": lambda n: hand_sampled(n, True),
           "optimlab_dense": lambda n: optimlab_sampled(n, "dense"),
           "optimlab_sparse": lambda n: optimlab_sampled(n, "sparse")}
    adam = {"optimlab_lazy_adam": lambda n: optimlab_sampled(n, "lazy", torch.optim.Adam, eps=EPS),
            "optimlab_sparse_adam": lambda n: optimlab_sampled(n, "sparse", torch.optim.SparseAdam, eps=EPS),
            "optimlab_dense_adam": lambda n: optimlab_sampled(n, "dense", torch.optim.Adam, eps=EPS)}
    if cooper is not None:
        sgd["cooper"] = cooper_sampled
        adam["cooper_sparse_adam"] = lambda n: cooper_sampled(n, torch.optim.SparseAdam, eps=EPS)
    return sgd, adam


def check_same_work(ways: dict, groups: int, steps: int = 50, ref: str = "hand",
                    skip: tuple[str, ...] = ()) -> None:
    finals = {}
    for name, make in ways.items():
        step, model, multipliers = make(groups)
        for _ in range(steps):
            step()
        finals[name] = (torch.cat([p.detach().reshape(-1) for p in model.parameters()]), multipliers())
    ref = finals[ref]
    for name in skip:
        del finals[name]
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
    print(f"sampled constraints: {BATCH_I} of n indexed multipliers observed per step (margins of a "
          "linear model); us per step")
    sgd, adam = sampled_ways()
    for n in (10_000, 1_000_000):
        check_same_work(sgd, n, ref="hand_dense")
        check_same_work(adam, n, ref="optimlab_lazy_adam", skip=("optimlab_dense_adam",))
        t = time_ways({**sgd, **adam}, n, max(args.steps // 4, 10), max(args.repeats // 3, 5))
        print(f"  n = {n:>9,}: " + ", ".join(f"{name} {v * 1e6:7.1f}" for name, v in t.items()))
        if "cooper" in t:
            fast = t["optimlab_sparse"] / t["cooper"], t["optimlab_lazy_adam"] / t["cooper_sparse_adam"]
            print(f"  {'':13} optimlab sparse SGD {fast[0]:.2f}x cooper's SGD, lazy Adam {fast[1]:.2f}x "
                  "cooper's SparseAdam (targets <= 1x at n = 1e6)")
            ok &= n != 1_000_000 or max(fast) <= 1.0
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
