"""Units of work of a study, and how one is trained wherever it runs (this process, a worker, Ray).

A unit is one run, or a group of runs that differ only in learning rate and seed (and, constrained,
dual learning rate and penalty coefficient), trained together by the vectorized engine. Training a
unit reports progress through ``emit(checkpoint, results, finished)`` at the end of every epoch and
at the end: ``checkpoint`` as bytes (``torch.save``) and ``results`` as plain dicts, so any
transport can carry them to the process that owns the store.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from optimlab.constrained.named import parse_constraint
from optimlab.data import Dataset, load_dataset
from optimlab.devices import resolve_device
from optimlab.optimizers import LOCAL_FLOW, OptimizerSpec
from optimlab.study.store import checkpoint_bytes, checkpoint_from_bytes, unit_key
from optimlab.training import RunResult, TrainConfig, train

Emit = Callable[[bytes, list[dict], bool], None]


@dataclass
class Unit:
    run_ids: list[int]
    configs: list[TrainConfig]
    kind: str  # "run" or "group"

    @property
    def key(self) -> str:
        return unit_key(self.kind, self.run_ids)

    def to_message(self) -> dict:
        return {"run_ids": self.run_ids, "configs": [c.to_dict() for c in self.configs],
                "kind": self.kind}

    @classmethod
    def from_message(cls, msg: dict) -> Unit:
        return cls(msg["run_ids"], [TrainConfig.from_dict(c) for c in msg["configs"]], msg["kind"])


def plan_units(runs: list[dict], groups: bool) -> list[Unit]:
    """Cut runs (store rows) into units: one per run, or (``groups``) one per set of runs that
    differ only in learning rate, seed, dual learning rate and penalty. Order: as the runs come."""
    configs = [(r["id"], TrainConfig.from_dict(_config(r))) for r in runs]
    if not groups or not all(groups_pay_off(c) for _, c in configs):
        return [Unit([i], [c], "run") for i, c in configs]
    from optimlab.study.vectorized import vectorizable_key

    buckets: dict[tuple, list[tuple[int, TrainConfig]]] = {}
    for i, c in configs:
        buckets.setdefault(vectorizable_key(c), []).append((i, c))
    return [Unit([i for i, _ in members], [c for _, c in members],
                 "group" if len(members) > 1 else "run") for members in buckets.values()]


def groups_pay_off(config: TrainConfig) -> bool:
    """Whether training runs together is faster than one after another: not for convolutions on the
    CPU, where the stacked CNN runs 2x slower than the runs one by one (15 Adam runs on Fashion-MNIST:
    7.1 against 3.3 s a step), so those run one by one."""
    from optimlab.study.vectorized import STACKED_MEASURES

    if OptimizerSpec.parse(config.optimizer).name in LOCAL_FLOW or any(
            parse_constraint(c).measure not in STACKED_MEASURES for c in config.constraints):
        return False  # not supported by the vectorized engine: one by one
    return not (config.model == "cnn" and resolve_device(config.device).type == "cpu")


def _config(run: dict) -> dict:
    import json

    return json.loads(run["config"]) if isinstance(run["config"], str) else run["config"]


def result_dict(r: RunResult) -> dict:
    return {"status": r.status, "steps": r.steps, "diverged_at": r.diverged_at,
            "wall_time": r.wall_time, "evals": r.evals, "train_log": r.train_log}


@functools.lru_cache(maxsize=2)
def _dataset(name: str, normalize: bool, data_dir: str | None, device: str) -> Dataset:
    return load_dataset(name, data_dir=data_dir, device=device, normalize=normalize)


def train_unit(unit: Unit, checkpoint: bytes | None, emit: Emit, data_dir: str | None = None,
               on_eval: Callable | None = None) -> None:
    """Train ``unit`` from ``checkpoint`` (None: from the start), reporting through ``emit``."""
    first = unit.configs[0]
    device = str(resolve_device(first.device))
    data = _dataset(first.dataset, first.normalize, data_dir, device)
    resume = checkpoint_from_bytes(checkpoint) if checkpoint is not None else None

    def report(ckpt: dict, results) -> None:
        results = results if isinstance(results, list) else [results]
        finished = all(r.status != "running" for r in results)
        emit(checkpoint_bytes(ckpt) if not finished else b"", [result_dict(r) for r in results],
             finished)

    if unit.kind == "run":
        train(first, data=data, resume_from=resume, on_checkpoint=report, keep_model=False,
              on_eval=None if on_eval is None else lambda row: on_eval(0, row))
    else:
        from optimlab.study.vectorized import train_group

        train_group(unit.configs, data=data, resume_from=resume, on_checkpoint=report,
                    keep_models=False, on_eval=on_eval)
