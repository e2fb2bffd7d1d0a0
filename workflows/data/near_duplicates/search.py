"""Candidate pairs without comparing every pair: one approximate nearest-neighbour index over all keypoint
descriptors (FLANN randomized k-d trees), then votes.

Each descriptor asks for its :data:`NEIGHBOURS` nearest descriptors of the whole collection. A neighbour from
another image votes for that image when it is clearly closer than the farthest of them (a ratio test against
the last neighbour): a keypoint on burned-in text that every scan of one scanner shows has many neighbours at
the same distance and votes for none, while a keypoint of a copied frame is much closer to its copy than to
anything else. The images with at least :data:`MIN_VOTES` votes, at most :data:`PER_IMAGE` per image (the
most voted), become candidates. Cost: building and querying the index grows as n log n in the number of
descriptors, then every image has a bounded number of candidates, so the pixel checks grow linearly.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .fingerprint import Fingerprint

__all__ = ["NEIGHBOURS", "MIN_VOTES", "PER_IMAGE", "candidate_pairs"]

#: neighbours asked per descriptor: a near-duplicate group of up to this many images is seen at once
NEIGHBOURS = 8
#: votes an image needs from another to become its candidate
MIN_VOTES = 3
#: candidates kept per image (larger groups still join: every member links to some others)
PER_IMAGE = 6
#: squared-distance ratio (0.8 on distances) to the farthest neighbour below which a neighbour votes
_RATIO_SQUARED = 0.64
#: FLANN: randomized k-d trees and leaves checked per query (recall of the true neighbours vs time)
_TREES, _CHECKS = 4, 32


def candidate_pairs(fingerprints: Sequence[Fingerprint]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of fingerprint positions worth checking pixel by pixel, sorted."""
    owners = np.concatenate([np.full(len(f.descriptors), i, dtype=np.int64) for i, f in enumerate(fingerprints)] or
                            [np.zeros(0, np.int64)])
    if len(owners) <= NEIGHBOURS or len(fingerprints) < 2:
        return []
    descriptors = np.concatenate([f.descriptors for f in fingerprints]).astype(np.float32)
    index = cv2.flann_Index(descriptors, {"algorithm": 1, "trees": _TREES})  # 1: FLANN_INDEX_KDTREE
    neighbours, distances = index.knnSearch(descriptors, NEIGHBOURS + 1, params={"checks": _CHECKS})
    neighbour_owners = owners[neighbours]
    voting = (neighbour_owners != owners[:, None]) & (distances < _RATIO_SQUARED * distances[:, -1:])
    queries, columns = np.nonzero(voting)
    # one vote per keypoint and other image, however many of its neighbours that image holds
    votes = np.unique(np.stack([queries, neighbour_owners[queries, columns]], axis=1), axis=0)
    image_pairs, counts = np.unique(np.stack([owners[votes[:, 0]], votes[:, 1]], axis=1), axis=0, return_counts=True)
    return _strongest(image_pairs, counts)


def _strongest(image_pairs: np.ndarray, counts: np.ndarray) -> list[tuple[int, int]]:
    """The images each image votes for most (at least :data:`MIN_VOTES` votes, :data:`PER_IMAGE` at most)."""
    keep = counts >= MIN_VOTES
    image_pairs, counts = image_pairs[keep], counts[keep]
    order = np.lexsort((-counts, image_pairs[:, 0]))  # by voting image, most votes first
    image_pairs = image_pairs[order]
    first = np.searchsorted(image_pairs[:, 0], image_pairs[:, 0], side="left")
    strongest = image_pairs[np.arange(len(image_pairs)) - first < PER_IMAGE]
    return sorted({(int(min(a, b)), int(max(a, b))) for a, b in strongest})
