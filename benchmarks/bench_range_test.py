"""The range test beside torch-lr-finder's: the same model, optimizer, batches and schedule; the two
curves, their suggestions, and the time each takes (one CPU thread, the same run).

torch-lr-finder is given what its users give it: a DataLoader (over the resident tensors, in
optimlab's seeded batch order, so that the batches are the same) and the model and optimizer objects.
optimlab builds them from names. Prints the largest relative difference of the smoothed curves, both
sets of suggestions (torch-lr-finder's ``plot(suggest_lr=True)``: the steepest descent) and the time
ratio.

Run: python benchmarks/bench_range_test.py [--dataset fashion-mnist] [--model mlp] [--optimizer momentum]
                                           [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="mlp")
    p.add_argument("--optimizer", default="momentum")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--start", type=float, default=1e-6)
    p.add_argument("--end", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)

    import matplotlib

    matplotlib.use("Agg")
    import torch_lr_finder
    from torch.utils.data import DataLoader, TensorDataset

    from optimlab import lr_find
    from optimlab.data import epoch_batches
    from optimlab.engine.build import init_model, load_data, task_of
    from optimlab.registry import build_optimizer
    from optimlab.training import TrainConfig

    config = TrainConfig(dataset=args.dataset, model=args.model, optimizer=args.optimizer,
                         batch_size=args.batch_size, device="cpu")
    data = load_data(config, None, None, torch.device("cpu"))
    loss = task_of(config, data).loss
    order = torch.Generator().manual_seed(config.seed)
    passes = -(-args.steps * args.batch_size // data.num_train)
    batches = [idx.tolist() for _ in range(passes)
               for idx in epoch_batches(data.num_train, args.batch_size, order)]
    settings = dict(start=args.start, end=args.end, steps=args.steps)

    ours_t, theirs_t = [], []
    for _ in range(args.repeats):  # interleaved, so that the machine's load hits both alike
        started = time.perf_counter()
        ours = lr_find(config, data=data, **settings)
        ours_t.append(time.perf_counter() - started)

        started = time.perf_counter()
        model = init_model(config, data)
        opt = build_optimizer(args.optimizer, model.parameters(), lr=args.start)
        loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_sampler=batches)
        finder = torch_lr_finder.LRFinder(model, opt, loss, device="cpu")
        finder.range_test(loader, start_lr=args.start, end_lr=args.end, num_iter=args.steps, step_mode="exp",
                          smooth_f=0.05, diverge_th=5)
        theirs_t.append(time.perf_counter() - started)

    theirs = finder.history
    n = min(len(ours.smoothed), len(theirs["loss"]))
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours.smoothed[:n], theirs["loss"][:n], strict=True))
    _, suggested = finder.plot(suggest_lr=True, skip_start=10, skip_end=5)
    print(f"{args.model} on {args.dataset}, {args.optimizer}, batch {args.batch_size}, {args.steps} steps "
          f"from {args.start:g} to {args.end:g}")
    print(f"points: optimlab {len(ours.smoothed)} ({ours.stopped}), torch-lr-finder {len(theirs['loss'])}")
    print(f"largest relative difference of the smoothed curves: {worst:.3g}")
    print(f"suggestions: optimlab {', '.join(f'{k} {v:.4g}' for k, v in ours.suggestions.items())}; "
          f"torch-lr-finder steepest {suggested:.4g}")
    ours_best, theirs_best = min(ours_t), min(theirs_t)
    print(f"time (best of {args.repeats}): optimlab {ours_best:.2f} s, torch-lr-finder {theirs_best:.2f} s; "
          f"torch-lr-finder / optimlab = {theirs_best / ours_best:.2f}x")


if __name__ == "__main__":
    main()
