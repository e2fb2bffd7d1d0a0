"""Datasets of the harness: deterministic preprocessing cached once, random augmentation per sample.

A chain may turn one image into several samples (paper 001 crops one ROI per lesion). MONAI's
``CacheDataset`` would then yield a list per image and the batch size would vary with the number of
lesions. :class:`SampleCacheDataset` caches each image's deterministic output once (in memory, or on disk
with ``cache="disk"`` for full-size mammograms) and indexes the resulting *samples*, so a batch of 16
is 16 lesions as the paper trains, and each epoch's random transforms run per sample.
"""

from __future__ import annotations

import logging
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose, Randomizable, apply_transform

__all__ = ["SampleCacheDataset", "build_dataset", "build_loader"]

logger = logging.getLogger("breastseg.datasets")


def _split_chain(transform: Compose) -> tuple[Compose, Compose]:
    """The deterministic head of a chain (cached) and the rest (run per sample)."""
    transforms = list(transform.transforms)
    first_random = next((i for i, t in enumerate(transforms) if isinstance(t, Randomizable)), len(transforms))
    return Compose(transforms[:first_random]), Compose(transforms[first_random:])


class SampleCacheDataset(Dataset):
    """Cache a chain's deterministic part per record and index the samples it produces.

    Args:
        data: datalist records.
        transform: the chain (a ``Compose``); everything before its first random transform is cached.
        cache: ``"memory"`` (``CacheDataset``), ``"disk"`` (``PersistentDataset`` in ``cache_dir``) or
            ``"none"`` (recomputed every time: for quick checks only).
        cache_dir: folder of the disk cache.
        num_workers: threads used to fill the memory cache.
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Compose,
        cache: str = "memory",
        cache_dir: str | Path | None = None,
        num_workers: int | None = 1,
    ) -> None:
        if cache not in ("memory", "disk", "none"):
            raise ValueError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}")
        if not isinstance(transform, Compose):
            transform = Compose(transform)
        self.deterministic, self.random = _split_chain(transform)
        if cache == "memory":
            # copy_cache=False: _transform copies only the one sample it hands out, not every lesion of its image
            self.base: Dataset = CacheDataset(
                data, self.deterministic, cache_rate=1.0, num_workers=num_workers, progress=False, copy_cache=False
            )
        elif cache == "disk":
            if cache_dir is None:
                raise ValueError("cache='disk' needs cache_dir")
            self.base = PersistentDataset(data, self.deterministic, cache_dir=cache_dir)
        else:
            self.base = Dataset(data, self.deterministic)
        self.index: list[tuple[int, int | None]] = []
        for item_index in range(len(self.base)):
            item = self.base[item_index]
            if isinstance(item, list):
                self.index.extend((item_index, k) for k in range(len(item)))
            else:
                self.index.append((item_index, None))
        super().__init__(data, transform=None)
        logger.info("%d records -> %d samples", len(data), len(self.index))

    def __len__(self) -> int:
        return len(self.index)

    def _transform(self, index: int) -> Any:
        item_index, sample_index = self.index[index]
        item = self.base[item_index]
        sample = deepcopy(item[sample_index] if sample_index is not None else item)
        return apply_transform(self.random, sample) if self.random.transforms else sample


def build_dataset(
    records: Sequence[dict],
    transform: Compose,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int | None = 1,
) -> SampleCacheDataset:
    """Records + chain -> the harness dataset (see :class:`SampleCacheDataset`)."""
    if not records:
        raise ValueError("no records to build a dataset from: check the datalist split")
    return SampleCacheDataset(records, transform, cache=cache, cache_dir=cache_dir, num_workers=num_workers)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    sampler: Any = None,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A MONAI ``DataLoader`` (a distributed ``sampler`` replaces shuffling).

    A loader in fixed order gets its own generator: iterating it (a validation every epoch or every other)
    then leaves the global torch random stream alone, so the training trajectory does not depend on
    ``val_interval``. ``drop_last`` skips an incomplete last batch (networks whose batch norm sees one value
    per channel, such as pooled attention vectors, cannot train on a batch of one).
    """
    kwargs: dict[str, Any] = {"batch_size": batch_size, "num_workers": num_workers, "sampler": sampler}
    kwargs["drop_last"] = drop_last
    kwargs["shuffle"] = shuffle and sampler is None
    if not kwargs["shuffle"] and sampler is None:
        kwargs["generator"] = torch.Generator().manual_seed(0)
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    return DataLoader(dataset, **kwargs)
