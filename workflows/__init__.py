"""breastseg.workflows: the shared harness, metrics, datasets, registry and CLI."""

import os as _os

# MLflow and onnxruntime try telemetry DNS lookups; these machines have no network.
for _key, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("ORT_DISABLE_TELEMETRY", "1")):
    _os.environ.setdefault(_key, _value)
