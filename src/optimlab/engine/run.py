"""One training run: its stepper driven by the engine's loop, its evaluations, metrics files,
checkpoint/resume and divergence guard.

A run that meets a non-finite batch loss stops with ``status="diverged"`` and ``diverged_at=s``,
the first step whose batch loss was not finite.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from optimlab.data import Dataset, epoch_batches, steps_per_epoch
from optimlab.devices import resolve_device
from optimlab.engine.build import check_batch_size, init_model, load_data, task_of, total_steps
from optimlab.engine.config import TrainConfig, check_schedule_budget, config_differences
from optimlab.engine.layout import choose_layout
from optimlab.engine.loop import run_loop
from optimlab.engine.modes import evaluation_point, has_modes, to_evaluation_point
from optimlab.engine.precision import Precision
from optimlab.engine.records import (
    RunProgress,
    RunResult,
    eval_row,
    evaluate,
    evaluated_at,
    flush_losses,
    progress_bar,
    run_result,
)
from optimlab.engine.steppers import make_stepper
from optimlab.errors import OptimlabError
from optimlab.runfiles import (
    atomic_save,
    atomic_write_text,
    check_writable,
    load_checkpoint,
    remove_partial_files,
)
from optimlab.schedules import Schedule

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "optimlab.run/1"
# the run's stream of random operations in training (dropout) is seeded with seed + this: apart from
# its initialization's (seed) for every seed below 2**32
RANDOM_STREAM = 2**32


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    resume: bool = False,
    data: Dataset | tuple | None = None,
    data_dir: str | Path | None = None,
    on_eval: Callable[[dict], None] | None = None,
    progress: bool = False,
    keep_model: bool = True,
    resume_from: dict | None = None,
    on_checkpoint: Callable[[dict, RunResult], None] | None = None,
    overwrite: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
) -> RunResult:
    """Train one model as ``config`` says and return what happened.

    ``out``: folder for ``checkpoint.pt`` (written atomically at the end of every epoch and of the
    run), ``metrics.json``, ``evals.csv`` and ``train_log.csv``. ``resume``: continue from the
    checkpoint in ``out`` (a run with no checkpoint starts fresh); it ends with exactly the metrics
    of an uninterrupted run. ``data``: the data, loaded already (a Dataset or the four tensors
    ``(x_train, y_train, x_test, y_test)``; else ``config.dataset`` is loaded). ``on_eval`` is
    called with every evaluation row (:mod:`optimlab.engine.records`: ``step``, ``epoch``,
    ``batch_loss``, train and test loss and accuracy, ``lr``, ``wall_time`` in seconds since the
    start, evaluations included, summed over resumptions).

    A folder that holds a run already (its checkpoint) is refused unless ``resume`` (continue it) or
    ``overwrite`` (start afresh over it). ``on_step(step, total, batch_loss)`` is called every time the
    losses are looked at (every ``log_every`` steps), for a progress display.

    Without a folder: ``on_checkpoint(checkpoint, result_so_far)`` receives the checkpoint (a dict
    of tensors and plain values, a snapshot) at the same moments, and ``resume_from`` continues
    from one.

    Random operations of training (Dropout's masks) draw from torch's global generators seeded for
    the run with ``seed + RANDOM_STREAM`` (the checkpoint carries their state); the caller's
    generators are restored afterwards.
    """
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed + RANDOM_STREAM)
        run = _Run(config, out, resume, data, data_dir, device, resume_from, on_checkpoint, on_eval,
                   overwrite)
        run.bar = bar = progress_bar(run.total, run.step, progress)
        run_loop(run, run.total, run.per_epoch, config.eval_every, config.log_every, bar, on_step)
        if keep_model and has_modes(run.stepper.optimizer):  # the model evaluated, not the one trained
            to_evaluation_point(run.stepper.optimizer, run.model, run.data.x_train, config.batch_size)
        return run_result(config, run.state, device, run.model if keep_model else None)


class _Run:
    """One run as the engine's loop drives it (:class:`optimlab.engine.loop.Trainee`)."""

    def __init__(self, config: TrainConfig, out, resume: bool, data, data_dir, device, resume_from,
                 on_checkpoint, on_eval, overwrite: bool = False):
        out = Path(out) if out is not None else None
        if resume and out is None:
            raise OptimlabError("resume needs the output folder of the run to continue (out=...)")
        if out is not None and not resume and not overwrite and (out / CHECKPOINT).exists():
            raise OptimlabError(f"{out} holds a run already ({CHECKPOINT}): resume it (--resume), replace it "
                                "(--overwrite) or choose another folder (--out)")
        # every piece first: a refused setting leaves nothing behind, not even the folder
        self.config, self.device, self.on_eval = config, device, on_eval
        self.data = data = load_data(config, data, data_dir, device)
        check_batch_size(config.batch_size, data)
        self.per_epoch = steps_per_epoch(data.num_train, config.batch_size, config.drop_last)
        self.total = total_steps(config, self.per_epoch)
        self.task = task_of(config, data)
        self.model = init_model(config, data).to(device).train()
        self.precision = Precision(config.precision, device)
        layout = choose_layout(config.memory_format, self.model, data.input_shape, config.batch_size, device,
                               self.precision)
        self.channels_last = False
        self._set_layout(layout)
        # compiled: the training steps call the compiled module, which shares the model's parameters;
        # evaluations and checkpoints use the model itself (its state dict keeps its keys)
        trained = torch.compile(self.model) if config.compile else self.model
        self.stepper = make_stepper(config, trained, self.task, device, self.precision)
        self.schedule = Schedule.parse(config.schedule)
        self.schedule.check(self.total)
        self.lr_scheduler = None if self.schedule.constant else torch.optim.lr_scheduler.LambdaLR(
            self.stepper.optimizer, lambda k: self.schedule.factor(k, self.total))
        self.order = torch.Generator().manual_seed(config.seed)  # the batch order, its own stream
        self.state = RunProgress()
        if out is not None:
            check_writable(out)
            remove_partial_files(out)
            if resume and (out / CHECKPOINT).exists():
                resume_from = load_checkpoint(out / CHECKPOINT, CHECKPOINT_FORMAT)
            on_checkpoint = _folder_writer(out, on_checkpoint)
        self.on_checkpoint = on_checkpoint
        if resume_from is not None:
            self._restore(resume_from)
        self.started = time.perf_counter() - self.state.wall_time
        self.bar = None

    def _set_layout(self, layout: str) -> None:
        """Put the model's parameters (in place: the optimizer holds the same tensors) in ``layout``;
        batches follow in :meth:`train_step`."""
        was, self.channels_last = self.channels_last, layout == "channels_last"
        if was or self.channels_last:
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            self.model.to(memory_format=fmt)

    # the loop's counters are the run's progress
    @property
    def step(self) -> int:
        return self.state.step

    @step.setter
    def step(self, value: int) -> None:
        self.state.step = value

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.state.epoch = value

    def lr(self, step: int | None = None) -> float:
        """The learning rate of update ``step`` (the last one made, at step 0 the first to come): the
        optimizer's own, or with a schedule the base lr times its factor."""
        if self.lr_scheduler is None:
            return self.stepper.optimizer.param_groups[0]["lr"]
        step = self.state.step if step is None else step
        return self.config.lr * self.schedule.factor(max(step - 1, 0), self.total)

    # -- the Trainee protocol -------------------------------------------------------------------

    def running(self) -> bool:
        return self.state.status == "running"

    def evaluated(self) -> bool:
        return evaluated_at(self.state, self.state.step)

    def has_evaluations(self) -> bool:
        return bool(self.state.evals)

    def order_state(self) -> torch.Tensor:
        return self.order.get_state()

    def epoch_batches(self):
        c = self.config
        return epoch_batches(self.data.num_train, c.batch_size, self.order, c.drop_last, self.device)

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        xb = self.data.x_train.index_select(0, idx)  # a copy, as x[idx], at half its cost on the CPU
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = self.stepper.step(xb, self.data.y_train.index_select(0, idx)).detach()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return loss

    def flush(self, pending: list[torch.Tensor]) -> float:
        logged = len(self.state.train_log)
        loss = flush_losses(pending, self.state, self.config.log_every, self.per_epoch, self.lr)
        self.stepper.annotate(self.state.train_log[logged:], self.state.step)
        if self.bar is not None and self.running():
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        return loss

    def record_eval(self, batch_loss: float | None) -> None:
        d, task, model = self.data, self.task, self.model
        with evaluation_point(self.stepper.optimizer, model, d.x_train, self.config.batch_size), \
                self.precision.autocast():
            train_metrics = evaluate(model, d.x_train, d.y_train, task) if self.config.eval_train else None
            test_metrics = evaluate(model, d.x_test, d.y_test, task)
            val_metrics = evaluate(model, d.x_val, d.y_val, task) if d.x_val is not None else None
            extra = self.stepper.now()
        row = eval_row(self.state.step, self.per_epoch, batch_loss, train_metrics, test_metrics, self.lr(),
                       time.perf_counter() - self.started, val_metrics)
        row.update(extra)
        self.state.evals.append(row)
        if self.on_eval is not None:
            self.on_eval(row)

    def end_epoch(self) -> None:
        pass

    def finish(self) -> None:
        if self.state.status == "running":
            self.state.status = "completed"

    def save(self, epoch_start: torch.Tensor) -> None:
        self.state.wall_time = time.perf_counter() - self.started
        if self.on_checkpoint is None:
            return
        rng = {"epoch_start": epoch_start, "torch": torch.get_rng_state()}
        if self.device.type == "cuda":  # dropout's masks on the GPU
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        # a snapshot, not views of the live tensors and lists (a caller may keep it)
        self.on_checkpoint(copy.deepcopy({
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
            "model": self.model.state_dict(), "optimizer": self.stepper.optimizer.state_dict(),
            "rng": rng, "progress": self.state.to_dict(), **self.stepper.state_dict(),
            "memory_format": "channels_last" if self.channels_last else "contiguous",
        }), run_result(self.config, self.state, self.device, None))

    def _restore(self, ckpt: dict) -> None:
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise OptimlabError(f"not a checkpoint of one run (format {ckpt.get('format')!r})")
        details = config_differences(ckpt["config"], self.config)
        if details:
            raise OptimlabError(
                f"the checkpoint belongs to a different run ({details}). Use another --out folder, or "
                "resume with the same settings (only the budget and the device may change).")
        check_schedule_budget(ckpt["config"], self.config)
        if ckpt.get("memory_format") in ("contiguous", "channels_last"):  # the run goes on as it began:
            self._set_layout(ckpt["memory_format"])  # resumed, it is bit for bit the uninterrupted one
        self.model.load_state_dict(ckpt["model"])
        self.stepper.optimizer.load_state_dict(ckpt["optimizer"])
        self.stepper.load_state_dict(ckpt)
        self.state.load(ckpt["progress"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        self.order.set_state(ckpt["rng"]["epoch_start"])  # the loop skips the batches already done
        if self.lr_scheduler is not None:  # the factor of the next update, as if never interrupted
            self.lr_scheduler.last_epoch = self.state.step
            groups = self.stepper.optimizer.param_groups
            for group, base in zip(groups, self.lr_scheduler.base_lrs, strict=True):
                group["lr"] = base * self.schedule.factor(self.state.step, self.total)
        if self.state.status == "completed":
            self.state.status = "running"  # a larger budget continues it; an equal one ends at once


def _folder_writer(out: Path, also: Callable | None) -> Callable[[dict, RunResult], None]:
    def write(ckpt: dict, result: RunResult) -> None:
        atomic_save(ckpt, out / CHECKPOINT)
        _write_metrics(out, result)
        if also is not None:
            also(ckpt, result)

    return write


def _write_metrics(out: Path, result: RunResult) -> None:
    """metrics.json (everything) and evals.csv / train_log.csv (one row per record)."""
    atomic_write_text(out / "metrics.json", json.dumps(result.to_dict(), indent=1))
    for name, rows in (("evals.csv", result.evals), ("train_log.csv", result.train_log)):
        if rows:
            cols = list(rows[0])
            lines = [",".join(cols)] + [
                ",".join("" if r[c] is None else repr(r[c]) for c in cols) for r in rows
            ]
            atomic_write_text(out / name, "\n".join(lines) + "\n")
