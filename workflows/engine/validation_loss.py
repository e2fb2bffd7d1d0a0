"""The training loss on the validation set, for schedules and early stopping that watch it.

The evaluator's post-processing turns logits into a binary ``pred``; :func:`logits_postprocessing` keeps a
copy of the logits under ``logits`` first, and :func:`validation_loss_metric` averages any loss of
``(logits, label)`` over the validation set (per batch, weighted by batch size; reduced across DDP ranks
by ignite) as ``engine.state.metrics[name]``. A ``ReduceLROnPlateau(mode="min")`` then steps on it through
:func:`breastseg.workflows.engine.harness.lr_schedule_handler` with ``key_metric=name``.
"""

from __future__ import annotations

from typing import Any, Callable

from ignite.metrics import Loss
from monai.transforms import Compose, CopyItemsd

from breastseg.workflows.engine.postprocessing import binary_postprocessing

__all__ = ["logits_postprocessing", "validation_loss_metric"]


def logits_postprocessing(threshold: float = 0.5) -> Compose:
    """:func:`~breastseg.workflows.engine.postprocessing.binary_postprocessing` that keeps the logits under ``logits``."""
    return Compose([CopyItemsd(keys="pred", names="logits"), binary_postprocessing(threshold)])


def validation_loss_metric(loss_function: Callable[..., Any], name: str = "val_loss") -> dict[str, Loss]:
    """``{name: metric}`` for the evaluator's ``additional_metrics``: the mean of ``loss_function(logits, label)``.

    Needs :func:`logits_postprocessing` (or any post-processing leaving ``logits`` in the output).

    Raises:
        KeyError: at the first validation batch, when the output has no ``logits``.
    """

    def logits_and_label(output: dict[str, Any]) -> tuple[Any, Any]:
        if "logits" not in output:
            raise KeyError("validation loss needs the logits: use validation_loss.logits_postprocessing()")
        return output["logits"], output["label"]

    return {name: Loss(loss_function, output_transform=logits_and_label)}
