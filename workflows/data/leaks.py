"""Leak counts of a split: near-duplicate groups whose members sit in two partitions.

A group is given as the partition of each of its members (``None`` for a member in none, e.g. quarantined). For
every pair of partitions, in the order :func:`partition_pairs` gives (the held-out one first), a leak entry counts
the groups spanning both and, on each side, the images of those groups.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["PARTITIONS", "partition_pairs", "count_leaks", "leaked_images", "format_leaks"]

#: the project's partitions, the most held-out first: a test image with a copy in training is a test leak
PARTITIONS = ("test", "validation", "training")


def partition_pairs(partitions: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of ``partitions`` (given most held-out first); for the project's three: test-training,
    test-validation, validation-training."""
    pairs = [(partitions[i], partitions[j]) for i in range(len(partitions)) for j in range(i + 1, len(partitions))]
    return sorted(pairs, key=lambda pair: (partitions.index(pair[0]), -partitions.index(pair[1])))


def count_leaks(groups: Sequence[Sequence[str | None]], partitions: Sequence[str] = PARTITIONS) -> list[dict[str, Any]]:
    """One entry per pair of partitions: ``{"between": [a, b], "groups": g, "images": {a: n_a, b: n_b}}``."""
    leaks = []
    for first, second in partition_pairs(partitions):
        spanning = [group for group in groups if first in group and second in group]
        leaks.append({
            "between": [first, second],
            "groups": len(spanning),
            "images": {first: sum(group.count(first) for group in spanning),
                       second: sum(group.count(second) for group in spanning)},
        })
    return leaks


def leaked_images(groups: Sequence[Sequence[str | None]], partition: str) -> int:
    """Images of ``partition`` with a near duplicate in another partition (each image counted once)."""
    return sum(group.count(partition) for group in groups
               if partition in group and any(other not in (None, partition) for other in group))


def format_leaks(leaks: Sequence[dict[str, Any]], sizes: dict[str, int] | None = None) -> list[str]:
    """One line per pair of partitions: ``test <-> training: 27 of 78 test images (21 groups) ...``."""
    lines = []
    for entry in leaks:
        first, second = entry["between"]
        of = f" of {sizes[first]}" if sizes and first in sizes else ""
        lines.append(f"{first} <-> {second}: {entry['images'][first]}{of} {first} image(s) have a near duplicate in "
                     f"{second} ({entry['images'][second]} there; {entry['groups']} group(s))")
    return lines
