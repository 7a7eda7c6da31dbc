"""What users pick instead of tuning a learning rate: learning-rate-free optimizers and Lion, by name,
each from its own package (the extra ``optimlab[baselines]``; nothing of theirs is copied here).

=====================  ==========================================  ==============  ==========
name                   class (package)                             lr-linear       default lr
=====================  ==========================================  ==============  ==========
prodigy                ``prodigyopt:Prodigy``                      no              1.0
dadapt-adam            ``dadaptation:DAdaptAdam``                  no              1.0
dadapt-sgd             ``dadaptation:DAdaptSGD``                   no              1.0
dog                    ``dog:DoG`` (dog-optimizer)                 no              1.0
schedulefree-adamw     ``schedulefree:AdamWScheduleFree``          no              0.0025
schedulefree-sgd       ``schedulefree:SGDScheduleFree``            no              1.0
lion                   ``lion_pytorch:Lion`` (lion-pytorch)        yes (stacked)   1e-4
=====================  ==========================================  ==============  ==========

The default learning rates are the packages' own: 1.0 for the methods that estimate the step size
themselves (their ``lr`` multiplies the estimate). Lion's step ``p <- p - lr * (sign(m) + wd * p)``
is lr-linear and entry by entry, so a vectorized study stacks its runs (:func:`optimlab.registry.
probe_stacking` checks it); the others estimate from the trajectory, which depends on ``lr``, and are
trained run by run. The schedule-free ones have an evaluation point apart from their training point
(``optimizer.eval()`` / ``optimizer.train()``): :mod:`optimlab.engine.modes` handles it for them and
for any optimizer with those two methods. Any class of ``pytorch-optimizer`` (or another package)
is reached by its import path, e.g. ``pytorch_optimizer:Lamb``.

A name is listed whether or not its package is installed; building it without the package is an
:class:`~optimlab.errors.OptimlabError` naming the package and the extra.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass

from optimlab.errors import OptimlabError
from optimlab.optimizers import OptimizerEntry

EXTRA = "baselines"


@dataclass(frozen=True)
class Deferred:
    """A class of another package, imported when first used: ``path`` is ``module:Class``,
    ``package`` the distribution that provides it (what ``pip install`` takes)."""

    name: str
    path: str
    package: str

    def target(self) -> type:
        module, _, attribute = self.path.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except ImportError:
            raise OptimlabError(
                f"optimizer {self.name!r} comes from the package {self.package}, which is not installed: "
                f"pip install 'optimlab[{EXTRA}]' (or pip install {self.package})") from None

    def installed(self) -> bool:
        return importlib.util.find_spec(self.path.partition(":")[0]) is not None

    def __call__(self, params, **options):
        return self.target()(params, **options)

    @property
    def __signature__(self) -> inspect.Signature:  # what inspect.signature reads: the class's own
        return inspect.signature(self.target())


def _baseline(name: str, path: str, package: str, *, linear: bool = False) -> OptimizerEntry:
    return OptimizerEntry(name, Deferred(name, path, package), lr_linear=linear, elementwise=linear,
                          source=f"{EXTRA} ({package})")


BASELINES: dict[str, OptimizerEntry] = {e.name: e for e in (
    _baseline("prodigy", "prodigyopt:Prodigy", "prodigyopt"),
    _baseline("dadapt-adam", "dadaptation:DAdaptAdam", "dadaptation"),
    _baseline("dadapt-sgd", "dadaptation:DAdaptSGD", "dadaptation"),
    _baseline("dog", "dog:DoG", "dog-optimizer"),
    _baseline("schedulefree-adamw", "schedulefree:AdamWScheduleFree", "schedulefree"),
    _baseline("schedulefree-sgd", "schedulefree:SGDScheduleFree", "schedulefree"),
    _baseline("lion", "lion_pytorch:Lion", "lion-pytorch", linear=True),
)}


def installed(entry: OptimizerEntry) -> bool:
    """Whether ``entry``'s package is importable (True for every entry that is not a baseline)."""
    return not isinstance(entry.factory, Deferred) or entry.factory.installed()
