"""Seed 003 as a script: the 784-100-10 MLP trained with SGD, SGD + momentum and Adam, test accuracy
every 500 iterations (batch 100, 3000 iterations), on the bundled ``mnist-10k`` by default.

    python examples/mlp_optimizers.py                       # mnist-10k
    python examples/mlp_optimizers.py --dataset mnist       # the full MNIST, where present
"""

import argparse

from optimlab.data import load_dataset
from optimlab.training import TrainConfig, train

TRIO = [("sgd", 0.1), ("momentum", 0.1), ("adam", 1e-3)]  # the seed's three, with its rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-10k")
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args()
    data = load_dataset(args.dataset)  # loaded once, shared by the three runs
    table = {}
    for name, lr in TRIO:
        print(f"== {name}, lr {lr}")
        config = TrainConfig(dataset=args.dataset, model="mlp", optimizer=name, lr=lr,
                             batch_size=100, iterations=args.iterations, eval_every=500,
                             eval_train=False, seed=0)
        result = train(config, data=data, on_eval=lambda r: r["step"] and print(
            f"Iteration: {r['step']}. Loss: {r['batch_loss']:.4f}. "
            f"Accuracy: {100 * r['test_accuracy']:.2f}"))
        table[name] = [100 * r["test_accuracy"] for r in result.evals[1:]]
    steps = [r for r in range(500, args.iterations + 1, 500)]
    print("\ntest accuracy (%) by iteration\n" + "optimizer " + "".join(f"{s:>8}" for s in steps))
    for name, accs in table.items():
        print(f"{name:<10}" + "".join(f"{a:>8.2f}" for a in accs))


if __name__ == "__main__":
    main()
