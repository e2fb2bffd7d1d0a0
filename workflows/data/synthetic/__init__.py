"""Synthetic datasets written in the real datasets' on-disk layouts (the project's default data).

Each layout module exposes ``generate(out: Path, cases: int | None, seed: int, full_size: bool) -> dict``
returning a summary (files written, images, lesions, planted traps).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = ["LAYOUT_MODULES", "generate"]

#: layout name -> module under ``breastseg.workflows.data.synthetic``
LAYOUT_MODULES = {"cbis-ddsm": "cbis_ddsm", "inbreast": "inbreast", "busi": "busi", "udiat": "udiat"}


def generate(layout: str, out: str | Path, cases: int | None = None, seed: int = 0, full_size: bool = False) -> dict[str, Any]:
    """Write the synthetic ``layout`` into ``out`` and return its summary."""
    if layout not in LAYOUT_MODULES:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUT_MODULES)}")
    module = importlib.import_module(f"{__name__}.{LAYOUT_MODULES[layout]}")
    return module.generate(Path(out), cases=cases, seed=seed, full_size=full_size)
