"""A run's pieces built from its settings: the data on the device, the seeded model, the task, the
budget in steps."""

from __future__ import annotations

import torch
from torch import nn

from optimlab import registry
from optimlab.data import Dataset
from optimlab.engine.config import TrainConfig
from optimlab.errors import OptimlabError
from optimlab.tasks import Task


def task_of(config: TrainConfig, data: Dataset) -> Task:
    """The task a run trains on: ``config.loss`` on data of ``data.task``'s kind."""
    return registry.resolve_task(config.loss, data.task)


def check_batch_size(batch_size: int, data: Dataset) -> None:
    if batch_size > data.num_train:
        raise OptimlabError(
            f"batch size {batch_size} is larger than the training set ({data.num_train} samples of "
            f"{data.name}); use at most {data.num_train}"
        )


def total_steps(config: TrainConfig, per_epoch: int) -> int:
    """The run's budget in steps."""
    return config.iterations if config.iterations is not None else config.epochs * per_epoch


def load_data(config: TrainConfig, data: object, data_dir, device) -> Dataset:
    """The run's data on ``device``: ``data`` (a Dataset or the four tensors) when given, else
    ``config.dataset`` (a name, a loader's import path, a loader or the data themselves), with the
    validation set ``config.validation`` held out of its training set (unless it has one)."""
    if data is None:
        data = registry.load_data(config.dataset, config.dataset_options, device=device,
                                  normalize=config.normalize, data_dir=data_dir)
    else:
        data = registry.as_dataset(data, "tensors").to(device)
    return data.with_validation(config.validation) if config.validation and data.x_val is None else data


def init_model(config: TrainConfig, data: Dataset) -> nn.Module:
    """The model of ``config``, initialized after ``torch.manual_seed(config.seed)`` (on the CPU),
    leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return registry.build_model(config.model, data.input_shape, data.num_classes, data.task,
                           **config.model_options)

