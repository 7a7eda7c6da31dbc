"""Study stores with hand-made results, so that every number of a report is known in advance."""

from optimlab.study.spec import parse_study
from optimlab.study.store import StudyStore

LRS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def _study(optimizers, lrs, seeds, constraints=None, dual_lrs=None):
    extra = f"constraints = {constraints!r}\ndual_learning_rates = {dual_lrs!r}\n" if constraints else ""
    return parse_study(f"""
name = "made-up"
dataset = "mnist-10k"
model = "logreg"
epochs = 4
optimizers = {optimizers!r}
learning_rates = {lrs!r}
seeds = {seeds!r}
{extra}""".replace("'", '"'))


def evals(accs, losses=None, per_epoch=10, val=None):
    """Rows at steps 0, 10, 20, ... with the given test accuracies (and train losses, and
    validation accuracies: then the rows have validation columns)."""
    losses = losses or [1.0 - a for a in accs]
    rows = [{"step": i * per_epoch, "epoch": float(i), "batch_loss": None, "train_loss": loss,
             "train_accuracy": None, "test_loss": loss, "test_accuracy": acc, "lr": 0.1,
             "wall_time": 2.0 * i} for i, (acc, loss) in enumerate(zip(accs, losses, strict=True))]
    for row, v in zip(rows, val or [], strict=False):
        row.update(val_loss=1.0 - v, val_accuracy=v)
    return rows


def fill(path, spec, outcome):
    """``outcome(optimizer, lr, seed)`` (and ``dual_lr`` in a constrained study) -> None (leave
    pending), ("diverged", step, rows), rows, or (rows, train_log rows)."""
    store = StudyStore.create(path, spec)
    for run in store.runs():
        dual = [run["dual_lr"]] if run["dual_lr"] is not None else []
        task = {"task": run["task"]} if run["task"] is not None else {}
        got = outcome(run["optimizer"], run["lr"], run["seed"], *dual, **task)
        if got is None:
            continue
        log = []
        if isinstance(got, tuple) and len(got) == 2:
            got, log = got
        status, diverged_at, rows = ("completed", None, got) if isinstance(got, list) else got
        store.start_unit(f"run:{run['id']}", [run["id"]])
        store.commit(f"run:{run['id']}", [run["id"]], None, [{
            "status": status, "steps": rows[-1]["step"] if rows else 0, "diverged_at": diverged_at,
            "wall_time": 1.0, "evals": rows, "train_log": log}], finished=True)
    store.close()
    return path


# final test accuracy of optimizer "sgd" by learning rate, for seeds 0, 1, 2
SGD_FINAL = {1e-4: [0.50, 0.52, 0.48], 1e-3: [0.891, 0.893, 0.892], 1e-2: [0.90, 0.91, 0.89],
             1e-1: [0.895, 0.897, 0.893]}


def standard(opt, lr, seed):
    if opt == "sgd":
        if lr == 1.0:
            return ("diverged", 7, evals([0.1]))  # only the step-0 row, then divergence
        final = SGD_FINAL[lr][seed]
        return evals([0.1, final * 0.8, final * 0.96, final])
    # adam: flat 0.8 everywhere, never reaches the target; lr 1 fine
    return evals([0.1, 0.7, 0.78, 0.8])


