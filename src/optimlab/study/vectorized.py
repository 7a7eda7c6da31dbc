"""The vectorized engine under the name it had in 0.1.0: :func:`train_group` and friends live in
:mod:`optimlab.engine.group` (the group) and :mod:`optimlab.engine.stacking` (the stacked models)."""

from optimlab.engine.group import GROUP_FORMAT, check_group, group_refusal, train_group, vectorizable_key
from optimlab.engine.stacking import stacking_refusal

__all__ = ["GROUP_FORMAT", "check_group", "group_refusal", "stacking_refusal", "train_group",
           "vectorizable_key"]
