"""Near-duplicate groups as the split unit: every record gets a ``group_id``, and label conflicts are quarantined.

A record's group joins the images found to be one acquisition (:mod:`.near_duplicates`) with the records that share
its ``patient_id``: on CBIS-DDSM and INbreast, a near duplicate under another patient id merges the two patients'
groups (the same film under two ids); on BUSI and UDIAT, which have no patient ids, a group is an image and its
near duplicates. ``group_id`` is the first ``patient_id`` of the group in natural order.

A near-duplicate group whose images carry different labels (the same lesion filed as benign and as malignant) is a
*label conflict*: its images are quarantined with that reason, unless ``label_conflicts="keep"``, which keeps
them (flagged ``label-conflict``, one group, so still in one partition).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from breastseg.workflows.data.near_duplicates import (
    FingerprintStore,
    NearDuplicatePair,
    UnionFind,
    find_near_duplicates,
    near_duplicate_groups,
)
from breastseg.workflows.data.records import quarantine_entry
from breastseg.workflows.data.splits import natural_key

__all__ = ["NEAR_DUPLICATE_CHOICES", "LABEL_CONFLICT_CHOICES", "Grouping", "group_by_acquisition", "pair_entry"]

#: ``group``: near duplicates share a partition; ``list``: they are found and listed, but the split moves the
#: dataset's own unit (patient, or image), as published splits did: the datalist's audit then shows the leaks
NEAR_DUPLICATE_CHOICES = ("group", "list")
LABEL_CONFLICT_CHOICES = ("quarantine", "keep")


@dataclass
class Grouping:
    """Records with ``group_id``; records quarantined here (label conflicts, pixels unreadable); the near-duplicate
    groups (the datalist's ``near_duplicates`` section, without partitions yet)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, str]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)


def pair_entry(pair: NearDuplicatePair, names: Sequence[str]) -> dict[str, Any]:
    """A verified pair as the datalist and the audit list it: the members by name and how the second maps onto the first."""
    alignment = pair.alignment
    return {
        "members": [names[pair.first], names[pair.second]],
        "similarity": alignment.similarity,
        "scale": list(alignment.scale),
        "offset": list(alignment.offset),
        "inliers": alignment.inliers,
        "overlap": alignment.overlap,
    }


def _labels(records: Sequence[dict[str, Any]], members: Sequence[int]) -> set[str]:
    return {str(records[i]["pathology"]) for i in members if records[i].get("pathology") is not None}


def group_by_acquisition(
    records: Sequence[dict[str, Any]],
    store: FingerprintStore | None = None,
    near_duplicates: str = "group",
    label_conflicts: str = "quarantine",
) -> Grouping:
    """Find the near duplicates among ``records``' images and give every usable record its ``group_id``.

    Raises:
        ValueError: an unknown ``near_duplicates`` or ``label_conflicts``.
    """
    if near_duplicates not in NEAR_DUPLICATE_CHOICES:
        raise ValueError(f"near_duplicates must be one of {NEAR_DUPLICATE_CHOICES}, got {near_duplicates!r}")
    if label_conflicts not in LABEL_CONFLICT_CHOICES:
        raise ValueError(f"label_conflicts must be one of {LABEL_CONFLICT_CHOICES}, got {label_conflicts!r}")
    result = Grouping()
    unreadable: set[int] = set()

    def quarantine_unreadable(position: int, error: Exception) -> None:
        unreadable.add(position)
        record = records[position]
        result.quarantine.append(quarantine_entry(record["case_id"], record["image"], f"pixels unreadable: {error}"))

    pairs = find_near_duplicates([r["image"] for r in records], store, on_unreadable=quarantine_unreadable)
    names = [str(r["case_id"]) for r in records]
    groups = near_duplicate_groups(len(records), pairs)
    conflicting = {i for members in groups if len(_labels(records, members)) > 1 for i in members}
    quarantined = unreadable | (conflicting if label_conflicts == "quarantine" else set())
    group_ids = _group_ids(records, pairs if near_duplicates == "group" else [], quarantined)
    for members in groups:
        conflict = members[0] in conflicting
        listed = ", ".join(f"{names[i]} {records[i].get('pathology')}" for i in members)
        for position in members if conflict and label_conflicts == "quarantine" else []:
            result.quarantine.append(quarantine_entry(
                names[position], records[position]["image"],
                f"label conflict: near duplicates labelled differently ({listed}); kept with --label-conflicts keep"))
        result.groups.append({
            "group_id": group_ids.get(members[0]),
            "members": [{"case_id": names[i], "image": records[i]["image"], "pathology": records[i].get("pathology")}
                        for i in members],
            "pairs": [pair_entry(p, names) for p in pairs if p.first in set(members)],
            "label_conflict": conflict,
            "quarantined": members[0] in quarantined,
        })
    for position, record in enumerate(records):
        if position in group_ids:
            flags = set(record.get("flags") or []) | ({"label-conflict"} if position in conflicting else set())
            result.records.append({**record, "group_id": group_ids[position], "flags": sorted(flags)})
    return result


def _group_ids(
    records: Sequence[dict[str, Any]], pairs: Sequence[NearDuplicatePair], quarantined: set[int]
) -> dict[int, str]:
    """``group_id`` by position of every record not ``quarantined``: records joined by patient and by ``pairs``,
    named by their first patient id (natural order)."""
    components = UnionFind(len(records))
    first_of_patient: dict[str, int] = {}
    for position, record in enumerate(records):
        patient = str(record.get("patient_id") or record["case_id"])
        components.join(first_of_patient.setdefault(patient, position), position)
    for pair in pairs:
        components.join(pair.first, pair.second)
    group_ids = {}
    for positions in components.components():
        kept = [i for i in positions if i not in quarantined]
        if kept:
            name = min((str(records[i].get("patient_id") or records[i]["case_id"]) for i in kept), key=natural_key)
            group_ids.update(dict.fromkeys(kept, name))
    return group_ids
