"""Trainings started at once on a fresh default SQLite store: the store is created once, under a lock."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: what a training does with the default store before its first run: resolve the URI, check it, open a client
_TRAINING_START = """
import sys, time
from pathlib import Path
import mlflow
from breastseg.workflows.tracking.runs import check_tracking_server, default_tracking_uri
project, go = Path(sys.argv[1]), Path(sys.argv[2])
(go.parent / ("ready-" + sys.argv[3])).touch()
while not go.exists():
    time.sleep(0.01)
uri = check_tracking_server(default_tracking_uri(project))
client = mlflow.MlflowClient(tracking_uri=uri)
print(client.create_run(client.create_experiment(sys.argv[3])).info.run_id)
"""


def test_trainings_started_at_once_create_the_default_store_once(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "project"
    (project / "mlflow").mkdir(parents=True)
    shutil.copy(ROOT / "mlflow" / "settings.json", project / "mlflow" / "settings.json")
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _TRAINING_START, str(project), str(go), f"experiment-{index}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for index in range(3)
    ]
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("ready-*"))) < len(processes) and time.monotonic() < deadline:
        time.sleep(0.1)  # until every process has imported MLflow and waits for the signal
    go.touch()
    results = [(process.wait(timeout=300), *process.communicate()) for process in processes]
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert len(out.strip()) == 32  # a run id
    assert (project / "mlflow" / "mlruns.db").is_file()
