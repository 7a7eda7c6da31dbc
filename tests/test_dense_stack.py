"""The stacked forward of plain dense networks without vmap (engine.dense): which models have a plan,
and that a stack with a plan computes what the same stack computes under vmap."""

import pytest
import torch
from torch import nn

from optimlab.data import Dataset
from optimlab.engine.dense import dense_plan
from optimlab.engine.precision import Precision
from optimlab.engine.stacking import Stack
from optimlab.models import MLP, DeepOBSMLP, LogisticRegression

IMAGES = (1, 6, 6)


def images(n: int = 64, classes: int = 5, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *IMAGES, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return Dataset("images", x, y, x[:16], y[:16], "classification", classes)


class Custom(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


class Wider(nn.Linear):
    pass


def models():
    torch.manual_seed(0)
    return {
        "logreg": LogisticRegression(IMAGES, 5),
        "mlp": MLP(IMAGES, 5, hidden=8),
        "deepobs": nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, 7), nn.ReLU(),
                                 nn.Linear(7, 5)),
        "no bias, gelu, tanh": nn.Sequential(nn.Flatten(), nn.Linear(36, 9, bias=False), nn.GELU(),
                                             nn.Linear(9, 5), nn.Tanh()),
        "activation first": nn.Sequential(nn.Tanh(), nn.Flatten(), nn.Linear(36, 5)),
    }


@pytest.mark.parametrize("name", list(models()))
def test_plain_dense_networks_have_a_plan(name):
    plan = dense_plan(models()[name], IMAGES)
    assert plan is not None and [k for k, _ in plan].count("linear") >= 1


def test_the_plan_of_an_mlp_names_its_layers():
    plan = dense_plan(MLP(IMAGES, 5, hidden=8), IMAGES)
    assert [(k, v if k != "elementwise" else type(v)) for k, v in plan] == [
        ("flatten", None), ("linear", ("1.weight", "1.bias")), ("elementwise", nn.ReLU),
        ("linear", ("3.weight", "3.bias"))]
    assert dense_plan(DeepOBSMLP((784,), 10), (784,)) is not None  # one-dimensional inputs, no Flatten


def repeated():
    layer = nn.Linear(36, 36)
    return nn.Sequential(nn.Flatten(), layer, nn.ReLU(), layer)


def tied():
    m = nn.Sequential(nn.Flatten(), nn.Linear(36, 36), nn.ReLU(), nn.Linear(36, 36))
    m[3].weight = m[1].weight
    return m


def hooked():
    m = MLP(IMAGES, 5, hidden=8)
    m[2].register_forward_hook(lambda *_: None)
    return m


@pytest.mark.parametrize("model, why", [
    (lambda: Custom(nn.Flatten(), nn.Linear(36, 5)), "its own forward"),
    (lambda: nn.Sequential(nn.Flatten(), Wider(36, 5)), "a subclass of Linear"),
    (lambda: nn.Sequential(nn.Linear(6, 5)), "a Linear on (1, 6, 6) samples"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Dropout(0.5), nn.Linear(8, 5)), "dropout"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8), nn.Linear(8, 5)), "batchnorm"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.PReLU(), nn.Linear(8, 5)), "a parameter"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Softmax(dim=1)), "not elementwise"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(36, 5))), "nested"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 5), nn.Flatten()), "flatten after a Linear"),
    (lambda: nn.Sequential(nn.ReLU()), "no Linear"),
    (hooked, "a forward hook"),
    (repeated, "one layer applied twice"),
    (tied, "a weight shared by two layers"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_anything_else_goes_through_vmap(model, why):
    assert dense_plan(model(), IMAGES) is None, why


def stacked_step(model, data, dense: bool, precision: str = "fp32", with_accuracy: bool = False):
    """Losses (S, L) and gradients of every stacked tensor after one backward pass of a 2 x 3 stack
    of ``model``'s copies (moved apart), by the plan or (``dense=False``) under vmap."""
    gen = torch.Generator().manual_seed(1)
    stack = Stack([model, model], 3, data, torch.device("cpu"), with_accuracy=with_accuracy,
                  precision=Precision(precision, "cpu"))
    with torch.no_grad():
        for p in stack.params.values():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    assert stack.dense is not None
    if not dense:
        stack.dense = None
    idx = torch.randperm(data.num_train, generator=gen)[:32]
    x, y = data.x_train[idx].view(2, 16, *IMAGES), data.y_train[idx].view(2, 16)
    out = stack.losses(x, y)
    losses, accuracy = out if with_accuracy else (out, None)
    losses.sum().backward()
    return losses.detach(), accuracy, {k: v.grad for k, v in stack.params.items()}


@pytest.mark.parametrize("name", list(models()))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_plan_computes_what_vmap_computes(name, precision):
    data = images()
    got = stacked_step(models()[name], data, True, precision)
    want = stacked_step(models()[name], data, False, precision)
    tol = dict(rtol=1e-6, atol=1e-7)  # the same kernels: measured equal, or 4e-8 apart (GELU, tanh)
    torch.testing.assert_close(got[0], want[0], **tol)
    assert got[2].keys() == want[2].keys()
    for k in want[2]:
        torch.testing.assert_close(got[2][k], want[2][k], **tol, msg=k)


def test_the_batch_accuracy_of_constrained_runs_by_the_plan():
    data = images()
    got = stacked_step(models()["mlp"], data, True, with_accuracy=True)
    want = stacked_step(models()["mlp"], data, False, with_accuracy=True)
    assert torch.equal(got[1], want[1]) and got[1].shape == (2, 3)
    assert 0 < got[1].sum() < 6  # some hits, not all
