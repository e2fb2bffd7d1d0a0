"""Dataset indexers: a dataset folder as downloaded -> :class:`~breastseg.workflows.data.records.IndexResult`.

Each module exposes ``index(root: Path, **options) -> IndexResult``. Indexers only read.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from breastseg.workflows.data.near_duplicates import FingerprintStore
from breastseg.workflows.data.records import IndexResult

__all__ = ["INDEXER_MODULES", "DECODING_INDEXERS", "index_dataset"]

#: dataset name -> module under ``breastseg.workflows.data.indexers``
INDEXER_MODULES = {"cbis-ddsm": "cbis_ddsm", "inbreast": "inbreast", "busi": "busi", "udiat": "udiat"}
#: indexers that decode every image (to prove it readable) and so fingerprint it from that decode; the others
#: read headers only, and their images are fingerprinted by the near-duplicate search
DECODING_INDEXERS = ("busi", "udiat")


def index_dataset(dataset: str, root: str | Path, fingerprints: FingerprintStore | None = None, **options: Any) -> IndexResult:
    """Index the folder ``root`` holding ``dataset`` as it was downloaded (``fingerprints``: see
    :data:`DECODING_INDEXERS`)."""
    if dataset not in INDEXER_MODULES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(INDEXER_MODULES)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    module = importlib.import_module(f"{__name__}.{INDEXER_MODULES[dataset]}")
    if dataset in DECODING_INDEXERS:
        options["fingerprints"] = fingerprints
    return module.index(root, **options)
