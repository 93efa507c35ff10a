"""What a method's training step hands back to the base class: the step contract.

A method says how a training batch becomes a loss (``ClassifierModule.step``); it returns a
:class:`StepOutput` and the base class does everything else: it logs ``train/loss`` and
``train/acc`` (measured on ``logits`` against ``target``), logs the method's extra values and
returns the loss to Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

LogValue = torch.Tensor | float


@dataclass
class StepOutput:
    """One training step's result.

    - ``loss``: the scalar that is back-propagated (and logged as ``train/loss``).
    - ``logits``, ``target``: what ``train/acc`` is measured on (e.g. the adversarial batch's
      logits and its labels); ``logits`` is detached by the base class.
    - ``logs``: extra epoch means, ``{name: (value, n)}`` with ``n`` the value's weight in the
      epoch mean (None: the batch size). Filled with :meth:`log`; logged in insertion order,
      before ``train/loss`` and ``train/acc``. Values are read when the step returns.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    logs: dict[str, tuple[LogValue, int | None]] = field(default_factory=dict)

    def log(self, name: str, value: LogValue, n: int | None = None) -> None:
        """Record ``value`` as an epoch mean under ``name`` (e.g. ``train/clean_loss``), weighted by ``n``."""
        if name in self.logs:
            raise ValueError(f"step logged {name!r} twice")
        self.logs[name] = (value, n)
