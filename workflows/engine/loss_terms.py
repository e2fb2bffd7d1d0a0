"""Per-epoch logging of the terms a loss exposes (e.g. the AW-loss head weights of paper 000).

Any loss with a ``terms`` dict of scalar tensors or floats (name -> value of the last call) can be followed:
the handler averages every term over the epoch's iterations and puts the means into ``engine.state.metrics``,
where the MLflow tracker's epoch log and the trainer's stats log pick them up. The sums stay on the device
and are read once per epoch (a loss should keep its terms as detached tensors: a float per step is a host
sync per step). List it in the trainer's
handlers **before** the tracker, so the values are there when the tracker logs the epoch.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["LossTermsAverage", "loss_value"]

logger = logging.getLogger("breastseg.loss_terms")


def loss_value(output: Any) -> float:
    """The scalar training loss of a (non-decollated) trainer output, read from the device (log lines only:
    the loop itself never calls it per step)."""
    loss = output["loss"] if isinstance(output, dict) else output
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


class LossTermsAverage:
    """Mean of ``getattr(loss, attribute)`` over each epoch into ``engine.state.metrics``.

    Args:
        loss: the loss object (its ``attribute`` is read after every iteration).
        attribute: name of the dict of scalar tensors (or floats) on ``loss``.
        prefix: prepended to each metric name.

    Raises:
        AttributeError: when ``loss`` has no ``attribute`` (a loss that exposes nothing cannot be followed).
    """

    def __init__(self, loss: Any, attribute: str = "terms", prefix: str = "") -> None:
        if not hasattr(loss, attribute):
            raise AttributeError(f"{type(loss).__name__} has no attribute {attribute!r} to log per epoch.")
        self.loss = loss
        self.attribute = attribute
        self.prefix = prefix
        self._totals: dict[str, Any] = {}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.reset, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def reset(self, engine: Engine) -> None:
        self._totals, self._count = {}, 0

    def update(self, engine: Engine) -> None:
        terms = getattr(self.loss, self.attribute)
        for name, value in terms.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self._totals[name] = self._totals.get(name, 0.0) + value
        self._count += 1

    def complete(self, engine: Engine) -> None:
        if not self._count:
            return
        names = list(self._totals)
        totals = [torch.as_tensor(total, dtype=torch.float32).cpu() for total in self._totals.values()]
        values = torch.stack(totals).tolist() if totals else []  # one read for every term
        means = {f"{self.prefix}{name}": value / self._count for name, value in zip(names, values)}
        engine.state.metrics.update(means)
        logger.info("epoch %d loss terms: %s", engine.state.epoch, ", ".join(f"{k}={v:.4f}" for k, v in means.items()))
