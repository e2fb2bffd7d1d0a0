"""Dataset indexers: a dataset folder as downloaded -> :class:`~breastseg.workflows.data.records.IndexResult`.

Each module exposes ``index(root: Path, **options) -> IndexResult``. Indexers only read.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from breastseg.workflows.data.records import IndexResult

__all__ = ["INDEXER_MODULES", "index_dataset"]

#: dataset name -> module under ``breastseg.workflows.data.indexers``
INDEXER_MODULES = {"cbis-ddsm": "cbis_ddsm", "inbreast": "inbreast", "busi": "busi", "udiat": "udiat"}


def index_dataset(dataset: str, root: str | Path, **options: Any) -> IndexResult:
    """Index the folder ``root`` holding ``dataset`` as it was downloaded."""
    if dataset not in INDEXER_MODULES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(INDEXER_MODULES)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    module = importlib.import_module(f"{__name__}.{INDEXER_MODULES[dataset]}")
    return module.index(root, **options)
