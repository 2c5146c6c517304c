"""Which optimiser trains which parameter: the backbone's SGD, and AdamW for a language-guided head's transformer.

A convolutional backbone trains well with SGD at a high learning rate; attention, MLPs and LayerNorms
do not (they want AdamW, a smaller learning rate and a warm-up). A fusion head is both, so its recipe
splits by module type: with the head's ``optimizer: adamw`` (:class:`~models.heads.HeadConfig`), the
head's ``nn.Linear`` and ``nn.LayerNorm`` parameters and its logit scale go to AdamW, with the head's
``lr``, ``warmup`` and ``weight_decay`` (decay on the linear weights only); every convolution and
BatchNorm, the head's as much as the backbone's, stays with the training config's SGD. With
``optimizer: sgd`` (and for the plain head) every parameter is in the one SGD group, as before.

Each group keeps its own peak learning rate and warm-up; every group follows the same poly decay
over the same schedule (:func:`~scaler.proxy.train.poly_lr`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from models import HeadConfig

__all__ = ["Optimizers", "ParamGroup", "param_groups"]


@dataclasses.dataclass
class ParamGroup:
    """One optimiser group: its parameters and how they train.

    Args:
        name: For people (``sgd``, ``adamw``, ``adamw_no_decay``).
        optimizer: ``sgd`` or ``adamw``.
        lr: Peak learning rate.
        weight_decay: Weight decay of this group.
        warmup_iters: Linear warm-up steps.
        names: The parameters' names in the model, in model order.
        params: The parameters themselves.
    """

    name: str
    optimizer: str
    lr: float
    weight_decay: float
    warmup_iters: int
    names: list[str]
    params: list[nn.Parameter]

    def summary(self) -> dict[str, Any]:
        """What a trial records: everything but the tensors (the parameter count instead)."""
        return {
            "name": self.name,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_iters": self.warmup_iters,
            "tensors": len(self.params),
            "params": sum(p.numel() for p in self.params),
        }


def _adamw_names(head: nn.Module) -> Iterator[tuple[str, bool]]:
    """The head's parameters AdamW trains: (name within the head, whether weight decay applies)."""
    for module_name, module in head.named_modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            prefix = f"{module_name}." if module_name else ""
            for name, _ in module.named_parameters(recurse=False):
                yield prefix + name, isinstance(module, nn.Linear) and name == "weight"
    if isinstance(getattr(head, "logit_scale", None), nn.Parameter):
        yield "logit_scale", False


def param_groups(
    model: nn.Module,
    head: HeadConfig,
    *,
    lr: float,
    weight_decay: float,
    warmup_iters: int,
    iters: int,
) -> list[ParamGroup]:
    """Split ``model``'s trainable parameters into the recipe's groups.

    Args:
        model: A network whose head is ``model.head``.
        head: Its head's config: ``optimizer`` decides whether AdamW groups exist.
        lr: The SGD group's peak learning rate (the training config's).
        weight_decay: The SGD group's weight decay (the training config's).
        warmup_iters: The SGD group's warm-up (the training config's).
        iters: The schedule's length (the AdamW warm-up is ``head.warmup`` of it, at least the SGD one).

    Returns:
        The non-empty groups, SGD first; every trainable parameter is in exactly one.
    """
    params = dict(model.named_parameters())
    adamw: dict[str, bool] = {}
    if head.language_guided and head.optimizer == "adamw":
        adamw = {f"head.{name}": decay for name, decay in _adamw_names(model.head)}
    head_warmup = max(warmup_iters, round(head.warmup * iters))
    groups = [
        ParamGroup("sgd", "sgd", lr, weight_decay, warmup_iters, [], []),
        ParamGroup("adamw", "adamw", head.lr, head.weight_decay, head_warmup, [], []),
        ParamGroup("adamw_no_decay", "adamw", head.lr, 0.0, head_warmup, [], []),
    ]
    for name, p in params.items():
        if not p.requires_grad:
            continue
        group = groups[0] if name not in adamw else groups[1] if adamw[name] else groups[2]
        group.names.append(name)
        group.params.append(p)
    return [g for g in groups if g.params]


class Optimizers:
    """SGD for the SGD groups and AdamW for the others, stepped and scheduled together.

    Its state dict is the SGD optimiser's own when there is no AdamW group (what checkpoints held
    before), else ``{"sgd": ..., "adamw": ...}``.
    """

    def __init__(self, groups: list[ParamGroup], *, momentum: float) -> None:
        def torch_groups(kind: str) -> list[dict[str, Any]]:
            return [
                {
                    "params": g.params,
                    "lr": g.lr,
                    "weight_decay": g.weight_decay,
                    "base_lr": g.lr,
                    "warmup_iters": g.warmup_iters,
                }
                for g in groups
                if g.optimizer == kind
            ]

        sgd, adamw = torch_groups("sgd"), torch_groups("adamw")
        self.sgd = torch.optim.SGD(sgd, lr=sgd[0]["lr"], momentum=momentum) if sgd else None
        self.adamw = torch.optim.AdamW(adamw, lr=adamw[0]["lr"]) if adamw else None
        self.all = [o for o in (self.sgd, self.adamw) if o is not None]

    def set_lr(self, lr_of: Any) -> float:
        """Set every group's learning rate to ``lr_of(base_lr, warmup_iters)``; returns the SGD group's."""
        first = None
        for optimizer in self.all:
            for group in optimizer.param_groups:
                group["lr"] = lr_of(group["base_lr"], group["warmup_iters"])
                first = group["lr"] if first is None else first
        return float(first or 0.0)

    def zero_grad(self) -> None:
        for optimizer in self.all:
            optimizer.zero_grad(set_to_none=True)

    def step(self, grad_scaler: torch.amp.GradScaler) -> None:
        for optimizer in self.all:
            grad_scaler.step(optimizer)

    def state_dict(self) -> dict[str, Any]:
        if self.adamw is None and self.sgd is not None:
            return self.sgd.state_dict()
        return {kind: o.state_dict() for kind, o in (("sgd", self.sgd), ("adamw", self.adamw)) if o is not None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` wrote (for the same groups).

        Raises:
            ValueError: The state is for other optimisers (a checkpoint of another recipe).
        """
        if self.adamw is None and self.sgd is not None and "param_groups" in state:
            self.sgd.load_state_dict(dict(state))
            return
        mine = {kind for kind, o in (("sgd", self.sgd), ("adamw", self.adamw)) if o is not None}
        if "param_groups" in state or set(state) != mine:
            raise ValueError(f"the checkpoint's optimiser state is not for {' + '.join(sorted(mine))}")
        for kind, o in (("sgd", self.sgd), ("adamw", self.adamw)):
            if o is not None:
                o.load_state_dict(state[kind])
