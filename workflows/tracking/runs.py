"""MLflow tracking for every training and evaluation run, with no extra flags.

- The store is ``MLFLOW_TRACKING_URI`` when set, else the SQLite file ``mlflow/mlruns.db`` of the project
  (artifacts in ``mlflow/artifacts``), as ``mlflow/settings.json`` says.
- A server that cannot be reached at start fails within seconds with a message naming the URI;
  one lost mid-run only produces a warning (:class:`ResilientMLFlowHandler`): training, validation and
  checkpoints go on, the metrics of the outage are sent when the server is back, or written to
  ``mlflow/unsent/<run name>.jsonl`` when the run ends without it.
- A run that stops on an exception (a NaN loss, ...) ends FAILED with its ``failure_reason`` tag
  (:class:`~breastseg.workflows.engine.handler_lists.EndRunsOnFailure`).
- ``--resume`` continues the run its checkpoint names (one history, nothing left RUNNING); one that cannot be
  reopened (another store, deleted) is ended KILLED with a ``resumed_in`` tag naming the new run. Runs carry their
  process (:mod:`~breastseg.workflows.tracking.owners`): opening a store ends its runs whose process is gone.
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
from typing import Any, Iterable, Mapping, Sequence

from mlflow import MlflowClient
from mlflow.entities import LifecycleStage, Metric, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from monai.handlers import MLFlowHandler
from monai.utils import flatten_dict, path_to_uri

from breastseg.workflows.engine.checkpoints import TRACKING_RUN_KEY
from breastseg.workflows.engine.handler_lists import every
from breastseg.workflows.engine.harness import metric_name_for_split
from breastseg.workflows.tracking.owners import end_orphaned_runs, owner_tags
from breastseg.workflows.engine.loss_terms import loss_value

__all__ = [
    "PROJECT_ROOT",
    "default_tracking_uri",
    "prepare_sqlite_store",
    "unique_run_name",
    "quiet_mlflow",
    "check_tracking_server",
    "loggable_params",
    "ResilientMLFlowHandler",
    "DropMessages",
    "tracker",
]

logger = logging.getLogger("breastseg.tracking")

#: the repository root (the folder holding ``bundles/`` and ``mlflow/``)
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: substrings of parameter names that are never logged (patient identifiers)
_IDENTIFYING_KEYS = ("patientname", "patientid", "patient_id", "birthdate", "patients_name", "patients_birth")

#: MLflow accepts at most 1000 metrics in one ``log_batch``
_METRICS_PER_BATCH = 1000

#: SQLite stores this process has created or checked (:func:`prepare_sqlite_store`)
_PREPARED_STORES: set[str] = set()

#: metrics not yet sent, per run (tracking URI, experiment, run name)
_UNSENT: dict[tuple, list[Metric]] = {}

#: the run id each (tracking URI, experiment, run name) of this process opened: the validator's handler logs into
#: the run the trainer's opened, reopened by ``--resume`` under its own, earlier name
_RUN_IDS: dict[tuple, str] = {}

#: stores whose runs left RUNNING by a dead process this process has ended (once per store)
_SWEPT_STORES: set[str] = set()

#: an unreachable server must fail fast: one try, short timeout (users can still override both)
_FAST_FAIL_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class DropMessages(logging.Filter):
    """Drop log records whose message contains one of ``fragments``."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


