"""Datasets of the harness: deterministic preprocessing cached once, random augmentation per sample.

A chain may turn one image into several samples (paper 001 crops one ROI per lesion). MONAI's
``CacheDataset`` would then yield a list per image and the batch size would vary with the number of
lesions. :class:`SampleCacheDataset` caches each image's deterministic output once (in memory, or on disk
with ``cache="disk"`` for full-size mammograms) and indexes the resulting *samples*, so a batch of 16
is 16 lesions as the paper trains, and each epoch's random transforms run per sample. With a ``cache_dir``,
the memory cache is filled from a disk copy of the same items (MONAI's ``PersistentDataset``, keyed by the
record, its files' size and modification time, and the deterministic transforms with their settings), so a
second run on the same data starts without preprocessing again.

Training datasets are built with ``track_meta=False`` (MONAI's fast-training recipe): the cached samples
are plain tensors and the random transforms run with metadata tracking off, so no per-sample ``deepcopy``
of metadata, no ``MetaTensor`` collation, and the network sees plain tensors. Validation keeps metadata
(the metrics read each case's pixel spacing from the label's affine).

:func:`build_loader` picks the loader from the device when ``num_workers`` is ``None``: on a GPU, worker
processes (persistent, pinned memory) run the random transforms beside the training loop; on a CPU, the
training thread does (the CPU is busy with the network anyway, and the random stream stays that of one thread).
"""

from __future__ import annotations

import copyreg
import logging
import os
from contextlib import contextmanager
from copy import deepcopy
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, get_track_meta, set_track_meta
from monai.data.meta_tensor import MetaTensor
from monai.data.utils import pickle_hashing
from monai.transforms import Compose, Lambda, Randomizable, apply_transform
from monai.utils import enums as monai_enums

from breastseg.workflows.engine.model_context import NUMERIC_NUMPY_GLOBALS

__all__ = ["SampleCacheDataset", "build_dataset", "build_loader", "auto_num_workers", "plain_tensors"]

logger = logging.getLogger("breastseg.datasets")


def plain_tensors(item: Any) -> Any:
    """``item`` with every ``MetaTensor`` (in dicts and lists too) as a plain ``torch.Tensor`` sharing its memory."""
    if isinstance(item, MetaTensor):
        return item.as_tensor()
    if isinstance(item, dict):
        return {key: plain_tensors(value) for key, value in item.items()}
    if isinstance(item, list):
        return [plain_tensors(value) for value in item]
    return item


def _compact_masks(item: Any, keys: Sequence[str]) -> Any:
    """Binary float masks under ``keys`` as ``uint8`` (a quarter of the bytes to cache, collate and copy)."""
    if isinstance(item, list):
        return [_compact_masks(value, keys) for value in item]
    if not isinstance(item, dict):
        return item
    compact = dict(item)
    for key in keys:
        mask = compact.get(key)
        if isinstance(mask, torch.Tensor) and mask.is_floating_point() and bool(((mask == 0) | (mask == 1)).all()):
            compact[key] = mask.to(torch.uint8)
    return compact


@contextmanager
def _meta_tracking(enabled: bool) -> Iterator[None]:
    """MONAI's global metadata switch, set for one sample's random transforms and restored after."""
    previous = get_track_meta()
    set_track_meta(enabled)
    try:
        yield
    finally:
        set_track_meta(previous)


