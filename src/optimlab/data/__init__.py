"""Data sets as tensors on the device: readers of the real file formats, the catalogue of named sets,
the bundled ``mnist-10k``, the synthetic ``lls`` problem, and seeded batch orders."""

from optimlab.data.catalogue import (
    CATALOGUE,
    dataset_names,
    dataset_status,
    load_dataset,
    locate,
    search_places,
)
from optimlab.data.cifar import read_cifar10_binary, write_cifar10_binary
from optimlab.data.idx import read_idx, read_idx_pair, write_idx
from optimlab.data.synthetic import make_lls
from optimlab.data.tensors import Dataset, check_validation, epoch_batches, steps_per_epoch

__all__ = [
    "CATALOGUE",
    "Dataset",
    "check_validation",
    "dataset_names",
    "dataset_status",
    "epoch_batches",
    "load_dataset",
    "locate",
    "make_lls",
    "read_cifar10_binary",
    "read_idx",
    "read_idx_pair",
    "search_places",
    "steps_per_epoch",
    "write_cifar10_binary",
    "write_idx",
]
