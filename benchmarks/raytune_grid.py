"""The grid of ``bench_study.py --grid`` as a user writes it in Ray Tune instead: a grid search over 5
learning rates x 3 seeds of SGD on the MLP (784-100-10), Fashion-MNIST, batch 128, a number of epochs,
test accuracy reported after every epoch. Ray Tune's own best practice: the data put once into the
object store (``tune.with_parameters``), resident tensors, one CPU and one torch thread a trial, as
many trials at once as there are cores.

Run as a whole process (its start-up, Ray's included, is part of what it costs):
python benchmarks/raytune_grid.py [--epochs 5] [--cpus 2]      (needs: pip install "optimlab[bench]")
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SEEDS = (0, 1, 2)
BATCH = 128


def trial(config: dict, data: tuple, epochs: int) -> None:
    import torch
    import torch.nn.functional as F
    from ray import tune

    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(config["seed"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    order = torch.Generator().manual_seed(config["seed"])
    for epoch in range(epochs):
        for idx in torch.randperm(len(x_train), generator=order).split(BATCH):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
        with torch.no_grad():
            accuracy = sum((model(x_test[i:i + 1024]).argmax(1) == y_test[i:i + 1024]).sum().item()
                           for i in range(0, len(x_test), 1024)) / len(x_test)
        tune.report({"test_accuracy": accuracy, "epoch": epoch + 1})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    args = p.parse_args()
    start = time.perf_counter()
    import ray
    from ray import tune

    from optimlab.data import load_dataset

    d = load_dataset("fashion-mnist", device="cpu")  # the same normalized tensors optimlab trains on
    data = (d.x_train, d.y_train, d.x_test, d.y_test)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trial, data=data, epochs=args.epochs), {"cpu": 1}),
            param_space={"lr": tune.grid_search(list(LRS)), "seed": tune.grid_search(list(SEEDS))},
            tune_config=tune.TuneConfig(metric="test_accuracy", mode="max"),
            run_config=tune.RunConfig(storage_path=tmp, name="grid", verbose=0))
        results = tuner.fit()
        best = results.get_best_result()
    ray.shutdown()
    print(f"ray tune: {len(results)} trials, best lr {best.config['lr']} seed {best.config['seed']} "
          f"test accuracy {best.metrics['test_accuracy']:.4f}, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
