"""Helpers shared by the synthetic BUSI and UDIAT writers (private)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["prepare_output_folder", "case_rng", "frame_size"]


def prepare_output_folder(out: Path) -> Path:
    """Create ``out`` (parents included); refuse a non-empty folder so nothing of the user's is overwritten."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output folder {str(out)!r} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    return out


def case_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator per case, so one case's pixels do not depend on how many cases are written."""
    return np.random.default_rng([int(seed), *(int(key) for key in keys)])


def frame_size(
    rng: np.random.Generator, median_wh: tuple[int, int], spread_wh: tuple[int, int],
    min_wh: tuple[int, int], max_wh: tuple[int, int], full_size: bool,
) -> tuple[int, int]:
    """Draw ``(height, width)`` around the dataset's median size; halved unless ``full_size``."""
    width = int(np.clip(rng.normal(median_wh[0], spread_wh[0]), min_wh[0], max_wh[0]))
    height = int(np.clip(rng.normal(median_wh[1], spread_wh[1]), min_wh[1], max_wh[1]))
    if not full_size:
        width, height = width // 2, height // 2
    return height, width
