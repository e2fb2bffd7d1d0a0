"""Leakage audit of any split: which images of one partition have a near duplicate in another.

:func:`audit_split` searches a :class:`~.inputs.SplitTable` (from :func:`~.inputs.read_split_table`) for near
duplicates (:mod:`breastseg.workflows.data.near_duplicates`), counts the leaks of every split per pair of partitions
(test-training, test-validation, validation-training), lists the label conflicts (a group whose images carry
different labels) and draws the groups on a contact sheet, the groups that leak first. The same file named in two
partitions is a leak too; named twice in one partition, it is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from breastseg.workflows.data.contact_sheet import SheetImage, SheetRow, write_contact_sheet
from breastseg.workflows.data.grouping import pair_entry
from breastseg.workflows.data.leaks import PARTITIONS, count_leaks, format_leaks, leaked_images
from breastseg.workflows.data.near_duplicates import FingerprintStore, find_near_duplicates, near_duplicate_groups
from breastseg.workflows.errors import UserFileNotFoundError, UserValueError

from .inputs import Entry, SplitTable, read_split_table

__all__ = ["Entry", "SplitTable", "read_split_table", "audit_split", "format_audit", "write_audit", "audit_sheet_rows", "datalist_groups", "sheet_order"]


def _check_repeats(table: SplitTable) -> None:
    seen: dict[tuple[str, str, str], Entry] = {}
    for entry in table.entries:
        first = seen.setdefault((entry.split, entry.partition, entry.image), entry)
        if first is not entry:
            raise UserValueError(f"{entry.where}: image {entry.image} is listed twice in {entry.partition} (also at "
                                 f"{first.where.rsplit(': ', 1)[-1]}); remove one of them")


def _images(table: SplitTable) -> list[str]:
    """The distinct images of the table, in order; every one must exist."""
    images = list(dict.fromkeys(entry.image for entry in table.entries))
    missing = [image for image in images if not os.path.isfile(image)]
    if missing:
        first = next(entry for entry in table.entries if entry.image == missing[0])
        raise UserFileNotFoundError(
            f"{first.where}: image {missing[0]} not found ({len(missing)} of {len(images)} images missing): did the "
            "files move? Give --images-root FOLDER (relative paths are resolved against it) or fix the paths")
    return images


def audit_split(table: SplitTable, store: FingerprintStore | None = None) -> dict[str, Any]:
    """The audit report of ``table`` (a JSON-able dict; :func:`format_audit` prints it).

    Raises:
        UserValueError: an image listed twice in one partition, or an image that cannot be read.
        UserFileNotFoundError: images that do not exist.
    """
    _check_repeats(table)
    images = _images(table)
    position = {image: index for index, image in enumerate(images)}

    def unreadable(index: int, error: Exception) -> None:
        entry = next(entry for entry in table.entries if entry.image == images[index])
        raise UserValueError(f"{entry.where}: image {images[index]} cannot be read ({error}); fix or remove it")

    pairs = find_near_duplicates(images, store, on_unreadable=unreadable)
    groups = near_duplicate_groups(len(images), pairs)
    grouped = {index for group in groups for index in group}
    by_image: dict[int, list[Entry]] = {}
    for entry in table.entries:
        by_image.setdefault(position[entry.image], []).append(entry)
    # one file in two partitions of a split: the plainest leak, a group of its own
    groups += [[index] for index, entries in by_image.items()
               if index not in grouped and len({(e.split, e.partition) for e in entries}) > len({e.split for e in entries})]
    names = [by_image[index][0].name for index in range(len(images))]
    report_groups = []
    for members in groups:
        inside = set(members)
        labels = {e.label for index in members for e in by_image[index] if e.label is not None}
        report_groups.append({
            "members": [{"name": names[i], "image": images[i], "label": by_image[i][0].label,
                         "partitions": _partitions_by_split(by_image[i])} for i in members],
            "pairs": [pair_entry(p, names) for p in pairs if p.first in inside],
            "label_conflict": len(labels) > 1,
        })
    splits = {}
    for split in table.splits:
        sizes = table.partitions(split)
        partitions = [name for name in PARTITIONS if name in sizes]
        by_partition = [[p for m in g["members"] for p in m["partitions"].get(split, [])] for g in report_groups]
        splits[split] = {
            "partitions": sizes,
            "leaks": count_leaks(by_partition, partitions),
            "leaked_images": {name: leaked_images(by_partition, name) for name in partitions},
        }
        for group, members in zip(report_groups, by_partition):
            group.setdefault("leaks_in", [])
            if len(set(members)) > 1:
                group["leaks_in"].append(split)
    report_groups.sort(key=sheet_order)
    return {
        "input": table.source,
        "kind": table.kind,
        "images": len(images),
        "splits": splits,
        "near_duplicate_groups": report_groups,
        "label_conflicts": sum(group["label_conflict"] for group in report_groups),
        "labels_given": any(entry.label is not None for entry in table.entries),
    }


def sheet_order(group: dict[str, Any]) -> tuple[bool, bool, int]:
    """Groups that leak first, then label conflicts, then the largest."""
    return not group["leaks_in"], not group["label_conflict"], -len(group["members"])


def datalist_groups(datalist: dict[str, Any]) -> list[dict[str, Any]]:
    """The near-duplicate groups a datalist recorded at indexing, as :func:`audit_split` reports them (one split,
    ``"split"``), in :func:`sheet_order`."""
    groups = []
    for group in datalist.get("near_duplicates") or []:
        partitions = {m.get("partition") for m in group["members"]} - {None}
        groups.append({
            "members": [{"name": m["case_id"], "image": m["image"], "partitions": {"split": [m.get("partition") or "quarantined"]}}
                        for m in group["members"]],
            "pairs": group["pairs"],
            "label_conflict": group.get("label_conflict", False),
            "leaks_in": ["split"] if len(partitions) > 1 else [],
        })
    return sorted(groups, key=sheet_order)


def _partitions_by_split(entries: list[Entry]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for entry in entries:
        found.setdefault(entry.split, []).append(entry.partition)
    return found


def format_audit(report: dict[str, Any]) -> list[str]:
    """The report as the lines ``breastseg audit`` prints."""
    groups = report["near_duplicate_groups"]
    lines = [f"audit of {report['input']} ({report['kind']}): {report['images']} images, "
             f"{len(groups)} near-duplicate group(s) ({sum(len(g['members']) for g in groups)} images)"]
    for split, found in report["splits"].items():
        sizes = ", ".join(f"{name} {count}" for name, count in found["partitions"].items())
        lines.append(f"{split}: {sizes}")
        lines += [f"  {line}" for line in format_leaks(found["leaks"], found["partitions"])]
    if report["labels_given"]:
        lines.append(f"label conflicts (near duplicates labelled differently): {report['label_conflicts']}")
        for group in (g for g in groups if g["label_conflict"]):
            lines.append("  " + ", ".join(f"{member['name']} ({member['label']})" for member in group["members"]))
    else:
        lines.append("label conflicts: not checked (the input gives no labels)")
    return lines


def audit_sheet_rows(groups: list[dict[str, Any]], identify: bool = True) -> list[SheetRow]:
    """Contact-sheet rows of report groups: captions give each member's partition, its name (``identify``: else
    its place in the group, for a sheet that leaves this machine) and its best similarity to the others."""
    rows = []
    for number, group in enumerate(groups, start=1):
        best: dict[str, float] = {}
        for pair in group["pairs"]:
            for name in pair["members"]:
                best[name] = max(best.get(name, 0.0), pair["similarity"])
        notes = (["LEAK " + "/".join(group.get("leaks_in", []))] if group.get("leaks_in") else [])
        notes += ["LABEL CONFLICT"] if group.get("label_conflict") else []
        images = []
        for index, member in enumerate(group["members"], start=1):
            # the partitions of the first split (the datalist's own, or fold 0)
            partition = "+".join(next(iter(member["partitions"].values()), [])) or "quarantined"
            name = member["name"] if identify else f"image {index}"
            similarity = f"sim {best[member['name']]:.2f}" if member["name"] in best else "same file"
            images.append(SheetImage(member["image"], f"{partition}\n{name}  {similarity}"))
        rows.append(SheetRow(f"group {number}: {len(images)} images {' '.join(notes)}".strip(), images))
    return rows


def write_audit(report: dict[str, Any], out: str | os.PathLike, identify: bool = True) -> tuple[Path, Path]:
    """``(audit.json, contact_sheet.png)`` written into the folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report_file = out / "audit.json"
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    sheet = write_contact_sheet(audit_sheet_rows(report["near_duplicate_groups"], identify), out / "contact_sheet.png",
                                title=f"near duplicates of {Path(report['input']).name}: groups that leak first")
    return report_file, sheet
