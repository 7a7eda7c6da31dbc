"""Units of work of a study, and how one is trained wherever it runs (this process, a worker, Ray).

A unit is one run, or a group of runs that differ only in learning rate and seed (and, constrained,
dual learning rate and penalty coefficient), trained together by the vectorized engine. Runs that the
engine cannot stack exactly (an optimizer not declared lr-linear, a model with Dropout, ...) are
units of one run each; every unit carries a one-line ``engine`` note saying how it is trained and why.
Training a unit reports progress through ``emit(checkpoint, results, finished)`` at the end of every
epoch and at the end: ``checkpoint`` as bytes (``torch.save``) and ``results`` as plain dicts, so any
transport can carry them to the process that owns the store.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from optimlab.data import Dataset
from optimlab.devices import resolve_device
from optimlab.engine.build import load_data
from optimlab.engine.config import TrainConfig
from optimlab.engine.records import RunResult
from optimlab.engine.run import train
from optimlab.errors import OptimlabError
from optimlab.study.store import checkpoint_bytes, checkpoint_from_bytes, unit_key

Emit = Callable[[bytes, list[dict], bool], None]
SLOWER = "one by one: stacked, a step of"  # the engine note of runs of a group measured slower stacked


@dataclass
class Unit:
    run_ids: list[int]
    configs: list[TrainConfig]
    kind: str  # "run" or "group"
    engine: str = ""  # how it is trained, and why not together when it could have been
    python_path: tuple[str, ...] = field(default_factory=tuple)  # the user's code, for other processes

    @property
    def key(self) -> str:
        return unit_key(self.kind, self.run_ids)

    def to_message(self) -> dict:
        """Plain values for another process; refuses settings that are Python objects."""
        refuse_objects(self.configs, "another process")
        return {"run_ids": self.run_ids, "configs": [c.to_dict() for c in self.configs],
                "kind": self.kind, "engine": self.engine, "python_path": list(self.python_path)}

    @classmethod
    def from_message(cls, msg: dict) -> Unit:
        from optimlab.study.spec import add_to_python_path

        add_to_python_path(msg.get("python_path", []))  # before the configs import the user's code
        return cls(msg["run_ids"], [TrainConfig.from_dict(c) for c in msg["configs"]], msg["kind"],
                   msg.get("engine", ""), tuple(msg.get("python_path", [])))


def refuse_objects(configs: list[TrainConfig], where: str) -> None:
    """Refuse runs holding Python objects without an import path: ``where`` cannot rebuild them."""
    for config in configs:
        if not config.portable:
            raise OptimlabError(
                f"{where} cannot receive Python objects without an import path ({'; '.join(config.objects())}"
                "; a lambda or a closure has none): define them at module level in an importable module "
                "(python_path) and name them by import path, or use the sequential or vectorized executor")


def plan_units(runs: list[dict], groups: bool, configs: dict[int, TrainConfig] | None = None,
               data_dir: str | None = None, python_path: tuple[str, ...] = (),
               stack_always: bool = False, layouts: dict[tuple, str] | None = None) -> list[Unit]:
    """Cut runs (store rows) into units: one per run, or (``groups``) one per set of runs that
    differ only in learning rate, seed, dual learning rate and penalty and that the vectorized engine
    can stack exactly (else one per run, with the reason). ``configs``: run id -> the config of the
    study in this process (which may hold objects); other runs are rebuilt from their stored config.
    ``stack_always``: stack wherever it is exact, even where measured slower. ``layouts``: the
    memory format measured for each distinct run (by ``vectorizable_key``), given to the runs whose
    setting is ``auto`` (so that every process trains them alike). Whether a group that stacks
    exactly is stacked is measured (:func:`optimlab.engine.payoff.slower_stacked`), unless a run of
    it was trained before on that measurement (its row's ``engine``: a study resumed goes on as it
    began, from its checkpoints and in its summation order). Order: as the runs come."""
    from optimlab.engine.group import group_refusal, vectorizable_key
    from optimlab.engine.payoff import slower_stacked

    configs = configs or {}
    before = {r["id"]: r.get("engine") or "" for r in runs}
    pairs = [(r["id"], configs.get(r["id"]) or TrainConfig.from_dict(_config(r))) for r in runs]
    layouts = layouts or {}
    pairs = [(i, dataclasses.replace(c, memory_format=layouts[k]) if c.memory_format == "auto" and (
        k := vectorizable_key(c)) in layouts else c) for i, c in pairs]
    if not groups:
        return [Unit([i], [c], "run", "one by one (executor)", python_path) for i, c in pairs]

    buckets: dict[tuple, list[tuple[int, TrainConfig]]] = {}
    for i, c in pairs:
        buckets.setdefault(vectorizable_key(c), []).append((i, c))
    units = []
    for members in buckets.values():
        first, data = members[0][1], unit_data(members[0][1], data_dir)
        why = group_refusal(first, data)
        if why is None and len(members) > 1 and not stack_always:
            measured = [e for i, _ in members if (e := before[i]).startswith(("vectorized:", SLOWER))]
            if not measured:
                why = slower_stacked([c for _, c in members], data)
            elif measured[0].startswith(SLOWER):  # trained one by one before: so again
                why = measured[0].removeprefix("one by one: ")
        if why is None and len(members) > 1:
            units.append(Unit([i for i, _ in members], [c for _, c in members], "group",
                              f"vectorized: a group of {len(members)} runs", python_path))
        else:
            note = f"one by one: {why}" if why else "one by one: no other run to train with"
            units += [Unit([i], [c], "run", note, python_path) for i, c in members]
    return units


def _config(run: dict) -> dict:
    return json.loads(run["config"]) if isinstance(run["config"], str) else run["config"]


def result_dict(r: RunResult) -> dict:
    return {"status": r.status, "steps": r.steps, "diverged_at": r.diverged_at,
            "wall_time": r.wall_time, "evals": r.evals, "train_log": r.train_log}


_DATA: dict[tuple, Dataset] = {}  # the last data sets loaded, by what names them


def unit_data(config: TrainConfig, data_dir: str | None = None) -> Dataset:
    """The data of a unit's runs on their device, loaded once per process for all units that share
    them (two kept)."""
    device = str(resolve_device(config.device))
    ref = config.dataset
    key = (ref if isinstance(ref, str) else id(ref), json.dumps(config.dataset_options, sort_keys=True,
                                                                 default=str),
           config.normalize, config.validation, data_dir, device)
    if key not in _DATA:
        if len(_DATA) >= 2:
            _DATA.pop(next(iter(_DATA)))
        _DATA[key] = load_data(config, None, data_dir, device)
    return _DATA[key]


def throttled(send: Callable[[int, int, list], None], every_s: float = 0.5) -> Callable:
    """An ``on_step`` for a unit trained elsewhere: passes a look at the losses on to ``send`` at most
    every ``every_s`` seconds, and always the last step's."""
    last = [-math.inf]

    def on_step(step: int, total: int, losses: list) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or step >= total:
            last[0] = now
            send(step, total, [None if v is None else float(v) for v in losses])

    return on_step


