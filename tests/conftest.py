"""Test-wide settings: no telemetry lookups (there is no network), one torch thread, workspaces that go
when their module passes (a full run writes several GB of checkpoints and MLflow artifacts)."""

import os
import shutil

for key, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("ORT_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(key, value)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def module_dir(request, tmp_path_factory):
    """A folder shared by one test module, removed after it unless one of its tests failed (kept to debug)."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failures_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failures_before:
        shutil.rmtree(path, ignore_errors=True)
