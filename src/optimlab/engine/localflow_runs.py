"""The local-flow tools on a named task: the projection picture at some point of a run, and a run of
SGD driven by the curvature scheduler with its per-epoch learning rates (the seed's ``hs``)."""

from __future__ import annotations

import torch

from optimlab.data import Dataset, epoch_batches, load_dataset, steps_per_epoch
from optimlab.engine.build import check_batch_size, init_model
from optimlab.engine.config import TrainConfig
from optimlab.engine.records import loss_function
from optimlab.localflow.exact import check_flow_time
from optimlab.localflow.picture import Picture, projection_picture
from optimlab.localflow.scheduler import CurvatureScheduler
from optimlab.optimizers import check_lr


def _setup(dataset: str | Dataset, model: str, seed: int, batch_size: int):
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    check_batch_size(batch_size, data)
    config = TrainConfig(dataset=data.name, model=model, optimizer="sgd", lr=1.0, seed=seed,
                         batch_size=batch_size, device="cpu")
    return data, init_model(config, data), loss_function(data.task)


def picture_at(dataset: str | Dataset, model: str = "logreg", batch_size: int = 64, steps: int = 0,
               lr: float = 0.1, seed: int = 0, radius: float = 1.0, points: int = 41,
               spread: float = 0.0) -> Picture:
    """The picture of the batch that comes after ``steps`` steps of SGD at ``lr`` from the seeded
    initialization (``steps=0``: at the initialization, on the first batch)."""
    data, net, loss_fn = _setup(dataset, model, seed, batch_size)
    opt = torch.optim.SGD(net.parameters(), lr=check_lr(lr))
    order = torch.Generator().manual_seed(seed)
    done, batch = 0, None
    while batch is None:
        for idx in epoch_batches(data.num_train, batch_size, order):
            if done == steps:
                batch = idx
                break
            opt.zero_grad()
            loss_fn(net(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
            done += 1
    return projection_picture(net, loss_fn, data.x_train[batch], data.y_train[batch], radius=radius,
                              points=points, spread=spread, seed=seed)


def schedule_run(dataset: str | Dataset, model: str = "logreg", lr: float = 1.0, epochs: int = 3,
                 batch_size: int = 64, every: int = 10, method: str = "hvp", momentum: float = 0.0,
                 seed: int = 0, guard: str = "armijo", armijo: float = 0.25) -> dict:
    """Train with SGD (flow time ``lr``) under the curvature scheduler (its ``guard``); returns the
    per-epoch learning rates ``hs`` (medians), every step's record, and the final training and test
    loss. A run whose batch loss becomes non-finite stops there: ``diverged_at`` is that step (counted
    from 1; else None) and ``hs`` covers the steps before it."""
    data, net, loss_fn = _setup(dataset, model, seed, batch_size)
    opt = torch.optim.SGD(net.parameters(), lr=check_flow_time(lr), momentum=momentum)
    sched = CurvatureScheduler(opt, every=every, method=method, guard=guard, armijo=armijo, model=net)
    order = torch.Generator().manual_seed(seed)
    x, y = data.x_train, data.y_train
    diverged_at = None
    for _ in range(epochs):
        for idx in epoch_batches(data.num_train, batch_size, order):
            loss = sched.step(lambda idx=idx: loss_fn(net(x[idx]), y[idx]))
            if not torch.isfinite(loss):
                diverged_at = len(sched.records)
                sched.records.pop()  # the step not taken
                break
            opt.step()
        if diverged_at is not None:
            break
    with torch.no_grad():
        train_loss = float(loss_fn(net(x), y))
        test_loss = float(loss_fn(net(data.x_test), data.y_test))
    per_epoch = steps_per_epoch(data.num_train, batch_size, False)
    return {"hs": sched.epoch_lrs(per_epoch), "records": sched.records, "train_loss": train_loss,
            "test_loss": test_loss, "flow_time": lr, "steps_per_epoch": per_epoch,
            "diverged_at": diverged_at}
