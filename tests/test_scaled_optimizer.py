"""The stacked optimizer step: one optimizer over stacked parameters (S, L, *shape), each slice
stepped by its own learning rate, equal to that slice's own torch.optim optimizer given the same
gradients (SGD bit for bit; the others up to the lerp's rounding)."""

import pytest
import torch

from optimlab.engine.stacking import ScaledOptimizer

SHAPES = [(7, 5), (7,), ()]  # a weight, a bias, a scalar parameter
LRS = [[0.01, 0.1, 0.3], [0.05, 0.2, 1.7]]  # (S, L) = (2, 3)


def stepped(optimizer_class, options: dict, steps: int = 5, factors=None):
    """The stacked parameters after ``steps`` steps of ScaledOptimizer, and each slice's own
    parameters after the same steps of its own ``optimizer_class(lr=its lr, **options)`` on the same
    gradients (``factors``: a schedule's factor per step, as a run's LambdaLR applies it)."""
    gen = torch.Generator().manual_seed(0)
    lrs = torch.tensor(LRS, dtype=torch.float64)
    init = [torch.randn(2, 3, *shape, generator=gen) for shape in SHAPES]
    stacked = [t.clone().requires_grad_() for t in init]
    update = ScaledOptimizer(optimizer_class, stacked, lrs)
    if options:
        for group in update.optimizer.param_groups:
            group.update(options)
    cells = [(s, j) for s in range(2) for j in range(3)]
    runs = {c: [t[c].clone().requires_grad_() for t in init] for c in cells}
    own = {c: optimizer_class(runs[c], lr=LRS[c[0]][c[1]], **options) for c in cells}
    for step in range(steps):
        if factors is not None:
            update.set_factor(factors[step])
            for c in cells:
                own[c].param_groups[0]["lr"] = LRS[c[0]][c[1]] * factors[step]
        grads = [torch.randn(2, 3, *shape, generator=gen) for shape in SHAPES]
        for p, g in zip(stacked, grads, strict=True):
            p.grad = g.clone()
        update.step()
        for c in cells:
            for p, g in zip(runs[c], grads, strict=True):
                p.grad = g[c].clone()
            own[c].step()
    return update, stacked, runs, own


SGD_OPTIONS = [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
               {"momentum": 0.8, "dampening": 0.1, "weight_decay": 1e-3}, {"maximize": True, "momentum": 0.5}]


@pytest.mark.parametrize("options", SGD_OPTIONS, ids=str)
def test_each_slice_of_stacked_sgd_is_its_own_sgd_bit_for_bit(options):
    update, stacked, runs, own = stepped(torch.optim.SGD, options)
    assert update.direct
    for (s, j), params in runs.items():
        for p, q in zip(stacked, params, strict=True):
            assert torch.equal(p[s, j], q), (s, j, options)
        if options.get("momentum"):  # the momentum buffers where SGD keeps them, equal too
            for p, q in zip(stacked, params, strict=True):
                assert torch.equal(update.optimizer.state[p]["momentum_buffer"][s, j],
                                   own[(s, j)].state[q]["momentum_buffer"])


def test_a_schedules_factor_is_applied_as_a_run_applies_it():
    factors = [1.0, 0.7, 1 / 3, 0.123456789, 0.01]  # base * factor rounded once, in float64
    _, stacked, runs, _ = stepped(torch.optim.SGD, {"momentum": 0.9}, factors=factors)
    for (s, j), params in runs.items():
        for p, q in zip(stacked, params, strict=True):
            assert torch.equal(p[s, j], q)


@pytest.mark.parametrize("optimizer_class, options", [
    (torch.optim.Adam, {}), (torch.optim.AdamW, {"weight_decay": 0.1}),
    (torch.optim.RMSprop, {"momentum": 0.5})])
def test_other_optimizers_scale_the_lr_one_step_by_a_lerp(optimizer_class, options):
    update, stacked, runs, _ = stepped(optimizer_class, options)
    assert not update.direct
    for (s, j), params in runs.items():
        for p, q in zip(stacked, params, strict=True):
            torch.testing.assert_close(p[s, j], q, rtol=1e-6, atol=1e-6)


def test_a_subclass_of_sgd_is_stepped_by_its_own_step():
    class Traced(torch.optim.SGD):
        calls = 0

        def step(self, closure=None):
            Traced.calls += 1
            return super().step(closure)

    update, stacked, runs, _ = stepped(Traced, {}, steps=2)
    assert not update.direct and Traced.calls == 2 + 2 * 6  # the stacked one's two, each slice's own
    for (s, j), params in runs.items():
        for p, q in zip(stacked, params, strict=True):
            torch.testing.assert_close(p[s, j], q, rtol=1e-6, atol=1e-6)


def test_a_stopped_slice_keeps_its_parameters_and_the_others_step():
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(2, 3, 4, generator=gen).requires_grad_()
    update = ScaledOptimizer(torch.optim.SGD, [p], torch.tensor(LRS, dtype=torch.float64))
    before = p.detach().clone()
    update.stop(0, 1)
    update.set_factor(0.5)  # a schedule does not restart it
    p.grad = torch.ones_like(p)
    update.step()
    assert torch.equal(p[0, 1], before[0, 1])
    assert torch.equal(p[1, 2], before[1, 2] - torch.tensor(1.7 * 0.5, dtype=torch.float32))
