import pytest
import torch

from optimlab.errors import OptimlabError
from optimlab.optimizers import (
    OPTIMIZERS,
    OptimizerSpec,
    build_optimizer,
    default_lr,
    hyperparameters,
)
from optimlab.registry import probe_stacking

EXPECTED = {  # name -> (class, options that must be set)
    "sgd": (torch.optim.SGD, {"momentum": 0, "nesterov": False}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {"amsgrad": False}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.01}),
    "amsgrad": (torch.optim.Adam, {"amsgrad": True}),
    "nadam": (torch.optim.NAdam, {}),
    "radam": (torch.optim.RAdam, {}),
    "adagrad": (torch.optim.Adagrad, {}),
    "adadelta": (torch.optim.Adadelta, {"rho": 0.9}),
    "adamax": (torch.optim.Adamax, {}),
    "rmsprop": (torch.optim.RMSprop, {"alpha": 0.99}),
    "asgd": (torch.optim.ASGD, {"lambd": 1e-4}),
    "rprop": (torch.optim.Rprop, {"etas": (0.5, 1.2)}),
    "adafactor": (torch.optim.Adafactor, {"beta2_decay": -0.8}),
}
NOT_LR_LINEAR = {"asgd", "rprop", "adafactor"}


def test_the_names_torch_optim_has_and_the_muon_recipe():
    assert set(OPTIMIZERS) == set(EXPECTED) | {"muon"}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_declared_properties_hold_under_the_probe(name):
    # what an entry declares is what the vectorized engine relies on: the probe measures it
    entry = OPTIMIZERS[name]
    problem = probe_stacking(entry, {})
    assert entry.stackable == (problem is None), problem
    assert entry.stackable == (name not in NOT_LR_LINEAR | {"muon"})
    if not entry.stackable:
        assert f"optimizer {name} " in entry.why_not_stacked()


def test_the_probe_finds_a_step_that_is_not_linear_in_lr():
    # asgd: the step size lr / (1 + lambd * lr * t)^alpha; rprop: step sizes clamped below at 1e-6
    assert "relative difference" in probe_stacking(OPTIMIZERS["asgd"], {})
    assert "relative difference" in probe_stacking(OPTIMIZERS["rprop"], {})
    # muon orthogonalizes whole matrices: a stack of two is not two steps
    assert "entry by entry" in probe_stacking(OPTIMIZERS["muon"], {"weight_decay": 0.0}) or \
        "could not step" in probe_stacking(OPTIMIZERS["muon"], {"weight_decay": 0.0})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_name_is_the_stock_torch_optimizer(name):
    cls, options = EXPECTED[name]
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(name, [p], lr=0.05)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.05
    for k, v in options.items():
        assert group[k] == v, (name, k)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_steps_equal_torch_with_the_same_settings(name):
    cls, options = EXPECTED[name]
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    ours = build_optimizer(name, [a], lr=0.01)
    ref = cls([b], lr=0.01, **{k: v for k, v in options.items() if k != "weight_decay"},
              **({"weight_decay": 0.01} if name == "adamw" else {}))
    for _ in range(3):
        for p, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            (p ** 4).sum().backward()
            opt.step()
    assert torch.equal(a, b)


def test_hyperparameters_override_and_parse():
    p = [torch.nn.Parameter(torch.ones(2))]
    opt = build_optimizer("adam(betas=(0.8, 0.99), eps=1e-6)", p, lr=1e-3)
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert opt.param_groups[0]["eps"] == 1e-6
    opt = build_optimizer("momentum", p, lr=0.1, momentum=0.5)
    assert opt.param_groups[0]["momentum"] == 0.5
    spec = OptimizerSpec.parse(" sgd( weight_decay = 1e-4 , momentum=0.5) ")
    assert spec == OptimizerSpec("sgd", {"weight_decay": 1e-4, "momentum": 0.5})
    assert str(spec) == "sgd(momentum=0.5, weight_decay=0.0001)"
    assert OptimizerSpec.parse(str(spec)) == spec
    assert hyperparameters("nesterov")["nesterov"] is True


def test_default_learning_rates_are_torchs():
    assert default_lr("sgd") == 1e-3
    assert default_lr("adadelta") == 1.0
    assert build_optimizer("adagrad", [torch.nn.Parameter(torch.ones(1))]).param_groups[0][
        "lr"] == 1e-2


@pytest.mark.parametrize(
    "spec, lr, message",
    [
        ("adamm", 0.1, "unknown optimizer 'adamm'; valid: sgd, momentum, nesterov, adam"),
        ("adam(bettas=(0.9, 0.9))", 0.1, "no hyperparameter bettas; valid: betas, eps"),
        ("adam(lr=0.1)", 0.1, "learning rate apart"),
        ("adam(betas=foo)", 0.1, "must be a literal"),
        ("adam(", 0.1, "cannot read optimizer"),
        ("adam(0.9)", 0.1, "keyword arguments only"),
        ("sgd(momentum=-1)", 0.1, "Invalid momentum value"),
        ("sgd", 0.0, "finite number > 0"),
        ("sgd", -1e-3, "finite number > 0"),
        ("sgd", float("nan"), "finite number > 0"),
        ("sgd", float("inf"), "finite number > 0"),
        ("sgd", "fast", "not a number"),
        ("sgd", True, "finite number > 0"),
    ],
)
def test_bad_optimizers_are_refused_clearly(spec, lr, message):
    with pytest.raises(OptimlabError, match=message.replace("(", r"\(")):
        build_optimizer(spec, [torch.nn.Parameter(torch.ones(1))], lr=lr)
