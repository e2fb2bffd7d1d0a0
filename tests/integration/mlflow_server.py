"""A real ``mlflow server`` on 127.0.0.1 with a SQLite store, and ``mlflow models serve`` of a registered model,
started and stopped by the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_server(process: subprocess.Popen) -> None:
    """Terminate the server and its workers (its own process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def start_server(folder: Path, port: int | None = None) -> tuple[str, subprocess.Popen]:
    """Start a server over ``folder`` (its SQLite store and artifacts) on ``port`` (default: a free one) and
    wait until it answers; returns its URI and process. Starting it again on the same folder and port
    brings the same store back."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlruns.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with open(folder / "server.log", "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                if response.status == 200:
                    return uri, process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"mlflow server did not start; see {folder / 'server.log'}")
        time.sleep(0.5)


@contextmanager
def running_mlflow_server(folder: Path):
    """Yield the server's URI and process; the server is terminated on exit."""
    uri, process = start_server(folder)
    try:
        yield uri, process
    finally:
        stop_server(process)


@contextmanager
def serving_model(model_uri: str, tracking_uri: str, folder: Path):
    """``mlflow models serve -m model_uri --env-manager local`` on 127.0.0.1 (a free port), the store at ``tracking_uri``;
    yields the base URL once ``/ping`` answers, and stops the server on exit."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", OMP_NUM_THREADS="1")
    # MLflow starts the scoring server as `uvicorn` from PATH: the venv's, as an activated venv has it
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with open(folder / "serve.log", "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow models serve did not start: {(folder / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_server(process)
