"""An engine's handler list: nested lists flattened, MLflow handlers of one run merged, and failure first.

The engine knows trackers only by what they do: a handler with a ``fail(error)`` method (the tracking
package's :class:`~breastseg.workflows.tracking.runs.ResilientMLFlowHandler`) is told when its engine
raises, before any other handler can stop the engine. So tracking plugs into the engine through its
handlers, and the engine imports nothing from tracking.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from ignite.engine import Events
from monai.handlers import MLFlowHandler

__all__ = ["EndRunsOnFailure", "unique_trackers", "every"]

# the messages are about MLflow runs: they keep the tracking logger's name
logger = logging.getLogger("breastseg.tracking")


class EndRunsOnFailure:
    """End the MLflow runs of an engine's trackers FAILED, with the reason, when the engine raises.

    :func:`unique_trackers` lists it first among an engine's handlers: Ignite stops at the first
    ``EXCEPTION_RAISED`` handler that raises (MONAI's ``StatsHandler`` does), so it must come before them.
    """

    def __init__(self, trackers: Iterable[Any]) -> None:
        self.trackers = list(trackers)

    def attach(self, engine: Any) -> None:
        if not engine.has_event_handler(self, Events.EXCEPTION_RAISED):
            engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Any, error: BaseException) -> None:
        for run_tracker in self.trackers:
            if run_tracker.run_id is not None:
                logger.error("MLflow run %s ends FAILED: %s: %s", run_tracker.run_name, type(error).__name__, error)
            run_tracker.fail(error)
        raise error


def unique_trackers(handlers: Iterable[Any]) -> list[Any]:
    """Drop plain MLflow handlers that target the same run as a handler already in the list.

    ``--tracking mlflow`` appends MONAI's own ``MLFlowHandler`` to the bundle's handler lists. The
    bundle already defines ``tracking_uri``, ``experiment_name`` and ``run_name``, which MONAI reuses,
    so the appended handler would log every value a second time into the same run.

    When the list holds trackers (handlers with a ``fail(error)`` method, as the tracking package's
    ``ResilientMLFlowHandler``), an :class:`EndRunsOnFailure` of them comes first.
    """
    kept: list[Any] = []
    seen: set[tuple] = set()
    for handler in handlers:
        if isinstance(handler, MLFlowHandler):
            key = (handler.experiment_name, handler.run_name)
            if key in seen:
                logger.info("tracking: run %r is already tracked by the bundle; extra MLflow handler merged", handler.run_name)
                continue
            seen.add(key)
        kept.append(handler)
    trackers = [handler for handler in kept if callable(getattr(handler, "fail", None))]
    return [EndRunsOnFailure(trackers), *kept] if trackers else kept


def every(steps: int):
    """An event filter true every ``steps`` events (MONAI handlers' ``iteration_log`` / ``epoch_log``)."""
    return lambda engine, event: event % steps == 0
