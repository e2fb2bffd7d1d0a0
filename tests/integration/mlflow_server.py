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
def model_server(command: list[str], env: dict[str, str], folder: Path, port: int):
    """Run ``command`` (a model server on 127.0.0.1:``port``, its log in ``folder/serve.log``, in its own process
    group); yield its base URL and process once ``/ping`` answers, and stop it (and its workers) on exit."""
    folder.mkdir(parents=True, exist_ok=True)
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
                raise RuntimeError(f"the model server did not start: {(folder / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, process
    finally:
        stop_server(process)


def _serving_environment(tracking_uri: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", OMP_NUM_THREADS="1")
    # MLflow starts the scoring server as `uvicorn` from PATH: the venv's, as an activated venv has it
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@contextmanager
def serving_model(model_uri: str, tracking_uri: str, folder: Path):
    """``mlflow models serve -m model_uri --env-manager local`` on 127.0.0.1 (a free port), the store at ``tracking_uri``;
    yields the base URL once ``/ping`` answers, and stops the server on exit."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with model_server(command, _serving_environment(tracking_uri), folder, port) as (url, _):
        yield url


@contextmanager
def breastseg_serve(model: str, tracking_uri: str, folder: Path, *options: str):
    """``breastseg serve model --port <free> --tracking-uri tracking_uri *options``: the project's command, on
    127.0.0.1; yields the base URL once ``/ping`` answers."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("breastseg")), "serve", model, "--port", str(port), "--tracking-uri", tracking_uri, *options]
    env = _serving_environment(tracking_uri)
    del env["MLFLOW_TRACKING_URI"]  # the command sets it itself
    with model_server(command, env, folder, port) as (url, _):
        yield url


def post(url: str, body: dict | bytes, timeout: float = 300) -> tuple[int, dict]:
    """POST ``body`` (a dict as JSON, or raw bytes) to ``url``/invocations; ``(status, answer JSON)``."""
    import json
    import urllib.error

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/invocations", data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
