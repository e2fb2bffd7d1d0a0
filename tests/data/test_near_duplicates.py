"""Near-duplicate search on the synthetic layouts' planted re-exports: every kind found, nothing else grouped,
the transform between copies measured, and the groups made the split unit."""

from __future__ import annotations

import unittest
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from parameterized import parameterized

from breastseg.workflows.data.datalist import build_datalist
from breastseg.workflows.data.near_duplicates import (
    FingerprintStore,
    find_near_duplicates,
    fingerprint,
    near_duplicate_groups,
    verify_pair,
)
from breastseg.workflows.data.synthetic import generate
from breastseg.workflows.data.synthetic._us_reexport import REEXPORT_KINDS, reexport
from breastseg.workflows.data.synthetic.ultrasound import render_ultrasound, sample_lesion_styles

torch.set_num_threads(1)


def planted_groups(summary: dict) -> list[set[str]]:
    """The planted near-duplicate groups (paths relative to the layout root), joined transitively."""
    groups: list[set[str]] = []
    for pair in summary["near_duplicates"]:
        touching = [group for group in groups if {pair["source"], pair["copy"]} & group]
        merged = set().union({pair["source"], pair["copy"]}, *touching)
        groups = [group for group in groups if group not in touching] + [merged]
    return groups


def search(root: Path, relative: list[str]) -> list[set[str]]:
    pairs = find_near_duplicates([root / name for name in relative])
    return [{relative[i] for i in group} for group in near_duplicate_groups(len(relative), pairs)]


def image_names(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")
                  if "_mask" not in p.name and p.parent.name != "GT")


class TestPlantedNearDuplicates(unittest.TestCase):
    """BUSI with 80 images plants 14 re-exports, so every kind of :data:`REEXPORT_KINDS` is there."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = TemporaryDirectory()
        cls.summary = generate("busi", Path(cls._tmp.name) / "busi", cases=80, seed=0)
        cls.root = Path(cls.summary["root"])
        cls.datalist = build_datalist("busi", cls.root, seed=0, cache_file=Path(cls._tmp.name) / "cache.npz")
        cls.group_of = {m["case_id"]: group for group in cls.datalist["near_duplicates"] for m in group["members"]}

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_every_kind_is_planted(self):
        self.assertEqual({pair["transform"] for pair in self.summary["near_duplicates"]}, set(REEXPORT_KINDS))

    @parameterized.expand([(kind,) for kind in REEXPORT_KINDS])
    def test_copy_shares_the_group_of_its_source(self, kind):
        for pair in (p for p in self.summary["near_duplicates"] if p["transform"] == kind):
            source, copy = (Path(pair[key]).stem for key in ("source", "copy"))
            self.assertIn(copy, self.group_of, f"{kind} copy {copy} of {source} not found")
            self.assertIs(self.group_of[copy], self.group_of[source], kind)
            records = {r["case_id"]: r for split in ("training", "validation", "test") for r in self.datalist[split]}
            if not self.group_of[copy]["quarantined"]:
                self.assertEqual(records[source]["group_id"], records[copy]["group_id"])

    def test_label_conflict_is_quarantined_with_its_reason(self):
        (conflict,) = self.summary["label_conflicts"]
        names = {Path(conflict[key]).stem for key in ("source", "copy")}
        reasons = {q["case_id"]: q["reason"] for q in self.datalist["quarantine"]}
        self.assertEqual(set(reasons), names)
        self.assertTrue(all(reason.startswith("label conflict: near duplicates labelled differently") for reason in reasons.values()))
        kept = build_datalist("busi", self.root, seed=0, label_conflicts="keep")
        records = [r for split in ("training", "validation", "test") for r in kept[split] if r["case_id"] in names]
        self.assertEqual(len(records), 2)
        self.assertEqual(len({r["group_id"] for r in records}), 1)
        self.assertTrue(all("label-conflict" in r["flags"] for r in records))

    def test_groups_never_span_partitions_or_folds(self):
        """Property over seeds, fractions and fold counts: a group's members share one partition and one fold."""
        cache = Path(self._tmp.name) / "cache.npz"
        for seed in range(6):
            for folds in (0, 2, 3, 5):
                datalist = build_datalist("busi", self.root, seed=seed, folds=folds, val_fraction=0.1 + 0.05 * (seed % 3),
                                          test_fraction=0.2, cache_file=cache)
                where = {r["case_id"]: (split, r.get("fold")) for split in ("training", "validation", "test")
                         for r in datalist[split]}
                for group in datalist["near_duplicates"]:
                    places = {where[m["case_id"]] for m in group["members"] if m["case_id"] in where}
                    self.assertLessEqual(len(places), 1, (seed, folds, group["members"]))
                self.assertEqual(datalist["audit"]["leaked_test_images"], 0)
                self.assertTrue(all(entry["groups"] == 0 for entry in datalist["audit"]["leaks"]))

    def test_listing_without_grouping_counts_the_leaks(self):
        listed = build_datalist("busi", self.root, seed=0, near_duplicates="list", test_fraction=0.3)
        partition = {r["case_id"]: split for split in ("training", "validation", "test") for r in listed[split]}
        spanning = [g for g in listed["near_duplicates"]
                    if len({partition[m["case_id"]] for m in g["members"] if m["case_id"] in partition}) > 1]
        self.assertTrue(spanning)  # a per-image split of this layout leaks, which is what the audit must show
        test_leaks = sum(1 for g in spanning for m in g["members"] if partition.get(m["case_id"]) == "test")
        self.assertEqual(listed["audit"]["leaked_test_images"], test_leaks)