def _file_stamps(value: Any) -> Any:
    """``value`` with every existing file path replaced by (path, size, modification time)."""
    if isinstance(value, dict):
        return {key: _file_stamps(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_file_stamps(item) for item in value]
    if isinstance(value, str) and os.path.isfile(value):
        stat = os.stat(value)
        return [value, stat.st_size, stat.st_mtime_ns]
    return value


def record_hash(record: Any) -> bytes:
    """Disk-cache key of a datalist record: the record and the size and time of each file it names (a file
    replaced under the same name is preprocessed again)."""
    return pickle_hashing(_file_stamps(record))


def _split_chain(transform: Compose) -> tuple[Compose, Compose]:
    """The deterministic head of a chain (cached) and the rest (run per sample)."""
    transforms = list(transform.transforms)
    first_random = next((i for i, t in enumerate(transforms) if isinstance(t, Randomizable)), len(transforms))
    return Compose(transforms[:first_random]), Compose(transforms[first_random:])


#: MONAI's enums, which metadata uses as keys and values (``MetaKeys.AFFINE``, ``SpaceKeys.RAS``, ``TraceKeys``...)
_MONAI_ENUMS = [value for value in vars(monai_enums).values() if isinstance(value, type) and issubclass(value, Enum)]


def _enum_by_value(member: Enum) -> tuple[type, tuple[Any]]:
    return type(member), (member.value,)


# Python 3.11.2 (seen on a fresh clone's Debian Python; 3.11.7 does not) pickles an enum member as getattr(<class>, name), which no weights-only read accepts (getattr
# would allow anything); pickled by value, as newer Pythons do, a member needs only its class
for _enum in _MONAI_ENUMS:
    copyreg.pickle(_enum, _enum_by_value)

#: What a cached ``MetaTensor`` item needs beyond plain tensors to load with ``weights_only=True``: MONAI's
#: metadata types and the numeric numpy arrays and scalars readers put in the metadata (no object arrays).
_METADATA_GLOBALS = [MetaTensor, *_MONAI_ENUMS, *NUMERIC_NUMPY_GLOBALS]


class _MetadataPersistentDataset(PersistentDataset):
    """``PersistentDataset`` whose cached ``MetaTensor`` items load weights-only.

    Stock MONAI loads its cache with ``weights_only=True``, which refuses the numpy arrays readers put in the
    metadata, takes the file for corrupt, deletes it and preprocesses again: items with metadata (validation,
    evaluation, the detector) were never read back from disk. MONAI's metadata types and numeric numpy types are
    allowed, for the cache reads alone.
    """

    def _cachecheck(self, item_transformed: Any) -> Any:
        with torch.serialization.safe_globals(_METADATA_GLOBALS):
            return super()._cachecheck(item_transformed)


class SampleCacheDataset(Dataset):
    """Cache a chain's deterministic part per record and index the samples it produces.

    Args:
        data: datalist records.
        transform: the chain (a ``Compose``); everything before its first random transform is cached.
        cache: ``"memory"`` (``CacheDataset``; filled from and written to the disk cache in ``cache_dir`` when
            one is given), ``"disk"`` (``PersistentDataset`` in ``cache_dir``, read at every access: for data
            that does not fit in memory) or ``"none"`` (recomputed every time: for quick checks only).
        cache_dir: folder of the disk cache.
        num_workers: threads used to fill the memory cache.
        track_meta: keep MONAI metadata (``MetaTensor``) in the samples. ``False`` (training): the cache holds
            plain tensors, the random transforms run without metadata, and a sample is a shallow copy of its
            cached dict (MONAI's random transforms return new tensors; they never write into their input).
            Binary masks under ``mask_keys`` are then cached as ``uint8``; the trainer casts them back to float
            on the device (:func:`breastseg.workflows.engine.harness.plain_batch`).
        mask_keys: the binary mask keys compacted when ``track_meta`` is ``False``.
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Compose,
        cache: str = "memory",
        cache_dir: str | Path | None = None,
        num_workers: int | None = 1,
        track_meta: bool = True,
        mask_keys: Sequence[str] = ("label",),
    ) -> None:
        if cache not in ("memory", "disk", "none"):
            raise ValueError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}")
        if not isinstance(transform, Compose):
            transform = Compose(transform)
        self.deterministic, self.random = _split_chain(transform)
        if cache == "memory":
            items, head = data, self.deterministic
            if cache_dir is not None:  # the memory cache is filled from the disk cache (written on a first run)
                persistent = self._persistent(data, cache_dir, track_meta)
                items, head = list(range(len(data))), Compose([Lambda(persistent.__getitem__)])
            # copy_cache=False: _transform copies only the one sample it hands out, not every lesion of its image
            self.base: Dataset = CacheDataset(
                items, head, cache_rate=1.0, num_workers=num_workers, progress=False, copy_cache=False
            )
        elif cache == "disk":
            if cache_dir is None:
                raise ValueError("cache='disk' needs cache_dir")
            self.base = self._persistent(data, cache_dir, track_meta)
        else:
            self.base = Dataset(data, self.deterministic)
        self.track_meta = track_meta
        self.mask_keys = tuple(mask_keys)
        if not track_meta and isinstance(self.base, CacheDataset):
            self.base._cache = [_compact_masks(plain_tensors(item), self.mask_keys) for item in self.base._cache]
        self.index: list[tuple[int, int | None]] = []
        for item_index in range(len(self.base)):
            item = self.base[item_index]
            if isinstance(item, list):
                self.index.extend((item_index, k) for k in range(len(item)))
            else:
                self.index.append((item_index, None))
        super().__init__(data, transform=None)
        logger.info("%d records -> %d samples", len(data), len(self.index))

    def _persistent(self, data: Sequence[dict], cache_dir: str | Path, track_meta: bool) -> PersistentDataset:
        return _MetadataPersistentDataset(
            data,
            self.deterministic,
            cache_dir=cache_dir,
            hash_func=record_hash,
            hash_transform=pickle_hashing,  # another image size or chain setting is another cache entry
            track_meta=track_meta,
        )

    def __len__(self) -> int:
        return len(self.index)

    def _transform(self, index: int) -> Any:
        item_index, sample_index = self.index[index]
        item = self.base[item_index]
        sample = item[sample_index] if sample_index is not None else item
        if self.track_meta:
            sample = deepcopy(sample)
            return apply_transform(self.random, sample) if self.random.transforms else sample
        sample = plain_tensors(sample)  # a new dict: the cached one is never written
        if not isinstance(self.base, CacheDataset):  # disk or no cache: compact each sample as it is read
            sample = _compact_masks(sample, self.mask_keys)
        if not self.random.transforms:
            return sample
        with _meta_tracking(False):
            return apply_transform(self.random, sample)


def build_dataset(
    records: Sequence[dict],
    transform: Compose,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int | None = 1,
    track_meta: bool = True,
) -> SampleCacheDataset:
    """Records + chain -> the harness dataset (see :class:`SampleCacheDataset`)."""
    if not records:
        raise ValueError("no records to build a dataset from: check the datalist split")
    return SampleCacheDataset(
        records, transform, cache=cache, cache_dir=cache_dir, num_workers=num_workers, track_meta=track_meta
    )


def auto_num_workers(device: str | torch.device | None) -> int:
    """Loader worker processes for ``device``: on CUDA, all CPUs but one for the training loop (at most 8);
    on a CPU, none (the transforms run on the training thread: with 1-2 cores, processes only compete with
    the network for them)."""
    if device is None or torch.device(device).type != "cuda":
        return 0
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, available - 1))


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int | None = 0,
    sampler: Any = None,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
    device: str | torch.device | None = None,
) -> DataLoader:
    """A MONAI ``DataLoader`` (a distributed ``sampler`` replaces shuffling).

    ``num_workers`` ``None`` picks :func:`auto_num_workers` for ``device``. With worker processes the loader
    keeps them between epochs and, on CUDA, pins the batches so they reach the GPU by non-blocking copies.

    A loader in fixed order gets its own generator: iterating it (a validation every epoch or every other)
    then leaves the global torch random stream alone, so the training trajectory does not depend on
    ``val_interval``. ``drop_last`` skips an incomplete last batch (networks whose batch norm sees one value
    per channel, such as pooled attention vectors, cannot train on a batch of one).
    """
    if num_workers is None:
        num_workers = auto_num_workers(device)
    kwargs: dict[str, Any] = {"batch_size": batch_size, "num_workers": num_workers, "sampler": sampler}
    kwargs["drop_last"] = drop_last
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    if device is not None and torch.device(device).type == "cuda":
        kwargs["pin_memory"] = True
    kwargs["shuffle"] = shuffle and sampler is None
    if not kwargs["shuffle"] and sampler is None:
        kwargs["generator"] = torch.Generator().manual_seed(0)
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    return DataLoader(dataset, **kwargs)
