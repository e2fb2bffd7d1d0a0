"""Test-wide settings: no telemetry lookups (there is no network), one torch thread."""

import os

for key, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("ORT_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(key, value)

import torch  # noqa: E402

torch.set_num_threads(1)
