"""Learning rates from the accurate local problem: exact local flows, a curvature scheduler, pictures.

    ExactFlow(model, lr=h).step(x, y)                # linear models: the batch's exact gradient flow
    sched = CurvatureScheduler(torch.optim.SGD(...)) # any model: lr = (1 - exp(-h lambda)) / lambda
    projection_picture(model, loss_fn, x, y)         # the seed's (q . theta, q . grad l_B) picture

The mathematics is in docs/LOCAL_FLOW.md (shared docs).
"""

from optimlab.localflow.exact import ExactFlow, linear_layer
from optimlab.localflow.flows import (
    classification_flow,
    flow_factor,
    least_squares_flow,
    logistic_one_sample_flow,
)
from optimlab.localflow.picture import Picture, principal_direction, projection_picture, save_picture
from optimlab.localflow.scheduler import CurvatureScheduler, EpochLR, epoch_lrs

__all__ = [
    "CurvatureScheduler",
    "EpochLR",
    "ExactFlow",
    "Picture",
    "classification_flow",
    "epoch_lrs",
    "flow_factor",
    "least_squares_flow",
    "linear_layer",
    "logistic_one_sample_flow",
    "principal_direction",
    "projection_picture",
    "save_picture",
]
