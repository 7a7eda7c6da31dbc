"""DeepOBS's ``quadratic_deep``: its Hessian and data recomputed here from the stated definition (the
draws of numpy's RandomState in their order, the rotation built by reflections), the loss of the model
against the formula, and a vectorized group against its runs."""

import numpy as np
import pytest
import torch

from optimlab.data import load_dataset
from optimlab.data.quadratic import QuadraticDeep, expected_loss, quadratic_deep_hessian
from optimlab.training import TrainConfig, train


def definition_hessian() -> np.ndarray:
    """Q = R^T D R from the definition, written apart from optimlab's: each step embeds the rotation
    so far in one more dimension and applies the Householder reflection I - 2 x x^T that takes e_1 to
    a direction drawn on the sphere."""
    rng = np.random.RandomState(42)
    d_diag = np.hstack([rng.uniform(0, 1, size=90), rng.uniform(30, 60, size=10)])
    phi = rng.uniform() * 2 * np.pi
    r = np.array([[np.cos(phi), np.sin(phi)], [-np.sin(phi), np.cos(phi)]])
    for n in range(3, 101):
        direction = rng.normal(size=(n, 1))
        direction /= np.linalg.norm(direction)
        u = np.eye(n)[:, :1] - direction
        u /= np.linalg.norm(u)
        r = (np.eye(n) - 2 * u @ u.T) @ np.block([[np.ones((1, 1)), np.zeros((1, n - 1))],
                                                   [np.zeros((n - 1, 1)), r]])
    r = -r
    return r.T @ np.diag(d_diag) @ r


def test_the_hessian_and_the_data_are_the_definitions():
    q, eigenvalues = quadratic_deep_hessian()
    np.testing.assert_allclose(q, definition_hessian(), rtol=0, atol=1e-12)
    assert np.allclose(q, q.T) and (eigenvalues[:90] < 1).all() and (eigenvalues[90:] > 30).all()
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(q)), np.sort(eigenvalues), atol=1e-10)
    data = load_dataset("quadratic-deep")
    for tensor, seed, n in ((data.x_train, 42, 1000), (data.x_val, 44, 1000), (data.x_test, 43, 896)):
        want = np.float32(np.random.RandomState(seed).normal(0.0, 0.6, (1000, 100)))[:n]
        assert np.array_equal(tensor.numpy(), want)
    assert data.task == "objective" and data.num_val == 1000  # its own validation draw


def test_the_models_loss_is_the_quadratic_and_starts_at_one():
    model = QuadraticDeep()
    assert torch.equal(model.theta.detach(), torch.ones(100))
    x = load_dataset("quadratic-deep").x_train[:128]
    q = definition_hessian()
    r = 1.0 - x.double().numpy()
    want = 0.5 * np.einsum("bi,ij,bj->b", r, q, r)
    np.testing.assert_allclose(model(x).detach().double().numpy(), want, rtol=1e-5)
    # over many samples the losses approach the population loss
    assert model(load_dataset("quadratic-deep").x_train).mean().item() == pytest.approx(
        expected_loss(torch.ones(100)), rel=0.02)


def test_sgd_on_it_descends_and_a_vectorized_group_equals_its_runs():
    from optimlab.study.vectorized import train_group

    configs = [TrainConfig(dataset="quadratic-deep", model="quadratic-deep", optimizer="momentum", lr=lr,
                           seed=s, batch_size=128, epochs=5, drop_last=True, device="cpu")
               for s in (0, 1) for lr in (0.01, 0.001)]
    group = train_group(configs)
    for got, config in zip(group, configs, strict=True):
        want = train(config)
        assert want.steps == 35  # 1000 // 128 batches an epoch, the remainder dropped
        assert want.evals[-1]["test_loss"] < want.evals[0]["test_loss"] / 3
        assert got.evals[-1]["test_loss"] == pytest.approx(want.evals[-1]["test_loss"], rel=1e-5)
        assert "val_loss" in want.evals[-1]
