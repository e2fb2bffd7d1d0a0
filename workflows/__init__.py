"""breastseg.workflows: what runs the bundles, grouped by role.

- ``engine``: the harness (trainer, evaluator), datasets, checkpoints, precision, validation pieces;
- ``tracking``: MLflow runs and the model registry (plugged into the engine as handlers);
- ``evaluation``: evaluation handlers, case reports, the papers' tables, inference;
- ``two_stage``: the two-stage pipeline of paper 002 and its detector;
- ``commands``: the ``breastseg`` CLI and the glue bundle configs call;
- ``data`` (datalists, indexers, synthetic data) and ``metrics`` (the per-case metrics) serve every role;
- ``errors`` is the one shared module: it imports nothing from the project and every role may use it.

Each role imports only ``errors``, ``data``, ``metrics`` and the roles before it in this list (engine <- tracking
<- evaluation <- two_stage <- commands); ``tests/workflows/test_import_graph.py`` checks it.
"""

import os as _os

# MLflow and onnxruntime try telemetry DNS lookups; these machines have no network.
for _key, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("ORT_DISABLE_TELEMETRY", "1")):
    _os.environ.setdefault(_key, _value)
