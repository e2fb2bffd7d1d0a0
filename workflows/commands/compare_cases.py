"""The per-case scores that ``breastseg compare`` compares: read, matched across methods, split checked.

An evaluation folder (``<output_dir>/eval/<run>/``) holds the ``cases.csv`` its bundle wrote; the datalist the
evaluation read is ``<output_dir>/datalist.json``, two folders up. Methods are compared on the cases they share:

- a case that is not in every evaluation is left out and listed (``left_out_cases.csv``, with the reason);
- the empty-mask rule (:mod:`breastseg.workflows.metrics.case`) writes an undefined value as NaN and says why in
  ``status``. A NaN is never dropped silently: a ``both_empty`` case (normal image, nothing predicted) scores the
  metric's best value (Dice 1, HD 0) where another method's status makes the metric defined on it (a
  ``false_positive`` on the same normal image), so a method that paints normal images loses those cases; a case
  where every method is ``both_empty`` carries no difference and is left out, as it is left out of the means; any
  other NaN (``hd95_mm`` without a known pixel spacing, precision of a ``missed`` case) leaves the case out.
  Every left-out case is listed with its reason and counted;
- evaluations of different splits are refused: the split of an evaluation is its datalist's dataset, seed and
  split settings and the case ids of the evaluated split (a hash).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from breastseg.workflows.errors import UserFileNotFoundError, UserValueError
from breastseg.workflows.metrics import ELIGIBLE_STATUSES

__all__ = [
    "Evaluation",
    "MatchedCases",
    "find_cases_csv",
    "load_evaluation",
    "load_case_scores",
    "evaluation_split",
    "check_same_split",
    "match_cases",
    "write_left_out",
]

logger = logging.getLogger("breastseg.compare")

CaseKey = tuple[str, str]


def find_cases_csv(path: str | Path) -> Path:
    """``path`` itself when it is a file, else ``cases.csv`` in it or in its newest evaluation sub-folder.

    Raises:
        FileNotFoundError: nothing named ``cases.csv`` there.
    """
    path = Path(path)
    if path.is_file():
        return path
    candidates = [path / "cases.csv"] + sorted(path.glob("*/cases.csv"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserFileNotFoundError(f"no cases.csv at {path} (expected an evaluation folder or the CSV itself)")


@dataclass
class Evaluation:
    """One method's ``cases.csv``: ``{(case_id, lesion_index): value}`` of a metric, the cases' empty-mask
    ``status`` (absent when the CSV has no such column), the names of the evaluated datalist splits and the
    datalist evaluated (``None``: ``datalist.json`` two folders above the evaluation folder, a bundle's layout)."""

    path: Path
    values: dict[CaseKey, float]
    statuses: dict[CaseKey, str] = field(default_factory=dict)
    split_names: tuple[str, ...] = ()
    datalist: Path | None = None


def load_evaluation(path: str | Path, metric: str = "dice", datalist: str | Path | None = None) -> Evaluation:
    """Read ``metric`` (NaN allowed: the empty-mask rule's undefined value) from an evaluation's ``cases.csv``;
    ``datalist``: the datalist it evaluated, where it is not a bundle's (see :class:`Evaluation`).

    Raises:
        ValueError: no ``case_id`` or ``metric`` column, a repeated case, no case row, or a value that is
            neither a number nor ``nan`` (an empty cell, text, infinity); the message names the file and case.
    """
    path = find_cases_csv(path)
    evaluation = Evaluation(path, {}, datalist=Path(datalist) if datalist is not None else None)
    split_names = set()
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for needed in ("case_id", metric):
            if needed not in columns:
                raise UserValueError(f"{path}: no {needed!r} column (columns: {columns})")
        for line, row in enumerate(reader, start=2):
            key = (row["case_id"], row.get("lesion_index") or "0")
            if key in evaluation.values:
                raise UserValueError(f"{path} line {line}: case {key[0]} lesion {key[1]} appears twice")
            try:
                value = float(row[metric])
            except (TypeError, ValueError):
                value = math.inf
            if math.isinf(value):
                raise UserValueError(f"{path} line {line}: {metric} of case {key[0]} is {row[metric]!r}, "
                                 "not a number (nan is read as the empty-mask rule's undefined value)")
            evaluation.values[key] = value
            if row.get("status"):
                evaluation.statuses[key] = row["status"]
            if row.get("split"):
                split_names.add(row["split"])
    if not evaluation.values:
        raise UserValueError(f"{path}: no case rows")
    evaluation.split_names = tuple(sorted(split_names))
    return evaluation


def load_case_scores(path: str | Path, metric: str = "dice") -> dict[CaseKey, float]:
    """``{(case_id, lesion_index): value}`` of ``metric`` in an evaluation's ``cases.csv`` (see :func:`load_evaluation`)."""
    return load_evaluation(path, metric).values


def evaluation_split(evaluation: Evaluation) -> tuple[str, str] | None:
    """``(identity, description)`` of the split the evaluation used, from its datalist (``datalist.json`` two folders
    above its ``cases.csv`` for a bundle's); ``None`` (with a warning) where there is none or it no longer holds the cases."""
    datalist_path = evaluation.datalist or evaluation.path.parent.parent.parent / "datalist.json"
    if not datalist_path.is_file():
        logger.warning("%s: no datalist.json at %s, its split is not checked", evaluation.path, datalist_path)
        return None
    try:
        datalist = json.loads(datalist_path.read_text())
    except json.JSONDecodeError as error:
        raise UserValueError(f"{datalist_path}: not a datalist JSON ({error}); rebuild it with breastseg datalist") from None
    names = evaluation.split_names or ("test",)
    ids = sorted(str(r["case_id"]) for name in names for r in datalist.get(name, []))
    if not {case for case, _ in evaluation.values} <= set(ids):
        logger.warning("%s: cases not in the %s split of %s (datalist rewritten since?), its split is not checked",
                       evaluation.path, "/".join(names), datalist_path)
        return None
    settings = datalist.get("split", {})
    identity = json.dumps([datalist.get("dataset"), names, datalist.get("seed"), settings.get("method"),
                           settings.get("val_fraction"), settings.get("test_fraction"), settings.get("folds"), ids])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    description = (f"{datalist.get('dataset')} {'/'.join(names)} split {digest} ({settings.get('method')}, seed "
                   f"{datalist.get('seed')}, val {settings.get('val_fraction')}, test {settings.get('test_fraction')}, "
                   f"{len(ids)} cases) of {datalist_path}")
    return identity, description


def check_same_split(evaluations: Mapping[str, Evaluation]) -> dict[str, str | None]:
    """Each method's split description; refuses evaluations of another split than the first known one.

    Raises:
        ValueError: one line naming both methods and both splits.
    """
    splits = {name: evaluation_split(evaluation) for name, evaluation in evaluations.items()}
    known = [(name, split) for name, split in splits.items() if split is not None]
    for name, split in known[1:]:
        first, reference = known[0]
        if split[0] != reference[0]:
            raise UserValueError(f"method {name!r} was evaluated on another split than {first!r}: {split[1]} vs {reference[1]}; "
                             "evaluate every method on one split (same dataset folder, seed and fractions)")
    return {name: split[1] if split else None for name, split in splits.items()}


@dataclass
class MatchedCases:
    """The ``(N cases, k methods)`` table compared, its case keys, and the cases left out with their reasons."""

    keys: list[CaseKey]
    table: np.ndarray
    left_out: list[tuple[CaseKey, str]]
    both_empty_scored_best: int

    def left_out_counts(self) -> dict[str, int]:
        return dict(Counter(reason.split(":")[0] for _, reason in self.left_out))


def match_cases(evaluations: Mapping[str, Evaluation], metric: str, higher_is_better: bool) -> MatchedCases:
    """The cases every method scored, with the module's NaN rule; the others left out with a reason.

    Raises:
        ValueError: fewer than 2 cases remain (the message counts the reasons).
    """
    names = list(evaluations)
    every = set.union(*(set(e.values) for e in evaluations.values()))
    eligible = ELIGIBLE_STATUSES.get(metric, frozenset())
    keys, rows, left_out, filled = [], [], [], 0
    for key in sorted(every):
        absent = [name for name in names if key not in evaluations[name].values]
        if absent:
            left_out.append((key, f"not in every evaluation: missing from {', '.join(absent)}"))
            continue
        values = [evaluations[name].values[key] for name in names]
        statuses = [evaluations[name].statuses.get(key) for name in names]
        if any(math.isnan(v) for v in values) and any(s in eligible for s in statuses):
            fill = [math.isnan(v) and s == "both_empty" for v, s in zip(values, statuses)]
            values = [(1.0 if higher_is_better else 0.0) if f else v for v, f in zip(values, fill)]
            filled += any(fill)
        undefined = [name for name, value in zip(names, values) if math.isnan(value)]
        if undefined:
            why = ", ".join(f"{name} ({status or 'nan'})" for name, status in zip(names, statuses) if name in undefined)
            kind = "both_empty in every method" if set(statuses) == {"both_empty"} else f"{metric} undefined"
            left_out.append((key, f"{kind}: {why}"))
            continue
        keys.append(key)
        rows.append(values)
    if len(keys) < 2:
        counts = dict(Counter(reason.split(":")[0] for _, reason in left_out))
        raise UserValueError(f"only {len(keys)} case(s) can be compared on {metric} across {names}; left out: {counts}")
    return MatchedCases(keys, np.array(rows, dtype=np.float64), left_out, filled)


def write_left_out(matched: MatchedCases, path: Path) -> Path:
    """``case_id, lesion_index, reason`` of every left-out case (a local file: case ids are never logged)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "lesion_index", "reason"])
        for (case, lesion), reason in matched.left_out:
            writer.writerow([case, lesion, reason])
    return path
