"""Killed trainings and their MLflow runs: real ``monai.bundle`` trainings tracked by a real ``mlflow server`` on
127.0.0.1, killed with SIGKILL. ``--resume`` continues the same run (one history, nothing left RUNNING) and says
which epochs it lost; a run whose process is gone is ended KILLED by the next command that opens the store; a run
that cannot be reopened (another store) is ended KILLED, naming the new one."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import mlflow
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset

from breastseg.workflows.data.synthetic import busi
from breastseg.workflows.engine.checkpoints import LAST_CHECKPOINT_FILE, LAST_EPOCH_FILE, EpochCheckpointer, ResumeFromCheckpoint
from breastseg.workflows.engine.harness import build_trainer
from bundle_cli import ROOT, assert_ok, bundle_cli, find_runs
from mlflow_server import running_mlflow_server

TRAIN = str(ROOT / "bundles" / "hybrid_attention_us" / "configs" / "train.json")
EXPERIMENT = "breastseg-hybrid_attention_us"
SMALL = ["--network", "basic_unet", "--image_size", "32", "--batch_size", "4"]


@pytest.fixture(scope="module")
def workspace(module_dir):
    busi.generate(module_dir / "busi", cases=16, seed=0, full_size=False)
    with running_mlflow_server(module_dir / "mlflow") as (uri, _):
        yield {"root": module_dir, "data": module_dir / "busi", "uri": uri}


def _folders(ws, name: str) -> list[str]:
    return ["--dataset_dir", str(ws["data"]), "--output_dir", str(ws["root"] / name / "out"), "--ckpt_dir", str(ws["root"] / name / "models")]


def _recorded_epoch(models) -> int:
    try:
        return json.loads((models / LAST_EPOCH_FILE).read_text())["epoch"]
    except (OSError, ValueError):
        return 0


def _train_then_kill(ws, name: str, epochs: int, kill_after: int, extra: tuple[str, ...] = ()) -> int:
    """Start a real training and SIGKILL it once ``kill_after`` epochs completed and a checkpoint is on disk; its pid."""
    models = ws["root"] / name / "models"
    env = dict(os.environ, MLFLOW_TRACKING_URI=ws["uri"], MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", OMP_NUM_THREADS="1")
    log = open(ws["root"] / f"{name}.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN,
                                "--max_epochs", str(epochs), *SMALL, *_folders(ws, name), *extra],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while _recorded_epoch(models) < kill_after or not (models / LAST_CHECKPOINT_FILE).is_file():
        assert process.poll() is None, f"training ended before it could be killed: {(ws['root'] / f'{name}.log').read_text()[-3000:]}"
        assert time.monotonic() < deadline, "training too slow to reach the epoch to kill it at"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    log.close()
    assert _recorded_epoch(models) < epochs, "killed after its last epoch: nothing left to resume"
    return process.pid


def _run_of(client, pid: int):
    [run] = [r for r in find_runs(client.tracking_uri, EXPERIMENT, "train") if r.data.tags.get("breastseg.pid") == str(pid)]
    return run


def test_resume_continues_the_killed_run_and_the_next_command_ends_a_dead_run(workspace):
    ws, client = workspace, mlflow.MlflowClient(tracking_uri=workspace["uri"])
    first = _train_then_kill(ws, "first", epochs=6, kill_after=3, extra=("--checkpoint_interval", "2"))
    run = _run_of(client, first)  # what a SIGKILL leaves: a RUNNING run whose process is gone
    assert run.info.status == "RUNNING" and run.data.tags["breastseg.host"] == socket.gethostname()
    killed_first = run.info.run_id
    second = _train_then_kill(ws, "second", epochs=3, kill_after=1)
    # the next command that opened the store (the second training) ended the first one's run
    run = client.get_run(killed_first)
    assert run.info.status == "KILLED" and f"process {first} on {socket.gethostname()}" in run.data.tags["killed_reason"]
    assert _run_of(client, second).info.status == "RUNNING"
    models = ws["root"] / "first" / "models"
    completed = _recorded_epoch(models)
    trainer_state = torch.load(models / LAST_CHECKPOINT_FILE, weights_only=True)["trainer"]
    saved = trainer_state["iteration"] // trainer_state["epoch_length"]

    result = bundle_cli("run", "training", "--config_file", TRAIN, "--max_epochs", "6", "--resume", "--checkpoint_interval", "2",
                        *SMALL, *_folders(ws, "first"), tracking_uri=ws["uri"])
    assert_ok(result)
    printed = result.stdout + result.stderr
    # item 5: the epochs that completed after the checkpoint, trained again, are named
    if completed > saved:
        lost = f"epoch {completed}" if completed == saved + 1 else f"epochs {saved + 1}-{completed}"
        assert f"--resume: {lost} completed after the checkpoint of epoch {saved}" in printed
    else:
        assert f"--resume: continuing after epoch {saved}, the last one completed: no epoch is lost" in printed

    # one run for the killed and resumed training: one history of every epoch, FINISHED
    runs = find_runs(ws["uri"], EXPERIMENT, "train")
    assert len(runs) == 2, [(r.info.run_name, r.info.status) for r in runs]
    resumed = client.get_run(killed_first)
    assert resumed.info.status == "FINISHED" and f"--resume: continuing MLflow run {resumed.info.run_name}" in printed
    for metric in ("train_epoch_loss", "val_mean_dice"):
        assert {m.step for m in client.get_metric_history(killed_first, metric)} == set(range(1, 7)), metric
    assert resumed.data.tags["breastseg.pid"] != str(first)  # now the resuming process's
    # the second training's process is gone too: the resume, the next command to open the store, ended its run
    dead = _run_of(client, second)
    assert dead.info.status == "KILLED" and f"process {second} on {socket.gethostname()}" in dead.data.tags["killed_reason"]
    assert not client.search_runs([r.info.experiment_id for r in runs], "attributes.status = 'RUNNING'")

    # a --resume into another store cannot continue the run there: the old run ends KILLED, each naming the other
    other = f"sqlite:///{ws['root'] / 'other' / 'mlruns.db'}"
    (ws["root"] / "other").mkdir()
    result = bundle_cli("run", "training", "--config_file", TRAIN, "--max_epochs", "3", "--resume", *SMALL,
                        *_folders(ws, "second"), tracking_uri=other)
    assert_ok(result)
    [moved] = find_runs(other, EXPERIMENT, "train")
    assert moved.info.status == "FINISHED" and moved.data.tags["resumed_from"] == f"run {dead.info.run_id} of {ws['uri']}"
    old = client.get_run(dead.info.run_id)
    assert old.info.status == "KILLED" and old.data.tags["resumed_in"] == f"run {moved.info.run_id} of {other}"


def test_resume_names_the_epochs_a_checkpoint_interval_lost(tmp_path, caplog):
    """A run stopped after epoch 3 with a checkpoint every 2 epochs resumes from epoch 2 and says epoch 3 is lost."""
    data = [{"image": torch.rand(1, 8, 8), "label": (torch.rand(1, 8, 8) > 0.5).float()} for _ in range(4)]

    def trainer(handlers):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        engine = build_trainer("cpu", 5, DataLoader(Dataset(data), batch_size=2), net, optimizer, torch.nn.BCEWithLogitsLoss(),
                               handlers(net, optimizer))
        return engine

    stopped = trainer(lambda net, optimizer: [EpochCheckpointer(tmp_path, net, optimizer, interval=2)])
    def stop(engine):
        raise RuntimeError("the run stops here")

    stopped.add_event_handler(Events.EPOCH_COMPLETED(once=3), stop)
    with pytest.raises(RuntimeError, match="the run stops here"):
        stopped.run()
    assert json.loads((tmp_path / LAST_EPOCH_FILE).read_text())["epoch"] == 3
    resumed = trainer(lambda net, optimizer: [ResumeFromCheckpoint(tmp_path / LAST_CHECKPOINT_FILE, net, optimizer)])
    with caplog.at_level(logging.INFO, logger="breastseg.checkpoints"):
        resumed.run()
    assert "--resume: epoch 3 completed after the checkpoint of epoch 2 and is lost" in caplog.text
    assert "training again from epoch 3" in caplog.text and resumed.state.epoch == 5
