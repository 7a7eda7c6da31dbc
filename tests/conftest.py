"""Shared fixtures: tests run on the CPU, offline, with torch's threads pinned for determinism."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist10k():
    """The bundled data set, loaded once for the session (on the CPU)."""
    from optimlab.data import load_dataset

    return load_dataset("mnist-10k", device="cpu")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the network by accident."""
    monkeypatch.setenv("OPTIMLAB_OFFLINE", "1")
