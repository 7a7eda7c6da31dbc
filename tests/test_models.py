import pytest
import torch

from optimlab.errors import OptimlabError
from optimlab.models import build_model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 32, 32), (3, 28, 28)])
@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_classifiers_map_images_to_logits(name, shape):
    model = build_model(name, shape, 10)
    assert model(torch.randn(5, *shape)).shape == (5, 10)


def test_parameter_counts_match_the_seeds_networks():
    # seed 003: 784-100-10 MLP; seed 004: the CIFAR-10 CNN
    assert n_params(build_model("mlp", (1, 28, 28), 10)) == 784 * 100 + 100 + 100 * 10 + 10
    assert n_params(build_model("logreg", (1, 28, 28), 10)) == 784 * 10 + 10
    cnn = 3 * 64 * 9 + 64 + 64 * 128 * 9 + 128 + 128 * 8 * 8 * 256 + 256 + 256 * 10 + 10
    assert n_params(build_model("cnn", (3, 32, 32), 10)) == cnn
    assert n_params(build_model("mlp", (1, 28, 28), 10, hidden=7)) == 784 * 7 + 7 + 7 * 10 + 10


def test_linear_model_is_theta_dot_x():
    model = build_model("linear", (4,), task="regression")
    x = torch.randn(6, 4)
    assert torch.allclose(model(x), x @ model.linear.weight.squeeze(0))
    assert model.linear.bias is None


def test_seeded_initialization_is_reproducible():
    torch.manual_seed(3)
    a = build_model("mlp", (1, 28, 28), 10)
    torch.manual_seed(3)
    b = build_model("mlp", (1, 28, 28), 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("resnet", (1, 28, 28), 10), {}, "valid: logreg, mlp, cnn, linear"),
        (("cnn", (50,), 10), {}, "cnn needs images"),
        (("linear", (1, 28, 28), 10), {}, "for regression"),
        (("mlp", (1, 28, 28), 10), {"width": 3}, "no option width; valid: hidden"),
        (("mlp", (1, 28, 28), 10), {"hidden": 0}, "hidden must be a positive integer"),
        (("logreg", (5,), 0), {"task": "regression"}, "use one of: linear"),
    ],
)
def test_bad_models_are_refused_clearly(args, kwargs, message):
    with pytest.raises(OptimlabError, match=message):
        build_model(*args, **kwargs)
