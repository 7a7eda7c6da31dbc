"""Seed 001 as a script: logistic regression on MNIST digits with the squared L2 norm of its parameters
constrained to <= 1 (Lagrangian, simultaneous gradient descent-ascent), and the seed's four panels.

As the seed: Adam (lr 1e-3, amsgrad) on the model, SGD (lr 1e-3) on the multiplier, batch 128,
7 epochs, a checkpoint at the end of every epoch, and a run that finds a checkpoint in ``--out``
resumes from it. Batches come from a seeded permutation per epoch (``--no-shuffle``: in file
order, as the seed's DataLoader). Writes ``checkpoint.pt`` (loads with ``weights_only=True``) and
``figure.png`` (training loss, training accuracy, multiplier, violation against the batch).

    python examples/constrained_logreg.py                          # bundled mnist-10k
    python examples/constrained_logreg.py --dataset fashion-mnist  # where present
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from optimlab.constrained import ConstrainedOptimizer, Constraint, Problem, State
from optimlab.data import epoch_batches, load_dataset
from optimlab.devices import resolve_device
from optimlab.models import build_model
from optimlab.report.figures import constrained_panels
from optimlab.runfiles import atomic_save, load_checkpoint

FORMAT = "optimlab.example.constrained_logreg/1"
METRICS = ("train_loss", "train_acc", "multiplier", "violation")  # per batch, as the seed plots them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-10k")
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("runs/constrained-logreg"))
    parser.add_argument("--no-shuffle", action="store_true", help="batches in file order")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, device=device)
    x, y = data.x_train, data.y_train

    torch.manual_seed(args.seed)
    model = build_model("logreg", data.input_shape, data.num_classes).to(device)
    linear = model[1]

    def compute(inputs: torch.Tensor, targets: torch.Tensor) -> State:
        logits = model(inputs)
        sq_norm = linear.weight.pow(2).sum() + linear.bias.pow(2).sum()
        return State(F.cross_entropy(logits, targets), {"norm": sq_norm - 1.0},  # g = |theta|^2 - 1 <= 0
                     misc={"accuracy": (logits.argmax(1) == targets).float().mean()})

    problem = Problem(compute, {"norm": Constraint("<=")}).to(device)
    opt = ConstrainedOptimizer(problem, torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True),
                               torch.optim.SGD(problem.dual_parameters(), lr=1e-3))

    order = torch.Generator().manual_seed(args.seed)
    metrics: dict[str, list] = {"batch": [], **{k: [] for k in METRICS}}
    start_epoch, path = 0, args.out / "checkpoint.pt"
    if path.exists():
        ckpt = load_checkpoint(path, FORMAT)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        order.set_state(ckpt["order"])
        metrics, start_epoch = ckpt["metrics"], ckpt["epoch"] + 1
        print(f"resumed from {path} after epoch {start_epoch}")
    args.out.mkdir(parents=True, exist_ok=True)

    for epoch in range(start_epoch, args.epochs):
        batches = (torch.arange(data.num_train, device=device).split(args.batch_size) if args.no_shuffle
                   else epoch_batches(data.num_train, args.batch_size, order, device=device))
        rows = [opt.step(x[idx], y[idx]) for idx in batches]
        for r in rows:  # read the numbers once per epoch: no device sync inside the loop
            metrics["batch"].append(r.step)
            metrics["train_loss"].append(r.loss.item())
            metrics["train_acc"].append(r.misc["accuracy"].item())
            metrics["multiplier"].append(r.multipliers["norm"].item())
            metrics["violation"].append(r.violations["norm"].item())
        atomic_save({"format": FORMAT, "epoch": epoch, "model": model.state_dict(),
                     "optimizer": opt.state_dict(), "order": order.get_state(), "metrics": metrics}, path)
        print(f"epoch {epoch + 1}: loss {metrics['train_loss'][-1]:.4f}, violation "
              f"{metrics['violation'][-1]:+.4f}, multiplier {problem.multipliers()['norm'].item():.4f}")

    with torch.no_grad():
        test_acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
        sq_norm = sum(p.pow(2).sum() for p in model.parameters()).item()
    print(f"{args.dataset}: test accuracy {100 * test_acc:.2f}%, squared norm {sq_norm:.4f} "
          f"(violation {sq_norm - 1:+.4f}), multiplier {problem.multipliers()['norm'].item():.4f}")
    figure(metrics, args.out / "figure.png")


def figure(metrics: dict, path: Path) -> None:
    """The seed's four panels, drawn by the library's plot of a constrained run's records."""
    rows = [{"step": b, "loss": loss, "accuracy": acc, "multiplier_norm": lam, "violation_norm": g}
            for b, loss, acc, lam, g in zip(metrics["batch"], metrics["train_loss"], metrics["train_acc"],
                                            metrics["multiplier"], metrics["violation"], strict=True)]
    constrained_panels(rows, path, "logistic regression, squared L2 norm <= 1")
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
