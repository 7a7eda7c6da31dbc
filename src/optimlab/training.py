"""One training run, as the public API has named it since 0.1.0: :class:`TrainConfig` and
:func:`train` (they live in :mod:`optimlab.engine`, with the loop they share with vectorized groups).
"""

from optimlab.engine.build import check_batch_size, init_model, load_data, task_of, total_steps
from optimlab.engine.config import FORMULATIONS, TrainConfig
from optimlab.engine.records import EVAL_BATCH, RunProgress, RunResult, evaluate, loss_function
from optimlab.engine.run import CHECKPOINT, CHECKPOINT_FORMAT, RANDOM_STREAM, train

__all__ = [
    "CHECKPOINT", "CHECKPOINT_FORMAT", "EVAL_BATCH", "FORMULATIONS", "RANDOM_STREAM", "RunProgress",
    "RunResult", "TrainConfig", "check_batch_size", "evaluate", "init_model", "load_data",
    "loss_function", "task_of", "total_steps", "train",
]
