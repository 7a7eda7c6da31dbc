"""Muon on the matrices, AdamW on the rest: torch's recipe for Muon as one ``torch.optim`` optimizer.

``torch.optim.Muon`` only takes 2-D parameters; its documentation says that the other parameters
("such as bias, and embedding") should be optimized by a standard method such as AdamW, and its
example splits ``model.parameters()`` by ``p.ndim == 2``. :class:`MuonWithAdamW` does that split and
drives one ``torch.optim.Muon`` and one ``torch.optim.AdamW`` behind the ``torch.optim.Optimizer``
protocol, so schedulers, checkpoints and training loops take it like any torch optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["MuonWithAdamW"]

# torch.optim.Muon's defaults (torch/optim/_muon.py: the quintic Newton-Schulz coefficients, eps, steps)
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_NS_EPS = 1e-7
_NS_STEPS = 5

# keys of a param group that belong to one side only; every other key (lr, weight_decay, user metadata)
# goes to both. ``ns_eps`` is stored in the Muon group under torch's own name, ``eps``.
_MUON_ONLY = frozenset({"momentum", "nesterov", "ns_coefficients", "ns_eps", "ns_steps", "adjust_lr_fn"})
_ADAMW_ONLY = frozenset(
    {"betas", "eps", "amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable"}
)


class MuonWithAdamW(torch.optim.Optimizer):
    r"""``torch.optim.Muon`` on the 2-D parameters, ``torch.optim.AdamW`` on all others, one learning rate.

    Which parameter goes where:

    * 2-D tensors (``nn.Linear`` weights and any other matrix) -> Muon.
    * everything else -> AdamW: biases and norm scales (1-D), scalars, and conv kernels (3-D/4-D/5-D).
      ``torch.optim.Muon`` rejects non-2-D parameters and its docs recommend AdamW for them; flattening
      a conv kernel to a matrix would be a different algorithm from torch's, so it is not done here.
    * embeddings are 2-D but torch's docs say they should be optimized by AdamW; a tensor alone does not
      say it is an embedding, so route them with a param group ``{"params": ..., "use_muon": False}``
      or build the optimizer with :meth:`from_module`, which does that for ``nn.Embedding`` /
      ``nn.EmbeddingBag`` weights. ``"use_muon": True`` forces a group's parameters onto Muon (they
      must be 2-D).

    Defaults, and why:

    * ``adjust_lr_fn="match_rms_adamw"`` (torch.optim.Muon's own default is ``None`` = ``"original"``):
      torch's Muon docs say this scaling (Moonshot's, lr * 0.2 * sqrt(max(A, B)) for an A x B matrix)
      makes the update's RMS match AdamW's so that "Muon can directly reuse the learning rate and weight
      decay tuned for AdamW" -- that is what makes one learning rate for both halves meaningful. With
      ``"original"`` (lr * sqrt(max(1, A/B))) torch's own example uses separate lrs (0.02 for Muon,
      3e-4 for AdamW), which this class cannot express with a single ``lr``.
    * ``lr=1e-3``: the default of both ``torch.optim.Muon`` and ``torch.optim.AdamW``.
    * ``weight_decay=0.1``, one value for both halves: both torch classes apply the same decoupled decay
      ``p *= 1 - lr * weight_decay`` (with the unadjusted lr), so one value means the same thing on both
      sides, and under ``match_rms_adamw`` torch's docs say the AdamW-tuned weight decay carries over.
      0.1 is ``torch.optim.Muon``'s default (``torch.optim.AdamW``'s is 0.01). For other values per
      part -- e.g. no decay on biases -- use param groups.
    * ``momentum=0.95, nesterov=True, ns_coefficients, ns_steps=5`` and ``ns_eps=1e-7``: torch.optim.Muon's
      defaults; ``betas=(0.9, 0.999), eps=1e-8, amsgrad=False, foreach=None, fused=None``:
      torch.optim.AdamW's. Both classes have an ``eps``: here ``eps`` is AdamW's (denominator term) and
      ``ns_eps`` is Muon's (the norm clamp before Newton-Schulz), stored in the Muon group as ``eps``.

    Param groups are supported: each group given (a dict with ``params`` and any of the hyperparameters
    above, plus optionally ``use_muon``) is split into a Muon group and an AdamW group (one of them is
    left out when it would be empty; a group with no parameters at all is a ``ValueError``). Muon-only
    keys go to the Muon group, AdamW-only keys to the AdamW group, all other keys (``lr``,
    ``weight_decay``, anything else) to both. ``param_groups`` is the list of those inner groups --
    the very dicts ``torch.optim.Muon`` and ``torch.optim.AdamW`` step with, each marked with
    ``use_muon`` -- so an lr scheduler that sets ``group["lr"]`` changes both optimizers. ``state`` is
    one mapping shared by both, so ``optimizer.state[p]`` holds Muon's ``momentum_buffer`` or AdamW's
    ``exp_avg``/``exp_avg_sq``/``step``. ``state_dict()`` is the standard torch layout (parameter
    indices over ``param_groups``; tensors and plain values only, loadable with
    ``torch.load(..., weights_only=True)``).

    The update is linear in the learning rate at each step: both halves do
    ``p <- p - lr * (weight_decay * p + s * d)``, with ``d`` the orthogonalized momentum (Muon) or
    ``m_hat / (sqrt(v_hat) + eps)`` (AdamW), which depend on the gradient history only, and ``s`` a
    constant of the matrix shape (``adjust_lr_fn``; 1 for AdamW). Over several steps the displacement
    ``p_k - p_0`` is linear in ``lr`` only when ``weight_decay == 0``: the decoupled decay compounds
    (``(1 - lr * weight_decay) ** k``), exactly as in ``torch.optim.AdamW`` itself.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = _NS_COEFFICIENTS,
        ns_eps: float = _NS_EPS,
        ns_steps: int = _NS_STEPS,
        adjust_lr_fn: str | None = "match_rms_adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if not hasattr(torch.optim, "Muon"):
            raise RuntimeError(f"MuonWithAdamW needs torch.optim.Muon, which torch {torch.__version__} lacks")
        self._muon_kwargs = {
            "lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
            "ns_coefficients": ns_coefficients, "eps": ns_eps, "ns_steps": ns_steps,
            "adjust_lr_fn": adjust_lr_fn,
        }
        self._adamw_kwargs = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad,
            "foreach": foreach, "fused": fused,
        }
        self._muon: torch.optim.Muon | None = None
        self._adamw: torch.optim.AdamW | None = None
        defaults = {
            "lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
            "ns_coefficients": ns_coefficients, "ns_eps": ns_eps, "ns_steps": ns_steps,
            "adjust_lr_fn": adjust_lr_fn, "betas": betas, "eps": eps, "amsgrad": amsgrad,
            "foreach": foreach, "fused": fused,
        }
        # torch's Optimizer.__init__ turns params into groups (ValueError when empty) and calls our
        # add_param_group for each, which splits it between the two inner optimizers.
        super().__init__(params, defaults)
        # the hyperparameters of a side without parameters are still checked, by torch's own class
        probe = [torch.zeros(2, 2, requires_grad=True)]
        if self._muon is None:
            torch.optim.Muon(probe, **self._muon_kwargs)
        if self._adamw is None:
            torch.optim.AdamW(probe, **{k: v for k, v in self._adamw_kwargs.items()
                                        if k not in ("foreach", "fused")})

    @classmethod
    def from_module(cls, module: nn.Module, **kwargs: Any) -> MuonWithAdamW:
        """The optimizer for ``module.parameters()``, with embedding weights on AdamW (as torch's docs say).

        ``nn.Embedding`` and ``nn.EmbeddingBag`` weights (and anything tied to them) go to AdamW, the
        other parameters are split by shape. ``kwargs`` are the constructor's hyperparameters.
        """
        embedding = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)}
        params = list(module.parameters())
        groups = [
            {"params": [p for p in params if id(p) not in embedding]},
            {"params": [p for p in params if id(p) in embedding], "use_muon": False},
        ]
        return cls([g for g in groups if g["params"]], **kwargs)

    @property
    def muon(self) -> torch.optim.Muon | None:
        """The inner ``torch.optim.Muon`` (``None`` when no parameter is routed to Muon)."""
        return self._muon

    @property
    def adamw(self) -> torch.optim.AdamW | None:
        """The inner ``torch.optim.AdamW`` (``None`` when no parameter is routed to AdamW)."""
        return self._adamw

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Split ``param_group`` into a Muon group (2-D) and an AdamW group (the rest) and add them."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise ValueError(
                "MuonWithAdamW: params must be an iterable of Tensors, of (name, Tensor) pairs, or of "
                "param-group dicts with a 'params' entry; got an element of type "
                f"{type(param_group).__name__}"
            )
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, not a set")
        else:
            params = list(params)
        use_muon = param_group.get("use_muon")
        if use_muon not in (None, True, False):
            raise ValueError(f"MuonWithAdamW: 'use_muon' must be True, False or absent; got {use_muon!r}")
        if not params:
            raise ValueError("MuonWithAdamW: a parameter group has no parameters")

        seen = {id(p) for group in self.param_groups for p in group["params"]}
        parts: dict[bool, list] = {True: [], False: []}
        for item in params:
            tensor = item[1] if isinstance(item, tuple) and len(item) == 2 else item
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(
                    "MuonWithAdamW: cannot split a parameter group holding a "
                    f"{type(tensor).__name__}; give Tensors, (name, Tensor) pairs, or a list of "
                    "param-group dicts (not a mix)"
                )
            if id(tensor) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            to_muon = tensor.ndim == 2 if use_muon is None else use_muon
            if to_muon and tensor.ndim != 2:
                raise ValueError(
                    f"MuonWithAdamW: use_muon=True for a parameter of shape {tuple(tensor.shape)}; "
                    "torch.optim.Muon takes 2-D parameters only"
                )
            parts[to_muon].append(item)

        options: dict[bool, dict[str, Any]] = {True: {}, False: {}}
        for key, value in param_group.items():
            if key in ("params", "use_muon"):
                continue
            if key in _MUON_ONLY:
                options[True]["eps" if key == "ns_eps" else key] = value
            elif key in _ADAMW_ONLY:
                options[False][key] = value
            else:
                options[True][key] = options[False][key] = value

        for kind in (True, False):
            if not parts[kind]:
                continue
            group = {"params": parts[kind], **options[kind], "use_muon": kind}
            self._inner_add(kind, group)  # torch's class completes the dict in place and keeps it
            self.param_groups.append(group)

    def _inner_add(self, kind: bool, group: dict[str, Any]) -> None:
        inner = self._muon if kind else self._adamw
        if inner is not None:
            inner.add_param_group(group)
            return
        if kind:
            self._muon = inner = torch.optim.Muon([group], **self._muon_kwargs)
        else:
            self._adamw = inner = torch.optim.AdamW([group], **self._adamw_kwargs)
        inner.state = self.state

    def _inner_optimizers(self) -> list[torch.optim.Optimizer]:
        return [opt for opt in (self._muon, self._adamw) if opt is not None]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of Muon on the matrices and AdamW on the rest; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self._inner_optimizers():
            opt.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` (torch's layout) and hand the loaded groups back to Muon and AdamW."""
        kinds = [group["use_muon"] for group in self.param_groups]
        saved = state_dict["param_groups"]
        if len(saved) == len(kinds):
            for i, (kind, group) in enumerate(zip(kinds, saved, strict=True)):
                if "use_muon" in group and bool(group["use_muon"]) != kind:
                    raise ValueError(
                        f"loaded state dict's parameter group {i} is for "
                        f"{'Muon' if group['use_muon'] else 'AdamW'}, this optimizer's is for "
                        f"{'Muon' if kind else 'AdamW'}"
                    )
        super().load_state_dict(state_dict)  # replaces self.state and the group dicts
        for kind, group in zip(kinds, self.param_groups, strict=True):
            group["use_muon"] = kind
        for kind, opt in ((True, self._muon), (False, self._adamw)):
            if opt is not None:
                groups = [g for g in self.param_groups if g["use_muon"] == kind]
                opt.__setstate__({"state": self.state, "param_groups": groups})

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(
            _muon=self._muon, _adamw=self._adamw, _muon_kwargs=self._muon_kwargs,
            _adamw_kwargs=self._adamw_kwargs,
        )
        return state