def quiet_mlflow() -> None:
    """Silence what MLflow says on every run that a user can do nothing about (set ``MLFLOW_*`` to override):

    - the artifact-download progress bar (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``; logs are files, not terminals);
    - the warning that a ``python_model`` is pickled: ours holds no weights and no user code (``NetworkModel``).

    (MLflow's advice to type ``predict`` is turned off on the model class itself, in :mod:`~breastseg.workflows.tracking.registry`.)
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    if not any(isinstance(f, DropMessages) for f in pyfunc_logger.filters):
        pyfunc_logger.addFilter(DropMessages("serialized using CloudPickle"))


quiet_mlflow()


def default_tracking_uri(project_root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store ``mlflow/mlruns.db`` (created if new)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(project_root) if project_root else PROJECT_ROOT
    settings = json.loads((root / "mlflow" / "settings.json").read_text())
    db = (root / settings["store"]).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return prepare_sqlite_store("sqlite:///" + db.as_posix())


def prepare_sqlite_store(tracking_uri: str) -> str:
    """Create (or migrate) a local SQLite store once, under a file lock beside it (``<db>.lock``).

    MLflow creates its schema when the first client opens a new store; two trainings started at once
    would both create it and one would die (``duplicate column name``). Other URIs are returned as they are.
    """
    if not tracking_uri.startswith("sqlite:///") or tracking_uri in _PREPARED_STORES:
        return tracking_uri
    import fcntl

    import mlflow

    db = Path(tracking_uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        mlflow.MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
    _PREPARED_STORES.add(tracking_uri)
    return tracking_uri


def unique_run_name(bundle: str, workflow: str) -> str:
    """``<bundle>-<workflow>-<UTC yyyymmdd-HHMMSS>-<6 hex>``: never collides with another job's run."""
    return f"{bundle}-{workflow}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def check_tracking_server(tracking_uri: str, timeout: float = 5.0) -> str:
    """Fail within ``timeout`` seconds when an HTTP tracking server does not answer.

    A local SQLite store is created once under a lock (:func:`prepare_sqlite_store`). Returns ``tracking_uri``.
    """
    for key, value in _FAST_FAIL_HTTP.items():
        os.environ.setdefault(key, value)
    if not tracking_uri.startswith(("http://", "https://")):
        return prepare_sqlite_store(tracking_uri)
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
    """MONAI's :class:`~monai.handlers.MLFlowHandler` for which the tracking server is never a reason to stop.

    Every call to the store (run creation, parameters, tags, metrics, artifacts, closing the run) is
    guarded: a failure is one warning, and training goes on. Metrics logged while the store cannot be
    reached are kept and sent, with their original time and step, as soon as it answers again (retried
    at most every ``retry_interval`` seconds, and once more when the run ends). Whatever is still unsent
    then is written to ``unsent_dir/<run name>.jsonl`` (one metric per line), and a warning names
    the file. A server that cannot be reached at all is refused earlier, by :func:`check_tracking_server`.
    """

    #: seconds between two attempts to reach a store that failed (each failed attempt costs a timeout)
    retry_interval = 30.0
    #: seconds between two sends of iteration-level values (the training loss every few steps): in between
    #: they wait in memory, so a training step never waits for the store; epoch values are sent at once
    iteration_send_interval = 30.0

    def __init__(
        self,
        *args: Any,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        unsent_dir: str | Path | None = None,
        start_artifacts: Mapping[str, Sequence[str]] | None = None,
        split: str | None = None,
        resumable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.split = split
        self.resumable = resumable
        store = self.client.tracking_uri
        if kwargs.get("artifact_location") is None and store.startswith("sqlite:///"):
            # beside a SQLite store, artifacts go to its artifacts/ folder, where the server keeps them too
            # (MONAI's default is mlruns/)
            self.artifact_location = path_to_uri(Path(store[len("sqlite:///") :]).parent / "artifacts")
        self.params = dict(params or {})
        self.tags = dict(tags or {})
        self.start_artifacts = {folder: list(files) for folder, files in (start_artifacts or {}).items()}
        self.unsent_dir = Path(unsent_dir) if unsent_dir else PROJECT_ROOT / "mlflow" / "unsent"
        # the trainer's and the validator's handlers log into one run: they share its unsent metrics, so
        # whichever reaches the store first sends them all, and the run's end writes what is left
        self._run_key = (self.client.tracking_uri, self.experiment_name, self.run_name)
        self.pending: list[Metric] = _UNSENT.setdefault(self._run_key, [])
        self._failures = 0
        self._offline = False
        self._retry_at = 0.0
        self._engine: Any = None
        self._in_iteration = False
        self._sent_at = time.monotonic()

    @property
    def unsent_file(self) -> Path:
        return self.unsent_dir / f"{self.run_name}.jsonl"

    def start(self, engine: Any) -> None:
        self._engine = engine
        self._guard("starting the run", self._send_pending)

    def _open_run(self) -> None:
        """Create (or, for the validator, find) the run; MONAI's ``start`` also logs the engine's settings.

        A ``resumable`` (trainer's) handler first reopens the run that the trainer's state names (:data:`TRACKING_RUN_KEY`,
        set from the ``--resume`` checkpoint), or ends it KILLED pointing to the new run when it cannot; every first
        open of a store ends its runs whose process is gone (:func:`~breastseg.workflows.tracking.owners.end_orphaned_runs`).
        The run carries this process's tags (:func:`~breastseg.workflows.tracking.owners.owner_tags`).
        """
        shared = _RUN_IDS.get(self._run_key)
        previous = getattr(self._engine.state, TRACKING_RUN_KEY, None) if self.resumable else None
        reopened = shared or (self._reopenable(previous) if previous else None)
        self._end_orphaned_runs(keep=[reopened] if reopened else [])
        if reopened:
            self.cur_run = self.client.get_run(reopened)
            self.run_name = self.cur_run.info.run_name
        if reopened and not shared:
            self.client.update_run(reopened, status=RunStatus.to_string(RunStatus.RUNNING))
            logger.info("--resume: continuing MLflow run %s (%s)", self.run_name, reopened)
        super().start(self._engine)
        run_id = self.cur_run.info.run_id
        _RUN_IDS[self._run_key] = run_id
        self.tags.update(owner_tags())
        if self.resumable:
            setattr(self._engine.state, TRACKING_RUN_KEY, {"tracking_uri": self.client.tracking_uri, "run_id": run_id})
            if previous and previous.get("run_id") != run_id:
                self._supersede(previous, run_id)

    def _reopenable(self, previous: Mapping[str, str]) -> str | None:
        """The id of the run ``previous`` names when this store holds it, live, in this experiment; else ``None``."""
        if previous.get("tracking_uri") != self.client.tracking_uri:
            return None
        try:
            run = self.client.get_run(previous["run_id"])
        except MlflowException:  # deleted for good, or another store at the same URI
            return None
        self._set_experiment()
        if run.info.lifecycle_stage != LifecycleStage.ACTIVE or run.info.experiment_id != self.experiment.experiment_id:
            return None
        return run.info.run_id

    def _end_orphaned_runs(self, keep: Sequence[str]) -> None:
        store = self.client.tracking_uri
        if store in _SWEPT_STORES:
            return
        _SWEPT_STORES.add(store)
        try:
            end_orphaned_runs(self.client, self.unsent_dir, keep)
        except MlflowException as err:  # tidying other runs never stops this one
            logger.warning("MLflow runs left RUNNING by killed processes could not be ended (%s)", err)

    def _supersede(self, previous: Mapping[str, str], run_id: str) -> None:
        """End the run a ``--resume`` could not reopen KILLED in its own store, each run naming the other."""
        old_uri, old_id = previous.get("tracking_uri", ""), previous.get("run_id", "")
        self.tags["resumed_from"] = f"run {old_id} of {old_uri}"
        try:
            if old_uri.startswith("sqlite:///") and not Path(old_uri[len("sqlite:///"):]).is_file():
                raise FileNotFoundError(f"{old_uri} is gone")  # opening it would create an empty store
            old = MlflowClient(tracking_uri=old_uri)
            old.set_tag(old_id, "resumed_in", f"run {run_id} of {self.client.tracking_uri}")
            old.set_terminated(old_id, RunStatus.to_string(RunStatus.KILLED))
        except Exception as err:  # MlflowException, requests and OSError alike: the old store may be gone
            logger.warning("--resume: the checkpoint's MLflow run %s of %s could not be ended (%s: %s); this training "
                           "logs into run %s", old_id, old_uri, type(err).__name__, err, run_id)
            return
        logger.info("--resume: the checkpoint's MLflow run %s of %s cannot be continued here: it is ended KILLED and "
                    "names this run %s (tag resumed_in)", old_id, old_uri, run_id)

    def _send_pending(self) -> None:
        """Open the run if needed, then send the parameters, tags and metrics not yet sent."""
        if self.cur_run is None:
            if self._engine is None:
                return
            self._open_run()
        run_id = self.cur_run.info.run_id
        if self.params:
            self._delete_exist_param_in_dict(self.params)
            for chunk in _chunks(list(self.params.items()), 90):
                self._log_params(dict(chunk))
            self.params = {}
        if self.tags:
            self.client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in self.tags.items()])
            self.tags = {}
        while self.start_artifacts:
            folder, files = next(iter(self.start_artifacts.items()))
            for path in files:
                self.client.log_artifact(run_id, path, folder)
            del self.start_artifacts[folder]
        while self.pending:
            batch = self.pending[:_METRICS_PER_BATCH]
            self.client.log_batch(run_id, metrics=batch)
            del self.pending[: len(batch)]

    def _guard(self, action: str, call: Any, *args: Any, force: bool = False, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``, or ``None`` when the store fails (one warning per outage) or failed less
        than ``retry_interval`` seconds ago (``force``: try anyway)."""
        if self._offline and not force and time.monotonic() < self._retry_at:
            return None
        try:
            result = call(*args, **kwargs)
        except Exception as err:  # MLflow raises MlflowException, requests and OSError alike
            self._failures += 1
            self._retry_at = time.monotonic() + self.retry_interval
            if not self._offline:
                self._offline = True
                warnings.warn(
                    f"MLflow {action} failed ({type(err).__name__}: {err}); training goes on, and its metrics are "
                    "kept until the tracking server answers again",
                    stacklevel=2,
                )
            return None
        if self._offline:
            self._offline = False
            logger.warning("MLflow answers again: run %s is tracked again", self.run_name)
            if call != self._send_pending:
                self._guard("sending the metrics kept during the outage", self._send_pending)
        return result

    def iteration_completed(self, engine: Any) -> None:
        self._in_iteration = True
        try:
            super().iteration_completed(engine)
        finally:
            self._in_iteration = False

    def _log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        self.pending.extend(Metric(metric_name_for_split(key, self.split), float(value), timestamp, step or 0)
                            for key, value in flatten_dict(metrics).items())
        if self._in_iteration and time.monotonic() - self._sent_at < self.iteration_send_interval:
            return
        self._sent_at = time.monotonic()
        self._guard("metric logging", self._send_pending)

    def complete(self) -> None:
        self._guard("artifact logging", super().complete)

    def close(self) -> None:
        """Send what is pending, then end the run FINISHED; what cannot be sent is written to :attr:`unsent_file`."""
        self._end(self.run_finish_status)

    def fail(self, error: BaseException) -> None:
        """End the run FAILED with ``error`` as its ``failure_reason`` tag (the run stopped on an exception)."""
        reason = f"{type(error).__name__}: {error}"[:5000]
        self.tags["failure_reason"] = reason
        self._end(RunStatus.to_string(RunStatus.FAILED))

    def _end(self, status: str) -> None:
        self._guard("sending the metrics kept during the outage", self._send_pending, force=True)
        if self.cur_run is not None and not self._offline:
            self._guard("closing the run", self.client.set_terminated, self.cur_run.info.run_id, status)
        if not self._offline:
            self.cur_run = None
        self._dispose_sqlite_store()
        self._write_unsent(status)
        _UNSENT.pop(self._run_key, None)
        _RUN_IDS.pop(self._run_key, None)

    def _write_unsent(self, status: str) -> None:
        if not (self.pending or self._offline):
            return
        self.unsent_file.parent.mkdir(parents=True, exist_ok=True)
        header = {"tracking_uri": self.client.tracking_uri, "experiment": self.experiment_name, "run_name": self.run_name,
                  "run_id": self.run_id, "status": status, "params": self.params, "tags": self.tags}
        lines = [json.dumps(header)] + [
            json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) for m in self.pending
        ]
        self.unsent_file.write_text("\n".join(lines) + "\n")
        logger.warning(
            "MLflow could not be reached when run %s ended (%s): %d metric(s) and the run's end are in %s",
            self.run_name, status, len(self.pending), self.unsent_file,
        )

    @property
    def run_id(self) -> str | None:
        return None if self.cur_run is None else self.cur_run.info.run_id


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    unsent_dir: str | Path | None = None,
    start_artifacts: Mapping[str, Sequence[str]] | None = None,
    split: str | None = None,
) -> ResilientMLFlowHandler | None:
    """The MLflow handler of ``role``: ``"trainer"`` (loss every ``iteration_log_every`` iterations, LR,
    epoch metrics; closes the run when training completes), ``"validator"`` (validation metrics per
    epoch, same run) or ``"evaluator"`` (a run of its own, closed when evaluation completes).

    ``enabled=False`` (non-zero DDP ranks) returns ``None``. Metrics that cannot be sent before the run
    ends go to ``unsent_dir`` (default ``mlflow/unsent`` of the project). ``start_artifacts`` (artifact folder ->
    files) are logged as soon as the run opens (``artifacts``, MONAI's, when it completes). ``split``: the split an
    evaluation scores, whose name its metrics carry (``test_dice``, not the validation evaluator's ``val_dice``).
    """
    if not enabled:
        return None
    if role not in ("trainer", "validator", "evaluator"):
        raise ValueError(f"tracker role must be trainer, validator or evaluator, got {role!r}")
    common = dict(
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        run_name=run_name,
        params=params,
        tags=tags,
        unsent_dir=unsent_dir,
        start_artifacts=start_artifacts,
        split=split,
    )
    if role == "trainer":
        return ResilientMLFlowHandler(
            resumable=True,
            iteration_log=every(iteration_log_every),
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
