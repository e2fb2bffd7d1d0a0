"""Quarantine at preprocessing time: images a chain rejects are listed and left out, not fatal.

Some faults only show when an image is preprocessed: a whole-image chain that finds no breast (blank,
inverted or non-mammographic file) raises :class:`~breastseg.transforms.NoBreastFoundError`, a
``ValueError`` naming the file, which MONAI's ``Compose`` wraps in a ``RuntimeError``.
:class:`QuarantiningDataset` is :class:`~breastseg.workflows.engine.datasets.SampleCacheDataset` whose cached
(deterministic) part catches such a data error for each record: the record is left out, listed as a
quarantine entry (``case_id``, ``path``, ``reason``; the record contract of
:mod:`breastseg.workflows.data.records`) in ``quarantine_file``, and the log says how many and where.
Any other error (a bug, memory) still stops the run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from monai.transforms import Compose, Randomizable, Transform

from breastseg.workflows.data.records import quarantine_entry
from breastseg.workflows.engine.datasets import SampleCacheDataset

__all__ = ["QuarantiningDataset", "QuarantineGuard", "data_error", "QUARANTINE_KEY"]

logger = logging.getLogger("breastseg.quarantine")

#: key of the placeholder a guarded chain returns for a rejected record
QUARANTINE_KEY = "quarantined"


def data_error(error: BaseException) -> ValueError | None:
    """The ``ValueError`` behind ``error`` (itself, or the innermost one of its cause chain), if any."""
    found = None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ValueError):
            found = current
        current = current.__cause__ or current.__context__
    return found


class QuarantineGuard(Transform):
    """Run ``transform`` on a record; on a data error return ``{QUARANTINE_KEY: quarantine entry}`` instead.

    Args:
        transform: the deterministic part of a chain.
        image_key: record key of the image file (the entry's ``path``).
    """

    def __init__(self, transform: Compose, image_key: str = "image") -> None:
        self.transform = transform
        self.image_key = image_key

    def __call__(self, data: dict[str, Any]) -> Any:
        try:
            return self.transform(data)
        except Exception as error:  # noqa: BLE001 - only data errors are kept, the rest is re-raised
            cause = data_error(error)
            if cause is None:
                raise
            entry = quarantine_entry(data.get("case_id", ""), data.get(self.image_key, ""), f"preprocessing: {cause}")
            return {QUARANTINE_KEY: entry}


def _guarded(transform: Compose, image_key: str) -> Compose:
    transforms = list(transform.transforms)
    first_random = next((i for i, t in enumerate(transforms) if isinstance(t, Randomizable)), len(transforms))
    return Compose([QuarantineGuard(Compose(transforms[:first_random]), image_key), *transforms[first_random:]])


class QuarantiningDataset(SampleCacheDataset):
    """:class:`~breastseg.workflows.engine.datasets.SampleCacheDataset` that quarantines records its chain rejects.

    Args:
        data: datalist records.
        transform: the chain (a ``Compose``); everything before its first random transform is cached.
        quarantine_file: JSON file listing the rejected records, written only when there is one (the log gives
            the count and this path, never the file names: CBIS-DDSM's embed the patient id).
        cache: ``"memory"``, ``"disk"`` or ``"none"`` (see ``SampleCacheDataset``).
        cache_dir: folder of the disk cache.
        num_workers: threads used to fill the memory cache.
        image_key: record key of the image file.
        track_meta: as ``SampleCacheDataset``'s (``False`` for training).

    Raises:
        ValueError: when every record is rejected (the first reasons are in the message).
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Compose,
        quarantine_file: str | Path,
        cache: str = "memory",
        cache_dir: str | Path | None = None,
        num_workers: int | None = 1,
        image_key: str = "image",
        track_meta: bool = True,
    ) -> None:
        if not isinstance(transform, Compose):
            transform = Compose(transform)
        super().__init__(
            data, _guarded(transform, image_key), cache=cache, cache_dir=cache_dir, num_workers=num_workers, track_meta=track_meta
        )
        self.quarantine: list[dict[str, str]] = []
        kept: list[tuple[int, int | None]] = []
        for item_index, sample_index in self.index:
            item = self.base[item_index]
            if sample_index is None and isinstance(item, dict) and QUARANTINE_KEY in item:
                self.quarantine.append(item[QUARANTINE_KEY])
            else:
                kept.append((item_index, sample_index))
        self.index = kept
        if self.quarantine:
            self._report(quarantine_file)
        if not self.index:
            raise ValueError(f"every one of the {len(self.quarantine)} records was rejected by the chain: see {quarantine_file}")

    def _report(self, quarantine_file: str | Path) -> None:
        path = Path(quarantine_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.quarantine, indent=4) + "\n", encoding="utf-8")
        logger.warning("%d record(s) rejected by the chain and quarantined: see %s", len(self.quarantine), path)
