"""Fingerprints and verified pairs kept on disk, so that indexing a dataset a second time costs seconds.

One ``.npz`` file (no pickled objects: read with ``allow_pickle=False``). A fingerprint is found again by its
file's absolute path, size and modification time, so a replaced file is fingerprinted anew; the verified pairs
of a collection are found again by a digest of all its files' keys and the method's version. Only what the last
search used is written back; a cache file that cannot be read is ignored (and rewritten), never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .fingerprint import KEYPOINTS, THUMBNAIL_SIDE, WORKING_SIDE, Fingerprint, fingerprint, read_grey

__all__ = ["METHOD_VERSION", "FingerprintStore", "file_key"]

#: part of every cache key and of every datalist's split: a change of the method must not reuse old results
#: (the revision counts changes of the search and the check)
METHOD_VERSION = f"sift{KEYPOINTS}-w{WORKING_SIDE}-t{THUMBNAIL_SIDE}-r4"

logger = logging.getLogger("breastseg.near_duplicates")


def file_key(path: str | os.PathLike) -> str:
    """``absolute path|size|mtime_ns`` of an existing file."""
    path = os.path.abspath(os.fspath(path))
    stat = os.stat(path)
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


class FingerprintStore:
    """Fingerprints by file, and verified pairs by collection; backed by ``cache_file`` when given."""

    def __init__(self, cache_file: str | os.PathLike | None = None) -> None:
        self.cache_file = Path(cache_file) if cache_file else None
        self._cached: dict[str, Fingerprint] = {}
        self._cached_pairs: dict[str, np.ndarray] = {}
        self._used: dict[str, Fingerprint] = {}
        self._pairs: dict[str, np.ndarray] = {}
        self.computed = 0
        self.from_cache = 0
        if self.cache_file is not None and self.cache_file.is_file():
            self._load(self.cache_file)

    def fingerprint(self, path: str | os.PathLike, pixels: Callable[[], np.ndarray] | np.ndarray | None = None) -> Fingerprint:
        """The fingerprint of the image file ``path``: cached, or computed from ``pixels`` (an array or a callable
        giving one: the caller's own decode) or else from the file (:func:`read_grey`)."""
        key = file_key(path)
        found = self._used.get(key) or self._cached.get(key)
        self.from_cache += found is not None and key not in self._used
        if found is None:
            array = pixels() if callable(pixels) else pixels
            found = fingerprint(read_grey(path) if array is None else array)
            self.computed += 1
        self._used[key] = found
        return found

    @staticmethod
    def collection_key(paths: Sequence[str | os.PathLike]) -> str:
        digest = hashlib.sha256(METHOD_VERSION.encode())
        for path in paths:
            digest.update(file_key(path).encode() + b"\n")
        return digest.hexdigest()

    def pairs(self, key: str) -> np.ndarray | None:
        """Verified pairs of the collection ``key`` (rows ``i, j, row scale, col scale, row offset, col offset,
        similarity, inliers, overlap``), or ``None`` when not searched before."""
        found = self._pairs.get(key)
        return self._cached_pairs.get(key) if found is None else found

    def remember_pairs(self, key: str, rows: np.ndarray) -> None:
        self._pairs[key] = np.asarray(rows, dtype=np.float64).reshape(-1, 9)

    def save(self) -> None:
        """Write what this search used (atomically: a partial file never replaces a good one)."""
        if self.cache_file is None:
            return
        keys = list(self._used)
        prints = [self._used[key] for key in keys]
        pair_keys = list(self._pairs)
        arrays = {
            "version": np.array(METHOD_VERSION),
            "keys": np.array(keys, dtype=str),
            "shapes": np.array([p.shape for p in prints], dtype=np.int64).reshape(-1, 2),
            "point_counts": np.array([len(p.points) for p in prints], dtype=np.int64),
            "points": _stack([p.points for p in prints], (0, 2), np.float32),
            "descriptors": _stack([p.descriptors for p in prints], (0, 128), np.uint8),
            "thumbnail_shapes": np.array([p.thumbnail.shape for p in prints], dtype=np.int64).reshape(-1, 2),
            "thumbnails": np.concatenate([p.thumbnail.ravel() for p in prints] or [np.zeros(0, np.uint8)]),
            "pair_keys": np.array(pair_keys, dtype=str),
            "pair_counts": np.array([len(self._pairs[k]) for k in pair_keys], dtype=np.int64),
            "pairs": _stack([self._pairs[k] for k in pair_keys], (0, 9), np.float64),
        }
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache_file.with_name(self.cache_file.name + ".partial.npz")
        np.savez(partial, **arrays)
        os.replace(partial, self.cache_file)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["version"]) != METHOD_VERSION:
                    return
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError, EOFError) as error:
            logger.warning("near-duplicate cache %s is unreadable (%s); fingerprinting again", path, error)
            return
        point_ends = np.cumsum(arrays["point_counts"])
        thumbnail_ends = np.cumsum(np.prod(arrays["thumbnail_shapes"], axis=1))
        for index, key in enumerate(arrays["keys"]):
            start = point_ends[index] - arrays["point_counts"][index]
            rows, columns = arrays["thumbnail_shapes"][index]
            thumbnail = arrays["thumbnails"][thumbnail_ends[index] - rows * columns : thumbnail_ends[index]]
            self._cached[str(key)] = Fingerprint(
                arrays["points"][start : point_ends[index]],
                arrays["descriptors"][start : point_ends[index]],
                thumbnail.reshape(rows, columns),
                tuple(int(v) for v in arrays["shapes"][index]),
            )
        pair_ends = np.cumsum(arrays["pair_counts"])
        for index, key in enumerate(arrays["pair_keys"]):
            self._cached_pairs[str(key)] = arrays["pairs"][pair_ends[index] - arrays["pair_counts"][index] : pair_ends[index]]


def _stack(parts: list[np.ndarray], empty_shape: tuple[int, int], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)
