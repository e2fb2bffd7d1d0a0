"""Near-duplicate images: the same acquisition exported twice, rescaled, cropped or padded, shifted, with its
brightness or contrast changed, with calipers, crosses, dotted lines or text drawn on it, re-encoded lossily, or
exported at another bit depth.

:func:`find_near_duplicates` fingerprints every image once (:mod:`.fingerprint`, cached by :class:`.FingerprintStore`),
finds candidate pairs through one nearest-neighbour index over all keypoint descriptors (:mod:`.search`) and
checks each candidate by alignment and pixel correlation (:mod:`.verify`); :func:`near_duplicate_groups` joins the
pairs into groups (connected components). See ``README.md`` ("Honest splits") for the measured recall, precision
and cost.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .fingerprint import Fingerprint, fingerprint, read_grey
from .search import candidate_pairs
from .store import METHOD_VERSION, FingerprintStore, file_key
from .verify import Alignment, verify_pair

__all__ = [
    "METHOD_VERSION",
    "Fingerprint",
    "FingerprintStore",
    "NearDuplicatePair",
    "Alignment",
    "fingerprint",
    "read_grey",
    "file_key",
    "candidate_pairs",
    "verify_pair",
    "find_near_duplicates",
    "search_fingerprints",
    "near_duplicate_groups",
    "UnionFind",
]

logger = logging.getLogger("breastseg.near_duplicates")


@dataclass(frozen=True)
class NearDuplicatePair:
    """Images ``first`` and ``second`` (positions in the searched list) are one acquisition; ``alignment`` maps
    the second onto the first."""

    first: int
    second: int
    alignment: Alignment


def search_fingerprints(fingerprints: Sequence[Fingerprint]) -> list[NearDuplicatePair]:
    """Every verified pair among ``fingerprints`` (candidates from :func:`candidate_pairs`), in order."""
    pairs = []
    for first, second in candidate_pairs(fingerprints):
        alignment = verify_pair(fingerprints[first], fingerprints[second])
        if alignment is not None:
            pairs.append(NearDuplicatePair(first, second, alignment))
    return pairs


def find_near_duplicates(
    paths: Sequence[str | os.PathLike],
    store: FingerprintStore | None = None,
    on_unreadable: Callable[[int, Exception], None] | None = None,
) -> list[NearDuplicatePair]:
    """The near-duplicate pairs among the image files ``paths`` (positions into ``paths``).

    Fingerprints come from ``store`` when it has them (else they are computed, and kept there); the verified
    pairs of the same files are reused from it too. A file that cannot be read is passed to ``on_unreadable``
    (position, error) and left out of the search; without it the error is raised.
    """
    store = store or FingerprintStore()
    usable: list[int] = []
    prints: list[Fingerprint] = []
    for position, path in enumerate(paths):
        try:
            prints.append(store.fingerprint(path))
        except (OSError, ValueError) as error:
            if on_unreadable is None:
                raise
            on_unreadable(position, error)
            continue
        usable.append(position)
    key = store.collection_key([paths[i] for i in usable])
    rows = store.pairs(key)
    if rows is None:
        found = search_fingerprints(prints)
        rows = np.array([[p.first, p.second, *p.alignment.scale, *p.alignment.offset, p.alignment.similarity,
                          p.alignment.inliers, p.alignment.overlap] for p in found]).reshape(-1, 9)
    store.remember_pairs(key, rows)
    logger.info("near duplicates: %d pair(s) among %d image(s) (%d fingerprint(s) from the cache)",
                len(rows), len(usable), store.from_cache)
    return [
        NearDuplicatePair(usable[int(row[0])], usable[int(row[1])], Alignment(
            (float(row[2]), float(row[3])), (float(row[4]), float(row[5])), float(row[6]), int(row[7]), float(row[8])))
        for row in rows
    ]


class UnionFind:
    """Connected components over positions ``0..count-1``; a component's root is its smallest position."""

    def __init__(self, count: int) -> None:
        self.parent = list(range(count))

    def root(self, node: int) -> int:
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def join(self, first: int, second: int) -> None:
        a, b = self.root(first), self.root(second)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def components(self) -> list[list[int]]:
        """Every component, each sorted, in order of its first position."""
        members: dict[int, list[int]] = {}
        for node in range(len(self.parent)):
            members.setdefault(self.root(node), []).append(node)
        return list(members.values())


def near_duplicate_groups(count: int, pairs: Sequence[NearDuplicatePair]) -> list[list[int]]:
    """Groups of positions ``0..count-1`` joined by ``pairs`` (connected components; a pair's members are always
    together), groups of two or more only, each sorted, in order of their first member."""
    components = UnionFind(count)
    for pair in pairs:
        components.join(pair.first, pair.second)
    return [group for group in components.components() if len(group) > 1]
