"""optimlab: a PyTorch toolkit for optimization in machine learning.

Train under constraints, study optimizers, set learning rates from the local problem. The pieces:
``optimlab.data`` (data sets as device tensors), ``optimlab.models``, ``optimlab.optimizers``
(``torch.optim`` by name) and ``optimlab.training`` (one run, with checkpoints and metrics).
"""

import os

__version__ = "0.1.0"

# Same seed, same numbers on the CPU: MKL may otherwise change its number of threads with the
# machine's load (MKL_DYNAMIC), and with it the rounding of matrix products. Set before MKL starts
# (optimlab is imported before torch's first product); a user's own setting wins.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

from optimlab.errors import OptimlabError  # noqa: E402

__all__ = ["OptimlabError", "__version__", "lr_find"]


def __getattr__(name: str):
    if name == "lr_find":  # imported when first used: ``import optimlab`` stays light
        from optimlab.rangetest import lr_find

        return lr_find
    raise AttributeError(f"module 'optimlab' has no attribute {name!r}")