class TestRecallAndPrecision(unittest.TestCase):
    """Recall of the planted pairs >= 99 % and no pair of distinct scans grouped, on both ultrasound layouts."""

    def check(self, layout: str, cases: int, seed: int) -> None:
        with TemporaryDirectory() as folder:
            summary = generate(layout, Path(folder) / layout, cases=cases, seed=seed)
            root = Path(summary["root"])
            found = search(root, image_names(root))
        planted = planted_groups(summary)
        if layout == "busi":  # the exact copy is a near duplicate too (the indexer drops it first)
            planted.append({"benign/benign (2).png", f"benign/benign ({summary['benign']}).png"})
        pairs = [(pair["source"], pair["copy"]) for pair in summary["near_duplicates"]]
        together = sum(any({a, b} <= group for group in found) for a, b in pairs)
        self.assertGreaterEqual(together / len(pairs), 0.99, f"{layout} seed {seed}: {together} of {len(pairs)}")
        for group in found:  # precision: every found group lies inside one planted group
            self.assertTrue(any(group <= truth for truth in planted), f"{layout} seed {seed}: {sorted(group)}")

    def test_busi(self):
        self.check("busi", 150, seed=0)

    def test_busi_other_seed(self):
        self.check("busi", 120, seed=3)

    def test_udiat(self):
        self.check("udiat", 80, seed=1)


class TestAlignment(unittest.TestCase):
    """The transform reported maps the copy onto the source in the images' own pixels."""

    @classmethod
    def setUpClass(cls):
        rng = np.random.default_rng(4)
        frame = render_ultrasound(rng, 420, 500, sample_lesion_styles(rng, "benign", 1))
        cls.image, cls.masks = frame.image, frame.lesion_masks
        cls.source = fingerprint(cls.image)

    def test_crop_offset_and_unit_scale(self):
        copy = self.image[37:380, 52:460]
        alignment = verify_pair(self.source, fingerprint(copy))
        self.assertIsNotNone(alignment)
        np.testing.assert_allclose(alignment.scale, (1.0, 1.0), atol=0.02)
        np.testing.assert_allclose(alignment.offset, (37, 52), atol=2.0)
        self.assertGreater(alignment.similarity, 0.8)

    def test_rescale_factor(self):
        copy = reexport(self.image, self.masks, "rescaled", np.random.default_rng(0)).image
        alignment = verify_pair(self.source, fingerprint(copy))
        self.assertIsNotNone(alignment)
        expected = (self.image.shape[0] / copy.shape[0], self.image.shape[1] / copy.shape[1])
        np.testing.assert_allclose(alignment.scale, expected, rtol=0.02)

    def test_distinct_scans_with_the_same_burned_in_text_are_not_paired(self):
        for seed in range(6):
            rng = np.random.default_rng(100 + seed)
            other = render_ultrasound(rng, 420, 500, sample_lesion_styles(rng, "benign", 1))
            self.assertIsNone(verify_pair(self.source, fingerprint(other.image)), seed)

    def test_cache_reuses_fingerprints_and_pairs(self):
        with TemporaryDirectory() as folder:
            summary = generate("busi", Path(folder) / "b", cases=12, seed=0)
            root = Path(summary["root"])
            paths = [root / name for name in image_names(root)]
            store = FingerprintStore(Path(folder) / "cache.npz")
            first = find_near_duplicates(paths, store)
            store.save()
            again = FingerprintStore(Path(folder) / "cache.npz")
            self.assertEqual(find_near_duplicates(paths, again), first)
            self.assertEqual(again.computed, 0)
            paths[0].touch()  # a changed file is fingerprinted anew
            self.assertEqual(find_near_duplicates(paths, FingerprintStore(Path(folder) / "cache.npz")), first)


if __name__ == "__main__":
    unittest.main()