def train_unit(unit: Unit, checkpoint: bytes | None, emit: Emit, data_dir: str | None = None,
               on_eval: Callable | None = None, on_step: Callable | None = None,
               final_checkpoint: bool = True) -> None:
    """Train ``unit`` from ``checkpoint`` (None: from the start), reporting through ``emit``;
    ``on_step(step, total, losses)``: at every look at the batch losses (each run's last one).
    ``final_checkpoint=False``: the last report's checkpoint is empty bytes (not kept, so not
    serialized)."""
    first = unit.configs[0]
    data = unit_data(first, data_dir)
    resume = checkpoint_from_bytes(checkpoint) if checkpoint is not None else None

    def report(ckpt: dict, results) -> None:
        results = results if isinstance(results, list) else [results]
        finished = all(r.status != "running" for r in results)
        # the final checkpoint too: a study extended with a larger budget continues from it
        kept = final_checkpoint or not finished
        emit(checkpoint_bytes(ckpt) if kept else b"", [result_dict(r) for r in results], finished)

    if unit.kind == "run":
        train(first, data=data, resume_from=resume, on_checkpoint=report, keep_model=False,
              on_eval=None if on_eval is None else lambda row: on_eval(0, row),
              on_step=None if on_step is None else lambda step, total, loss: on_step(step, total, [loss]))
    else:
        from optimlab.engine.group import train_group

        train_group(unit.configs, data=data, resume_from=resume, on_checkpoint=report,
                    keep_models=False, on_eval=on_eval, on_step=on_step)
