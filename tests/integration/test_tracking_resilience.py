"""Tracking faults: a server lost mid-run only warns; training, validation and checkpoints go on, and the
metrics of the outage reach the server when it is back (or a file when it is not)."""

from __future__ import annotations

import json
import warnings

import mlflow
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.handlers import ValidationHandler

from breastseg.workflows.engine.checkpoints import LAST_CHECKPOINT_FILE, EpochCheckpointer
from breastseg.workflows.engine.harness import build_evaluator, build_trainer, progress_handlers
from breastseg.workflows.engine.validation_loss import logits_postprocessing, validation_loss_metric
from breastseg.workflows.tracking.runs import check_tracking_server, tracker
from mlflow_server import free_port, running_mlflow_server, start_server, stop_server


def _data() -> list[dict]:
    return [{"image": torch.rand(1, 8, 8), "label": (torch.rand(1, 8, 8) > 0.5).float()} for _ in range(4)]


def test_server_lost_mid_run_warns_and_training_finishes(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # it would take priority over the handler's URI
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with running_mlflow_server(tmp_path / "mlflow") as (uri, server):
        run_tracker = tracker("trainer", uri, "resilience", "resilience-run", params={"lr": 0.1})
        handlers = [EpochCheckpointer(tmp_path / "models", net, optimizer), run_tracker]
        trainer = build_trainer(
            "cpu", 3, DataLoader(Dataset(_data()), batch_size=2), net, optimizer, torch.nn.BCEWithLogitsLoss(), handlers
        )
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: stop_server(server))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.run()
    assert trainer.state.epoch == 3
    assert any("MLflow" in str(w.message) and "training goes on" in str(w.message) for w in caught)
    last = torch.load(tmp_path / "models" / LAST_CHECKPOINT_FILE, weights_only=True)
    assert last["trainer"]["iteration"] == 3 * 2


def _training_with_validation(tmp_path, uri: str, run_name: str, epochs: int = 3):
    """A trainer validating every epoch, tracked as the bundles are (trainer and validator in one run)."""
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = torch.nn.BCEWithLogitsLoss()
    validator_tracker = tracker("validator", uri, "outage", run_name, unsent_dir=tmp_path / "unsent")
    evaluator = build_evaluator(
        "cpu",
        DataLoader(Dataset(_data()), batch_size=2),
        net,
        key_val_metric=validation_loss_metric(loss, "val_loss"),
        postprocessing=logits_postprocessing(),
        val_handlers=[validator_tracker],
    )
    trainer_tracker = tracker("trainer", uri, "outage", run_name, params={"lr": 0.1}, unsent_dir=tmp_path / "unsent")
    handlers = [
        ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
        EpochCheckpointer(tmp_path / "models", net, optimizer, evaluator=evaluator),
        trainer_tracker,
    ]
    trainer = build_trainer("cpu", epochs, DataLoader(Dataset(_data()), batch_size=2), net, optimizer, loss, handlers)
    return trainer, trainer_tracker


@pytest.fixture
def short_http_timeouts(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_server_killed_and_not_back_training_validation_and_checkpoints_complete(tmp_path, short_http_timeouts):
    with running_mlflow_server(tmp_path / "mlflow") as (uri, server):
        trainer, run_tracker = _training_with_validation(tmp_path, uri, "killed-run")
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: stop_server(server))
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            trainer.run()
    assert trainer.state.epoch == 3
    assert torch.load(tmp_path / "models" / LAST_CHECKPOINT_FILE, weights_only=True)["trainer"]["iteration"] == 3 * 2
    assert (tmp_path / "models" / "model.pt").is_file()
    # what the dead server never got is on disk: the run's end and every metric of epochs 2 and 3
    lines = (tmp_path / "unsent" / "killed-run.jsonl").read_text().splitlines()
    header, metrics = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    assert header["status"] == "FINISHED" and header["run_id"] == run_tracker.run_id
    assert sorted(m["step"] for m in metrics if m["key"] == "val_loss") == [2, 3]
    assert sorted(m["step"] for m in metrics if m["key"] == "train_epoch_loss") == [2, 3]


def test_metrics_of_an_outage_are_logged_when_the_server_is_back(tmp_path, short_http_timeouts):
    folder = tmp_path / "mlflow"
    uri, server = start_server(folder)
    port = int(uri.rsplit(":", 1)[1])
    servers = [server]

    def restart(engine):
        servers.append(start_server(folder, port)[1])

    try:
        trainer, run_tracker = _training_with_validation(tmp_path, uri, "outage-run")
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: stop_server(servers[0]))
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), restart)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.run()
        run_id = run_tracker.run_id
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.search_runs([client.get_experiment_by_name("outage").experiment_id])[0]
        history = {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in ("val_loss", "train_epoch_loss")}
    finally:
        for process in servers:
            stop_server(process)
    assert run_id is None  # closed
    assert any("training goes on" in str(w.message) for w in caught)
    assert trainer.state.epoch == 3
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.1"
    assert history == {"val_loss": [1, 2, 3], "train_epoch_loss": [1, 2, 3]}
    assert not (tmp_path / "unsent").exists()


def test_unreachable_server_is_refused_at_start():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match="cannot be reached"):
        check_tracking_server(uri, timeout=5)


def test_local_sqlite_store_needs_no_server(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert check_tracking_server(uri) == uri


class _LossNaNFromStep:
    """Binary cross-entropy that turns NaN from its ``step``-th call (a diverging run)."""

    def __init__(self, step: int) -> None:
        self.step, self.calls = step, 0

    def __call__(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, label)
        return loss * float("nan") if self.calls >= self.step else loss


def test_run_stopped_by_a_nan_loss_ends_failed_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    run_tracker = tracker("trainer", uri, "nan", "nan-run")
    trainer = build_trainer(
        "cpu", 3, DataLoader(Dataset(_data()), batch_size=2), net, optimizer, _LossNaNFromStep(3),
        [progress_handlers("trainer", terminal=False), run_tracker],  # as the bundles list them: stats first
    )
    with pytest.raises(FloatingPointError, match="loss is nan"):
        trainer.run()
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("nan").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("FloatingPointError: training loss is nan at epoch 2")
    assert run.data.metrics["train_epoch_loss"] > 0  # epoch 1 was logged before the failure
