"""``bash mlflow/start_server.sh``: no activated venv needed, the port as documented, artifacts in
``<store>/artifacts`` whether runs go through the server or straight to the SQLite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import torch
from ignite.engine import Engine

from breastseg.workflows.tracking.runs import tracker
from mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def _wait_healthy(uri: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"server at {uri} did not answer (exit code {process.poll()})")


def test_start_server_without_an_activated_venv_on_the_given_port(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()
    # no venv on PATH, and "." on it: a bare `mlflow` would be the project's own mlflow/ folder
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:.", "HOME": os.environ.get("HOME", "/tmp"), "MLFLOW_STORE_DIR": str(tmp_path)}
    if not (ROOT / ".venv" / "bin" / "python").exists():
        env["PYTHON"] = sys.executable  # the tests' interpreter is the project's
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(
        ["bash", "mlflow/start_server.sh", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, process)
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.create_run(client.create_experiment("served"))
        (tmp_path / "note.txt").write_text("artifact")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
    assert (tmp_path / "mlruns.db").is_file()
    assert [path.name for path in (tmp_path / "artifacts").rglob("note.txt")] == ["note.txt"]
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in (tmp_path / "server.log").read_text()


def test_runs_tracked_straight_into_a_sqlite_store_keep_artifacts_in_its_artifacts_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "note.txt").write_text("artifact")
    handler = tracker("evaluator", f"sqlite:///{tmp_path / 'mlruns.db'}", "direct", "direct-run", artifacts=str(tmp_path / "note.txt"))
    engine = Engine(lambda engine, batch: torch.zeros(()))
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert [path.name for path in (tmp_path / "artifacts").rglob("note.txt")] == ["note.txt"]
    assert not (tmp_path / "mlruns").exists()
