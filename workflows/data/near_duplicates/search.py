"""Candidate pairs without comparing every pair: one approximate nearest-neighbour index over all keypoint
descriptors (FLANN randomized k-d trees), then votes.

The index holds the descriptors projected on their :data:`INDEX_DIMENSIONS` principal components (computed on a
sample of this collection's descriptors): SIFT descriptors are redundant, a k-d tree searches fewer dimensions
better, and the index then costs 128 bytes a keypoint instead of 512 (about 19 KiB an image), so the search of
10,000 images holds a few hundred megabytes, not gigabytes. The pixel check uses the full descriptors.

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

__all__ = ["NEIGHBOURS", "MIN_VOTES", "PER_IMAGE", "INDEX_DIMENSIONS", "candidate_pairs"]

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
#: images whose keypoints are queried at once
_IMAGES_PER_CHUNK = 500
#: principal components of the descriptors kept in the index
INDEX_DIMENSIONS = 32
#: descriptors sampled (evenly over the images) to find the principal components
_PCA_SAMPLE = 100_000


def candidate_pairs(fingerprints: Sequence[Fingerprint]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of fingerprint positions worth checking pixel by pixel, sorted."""
    counts = np.array([len(f.descriptors) for f in fingerprints], dtype=np.int64)
    if counts.sum() <= NEIGHBOURS or len(fingerprints) < 2:
        return []
    owners = np.repeat(np.arange(len(fingerprints)), counts)
    mean, basis = _principal_components(fingerprints, counts)
    ends = np.cumsum(counts)

    def projected(first: int, last: int) -> np.ndarray:
        """The index coordinates of the keypoints of images ``first..last-1``."""
        rows = np.empty((ends[last - 1] - ends[first] + counts[first], basis.shape[1]), np.float32)
        start = 0
        for fingerprint in fingerprints[first:last]:
            rows[start : start + len(fingerprint.descriptors)] = (fingerprint.descriptors - mean) @ basis
            start += len(fingerprint.descriptors)
        return rows

    # FLANN keeps its own copy of the points: ours goes once the index is built
    index = cv2.flann_Index(projected(0, len(fingerprints)), {"algorithm": 1, "trees": _TREES})  # 1: KDTREE
    pairs: set[tuple[int, int]] = set()
    # the queries of whole images at a time: every vote an image casts is counted within its chunk, and the
    # memory of the neighbour lists stays that of one chunk whatever the collection's size
    for first in range(0, len(fingerprints), _IMAGES_PER_CHUNK):
        last = min(first + _IMAGES_PER_CHUNK, len(fingerprints))
        neighbours, distances = index.knnSearch(projected(first, last), NEIGHBOURS + 1, params={"checks": _CHECKS})
        query_owners = owners[ends[first] - counts[first] : ends[last - 1]]
        pairs.update(_strongest(*_votes(query_owners, owners[neighbours], distances)))
    return sorted(pairs)


def _principal_components(fingerprints: Sequence[Fingerprint], counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, basis)``: the descriptors' mean and their first :data:`INDEX_DIMENSIONS` principal axes, as
    columns, from every k-th image's descriptors (float32)."""
    step = max(1, int(counts.sum() // _PCA_SAMPLE))
    sample = np.concatenate([f.descriptors for f in fingerprints[::step]]).astype(np.float64)
    mean = sample.mean(axis=0)
    sample -= mean
    # eigenvectors of the 128 x 128 covariance: the SVD of the sample itself would hold it several times over
    _, axes = np.linalg.eigh(sample.T @ sample)
    return mean.astype(np.float32), np.ascontiguousarray(axes[:, ::-1][:, :INDEX_DIMENSIONS], dtype=np.float32)


def _votes(query_owners: np.ndarray, neighbour_owners: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(image pairs (voter, voted), vote counts)``: a neighbour from another image votes for it when it is clearly
    nearer than the farthest neighbour; one vote per keypoint and image, however many of its neighbours it holds."""
    voting = (neighbour_owners != query_owners[:, None]) & (distances < _RATIO_SQUARED * distances[:, -1:])
    queries, columns = np.nonzero(voting)
    votes = np.unique(queries * np.int64(neighbour_owners.max() + 1) + neighbour_owners[queries, columns])
    voters = query_owners[votes // (neighbour_owners.max() + 1)]
    voted = votes % (neighbour_owners.max() + 1)
    return np.unique(np.stack([voters, voted], axis=1), axis=0, return_counts=True)


def _strongest(image_pairs: np.ndarray, counts: np.ndarray) -> set[tuple[int, int]]:
    """The images each image votes for most (at least :data:`MIN_VOTES` votes, :data:`PER_IMAGE` at most)."""
    keep = counts >= MIN_VOTES
    image_pairs, counts = image_pairs[keep], counts[keep]
    order = np.lexsort((-counts, image_pairs[:, 0]))  # by voting image, most votes first
    image_pairs = image_pairs[order]
    first = np.searchsorted(image_pairs[:, 0], image_pairs[:, 0], side="left")
    strongest = image_pairs[np.arange(len(image_pairs)) - first < PER_IMAGE]
    return {(int(min(a, b)), int(max(a, b))) for a, b in strongest}
