"""MLflow tracking for every training and evaluation run, with no extra flags.

- The store is ``MLFLOW_TRACKING_URI`` when set, else the SQLite file ``mlflow/mlruns.db`` of the project
  (artifacts in ``mlflow/artifacts``), as ``mlflow/settings.json`` says.
- A server that cannot be reached at start fails within seconds with a message naming the URI;
  one lost mid-run only produces warnings (:class:`ResilientMLFlowHandler`): training goes on and
  checkpoints are still written.
- Run names are unique (``<bundle>-<workflow>-<UTC time>-<random>``): MONAI's handler would otherwise
  attach to any unfinished run of the experiment.
- Parameters are the resolved config, flattened, with every value that could carry a patient
  identifier removed (:func:`loggable_params`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from monai.handlers import MLFlowHandler

__all__ = [
    "PROJECT_ROOT",
    "default_tracking_uri",
    "unique_run_name",
    "check_tracking_server",
    "loggable_params",
    "ResilientMLFlowHandler",
    "unique_trackers",
    "tracker",
]

logger = logging.getLogger("breastseg.tracking")

#: the repository root (the folder holding ``bundles/`` and ``mlflow/``)
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: substrings of parameter names that are never logged (patient identifiers)
_IDENTIFYING_KEYS = ("patientname", "patientid", "patient_id", "birthdate", "patients_name", "patients_birth")

#: an unreachable server must fail fast: one try, short timeout (users can still override both)
_FAST_FAIL_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def default_tracking_uri(project_root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store ``mlflow/mlruns.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(project_root) if project_root else PROJECT_ROOT
    settings = json.loads((root / "mlflow" / "settings.json").read_text())
    db = (root / settings["store"]).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return "sqlite:///" + db.as_posix()


def unique_run_name(bundle: str, workflow: str) -> str:
    """``<bundle>-<workflow>-<UTC yyyymmdd-HHMMSS>-<6 hex>``: never collides with another job's run."""
    return f"{bundle}-{workflow}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def check_tracking_server(tracking_uri: str, timeout: float = 5.0) -> str:
    """Fail within ``timeout`` seconds when an HTTP tracking server does not answer.

    SQLite and other local stores are accepted as they are. Returns ``tracking_uri``.
    """
    for key, value in _FAST_FAIL_HTTP.items():
        os.environ.setdefault(key, value)
    if not tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (user-given server)
            if response.status != 200:
                raise ConnectionError(f"MLflow server {tracking_uri} answered {response.status} on /health")
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise ConnectionError(
            f"MLflow tracking server {tracking_uri} cannot be reached ({err}). Start it with "
            "`bash mlflow/start_server.sh`, or unset MLFLOW_TRACKING_URI to track into mlflow/mlruns.db."
        ) from err
    return tracking_uri


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            key = str(key).replace("#", "::")  # config ids as keys ("detector#max_epochs"): MLflow refuses '#'
            _flatten(f"{prefix}.{key}" if prefix else key, item, out)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        for index, item in enumerate(value):
            _flatten(f"{prefix}.{index}", item, out)
    else:
        out[prefix] = str(value)


def loggable_params(config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Flatten a (resolved) config into MLflow params, dropping identifying keys and over-long values."""
    flat: dict[str, str] = {}
    _flatten("", dict(config), flat)
    if extra:
        _flatten("", dict(extra), flat)
    params = {}
    for key, value in flat.items():
        lowered = key.lower().replace(" ", "")
        if any(token in lowered for token in _IDENTIFYING_KEYS) or key.startswith("_meta_"):
            continue
        params[key[:250]] = value if len(value) <= 6000 else value[:5997] + "..."
    return params


class ResilientMLFlowHandler(MLFlowHandler):
    """MONAI's :class:`~monai.handlers.MLFlowHandler` that keeps training when the server is lost.

    The first call (run creation at ``STARTED``) still raises: a store that cannot be reached at the
    start is a configuration error. After that, a failed logging call is a warning and the run goes on.
    """

    def __init__(self, *args: Any, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params = dict(params or {})
        self.tags = dict(tags or {})
        self._failures = 0

    def start(self, engine: Any) -> None:
        super().start(engine)
        if self.params:
            self._delete_exist_param_in_dict(self.params)
            for chunk in _chunks(list(self.params.items()), 90):
                self._log_params(dict(chunk))
            self.params = {}
        for key, value in self.tags.items():
            self.client.set_tag(self.cur_run.info.run_id, key, value)

    def _guard(self, action: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Exception as err:  # MLflow raises MlflowException, requests and OSError alike
            self._failures += 1
            warnings.warn(f"MLflow {action} failed ({type(err).__name__}: {err}); training goes on", stacklevel=2)
            return None

    def _log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.cur_run is not None:
            self._guard("metric logging", super()._log_metrics, metrics, step)

    def complete(self) -> None:
        self._guard("artifact logging", super().complete)

    def close(self) -> None:
        self._guard("closing the run", super().close)

    @property
    def run_id(self) -> str | None:
        return None if self.cur_run is None else self.cur_run.info.run_id


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def unique_trackers(handlers: Iterable[Any]) -> list[Any]:
    """Drop plain MLflow handlers that target the same run as a handler already in the list.

    ``--tracking mlflow`` appends MONAI's own ``MLFlowHandler`` to the bundle's handler lists. The
    bundle already defines ``tracking_uri``, ``experiment_name`` and ``run_name``, which MONAI reuses,
    so the appended handler would log every value a second time into the same run.
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
    return kept


def _every(n: int):
    return lambda engine, event: event % n == 0


def tracker(
    role: str,
    tracking_uri: str,
    experiment_name: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    artifacts: Any = None,
    enabled: bool = True,
    iteration_log_every: int = 10,
) -> ResilientMLFlowHandler | None:
    """The MLflow handler of ``role``: ``"trainer"`` (loss every ``iteration_log_every`` iterations, LR,
    epoch metrics; closes the run when training completes), ``"validator"`` (validation metrics per
    epoch, same run) or ``"evaluator"`` (a run of its own, closed when evaluation completes).

    ``enabled=False`` (non-zero DDP ranks) returns ``None``.
    """
    if not enabled:
        return None
    if role not in ("trainer", "validator", "evaluator"):
        raise ValueError(f"tracker role must be trainer, validator or evaluator, got {role!r}")
    from breastseg.workflows.harness import loss_value

    common = dict(
        tracking_uri=tracking_uri, experiment_name=experiment_name, run_name=run_name, params=params, tags=tags
    )
    if role == "trainer":
        return ResilientMLFlowHandler(
            iteration_log=_every(iteration_log_every),
            epoch_log=True,
            tag_name="train_loss",
            output_transform=loss_value,
            artifacts=artifacts,
            close_on_complete=True,
            **common,
        )
    return ResilientMLFlowHandler(
        iteration_log=False,
        epoch_log=True,
        output_transform=lambda output: None,
        artifacts=artifacts,
        close_on_complete=role == "evaluator",
        **common,
    )
