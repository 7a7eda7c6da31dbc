"""optimlab: a PyTorch toolkit for optimization in machine learning.

Train under constraints, study optimizers, set learning rates from the local problem. The pieces:
``optimlab.data`` (data sets as device tensors), ``optimlab.models``, ``optimlab.optimizers``
(``torch.optim`` by name) and ``optimlab.training`` (one run, with checkpoints and metrics).
"""

__version__ = "0.1.0"

from optimlab.errors import OptimlabError  # noqa: E402

__all__ = ["OptimlabError", "__version__"]
