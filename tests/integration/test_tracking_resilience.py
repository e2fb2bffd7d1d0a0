"""Tracking faults: a server lost mid-run only warns; training and checkpoints go on."""

from __future__ import annotations

import warnings

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset

from breastseg.workflows.checkpoints import LAST_CHECKPOINT_FILE, EpochCheckpointer
from breastseg.workflows.harness import build_trainer
from breastseg.workflows.tracking import check_tracking_server, tracker
from mlflow_server import free_port, running_mlflow_server, stop_server


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


def test_unreachable_server_is_refused_at_start():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match="cannot be reached"):
        check_tracking_server(uri, timeout=5)


def test_local_sqlite_store_needs_no_server(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert check_tracking_server(uri) == uri
