"""Training losses by name, like strategies: `loss.name` for every stage that sees target data
(conf/loss/), or a regime stage's own `loss: {name: ..., ...}` (conf/regime/self_distill.yaml).

A loss is a frozen dataclass of its keys (typed and checked like a strategy's Params) that is
called as `loss(logits, labels, inputs)`; `inputs` is what the model saw (after preprocessing),
for a loss that runs a teacher on it. Validation loss stays plain cross-entropy whatever trains,
so a stage's val_loss curves compare across losses.

- `ce`: cross-entropy, with optional label smoothing (Szegedy et al. 2016).
- `distill`: knowledge distillation (Hinton et al. 2015): `weight` x T^2 KL(teacher || student)
  at temperature T, plus (1 - weight) x cross-entropy on the labels. The teacher is
  `previous`, the previous stage's result as it ended (its best epoch, head included, frozen in
  eval mode): with `init: start` on the same stage, that is self-distillation into a fresh copy
  (Furlanello et al. 2018, born-again networks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from transfersweep.errors import ConfigError

if TYPE_CHECKING:  # torch loads when a loss is called: config checks stay fast
    import torch

_LOSSES: dict[str, type[Loss]] = {}

TEACHERS = ("previous",)  # the only teacher with trained logits for the stage's classes


def register(cls: type[Loss]) -> type[Loss]:
    _LOSSES[cls.name] = cls
    return cls


def names() -> list[str]:
    return list(_LOSSES)


@dataclass(frozen=True)
class Loss:
    name: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = False  # runs a teacher model on the inputs
    label_smoothing: float = 0.0

    def check(self, where: str) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"{where}.label_smoothing={self.label_smoothing!r} is invalid: use a value in [0, 1)"
            )

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, inputs: torch.Tensor, teacher: Any = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """`weight`: per-class weights of the cross-entropy (data.*.balance=loss), or None."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name} | dataclasses.asdict(self)


@register
@dataclass(frozen=True)
class CrossEntropy(Loss):
    name: ClassVar[str] = "ce"

    def __call__(self, logits, y, inputs, teacher=None, weight=None):
        import torch.nn.functional as F

        return F.cross_entropy(logits, y, weight=weight, label_smoothing=self.label_smoothing)


@register
@dataclass(frozen=True)
class Distill(Loss):
    name: ClassVar[str] = "distill"
    uses_teacher: ClassVar[bool] = True
    teacher: str = "previous"
    temperature: float = 2.0
    weight: float = 0.5  # of the teacher's soft targets; the labels get 1 - weight

    def check(self, where: str) -> None:
        super().check(where)
        if self.teacher not in TEACHERS:
            raise ConfigError(
                f"{where}.teacher={self.teacher!r} is invalid: use previous (the previous "
                "stage's result). A stage's own start has no trained head for its classes "
                "(every stage begins with a fresh one), so it cannot teach"
            )
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature={self.temperature!r}: use a positive value")
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"{where}.weight={self.weight!r}: use a value in [0, 1]")

    def __call__(self, logits, y, inputs, teacher=None, weight=None):
        import torch
        import torch.nn.functional as F

        assert teacher is not None, "distill needs its teacher (stages passes it)"
        with torch.no_grad():
            # a joint teacher's target logits come first (data.TransferData): the student's
            # classes are its first columns
            soft = teacher(inputs).float()[:, : logits.shape[1]]
        t = self.temperature
        kl = F.kl_div(
            F.log_softmax(logits / t, dim=1), F.log_softmax(soft / t, dim=1),
            reduction="batchmean", log_target=True,
        )  # fmt: skip
        hard = F.cross_entropy(logits, y, weight=weight, label_smoothing=self.label_smoothing)
        return self.weight * t * t * kl + (1.0 - self.weight) * hard


def from_config(values: Mapping[str, Any] | None, where: str = "loss") -> Loss:
    """The loss a config describes (`name` and its keys), checked; None = plain cross-entropy."""
    values = dict(values.items()) if values is not None else {"name": "ce"}
    name = str(values.pop("name", "ce"))
    cls = _LOSSES.get(name)
    if cls is None:
        raise ConfigError(
            f"{where}.name={name!r} is not a loss: choose one of {', '.join(names())}"
        )
    keys = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}={values[unknown[0]]!r} is not a key of loss {name!r} (its "
            f"keys: {', '.join(keys)})"
        )
    typed = {}
    for k, v in values.items():
        kind = type(getattr(cls, k))  # the default's type: float or str
        try:
            typed[k] = kind(v)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}.{k}={v!r} is invalid for loss {name!r}: give a {kind.__name__}"
            ) from None
    loss = cls(**typed)
    loss.check(where)
    return loss
