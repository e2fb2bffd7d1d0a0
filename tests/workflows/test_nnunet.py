"""nnU-Net side by side: the export of the synthetic BUSI and CBIS-DDSM layouts (split, files, nnU-Net's own
integrity check where nnunetv2 is installed) and nnU-Net prediction folders scored by ``breastseg compare``."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from breastseg.transforms import chains
from breastseg.workflows.commands.bundle import PIPELINE_KEYS
from breastseg.workflows.commands.cli import main
from breastseg.workflows.commands.nnunet_export import export_nnunet, pre_resize_chain
from breastseg.workflows.data.datalist import build_datalist, write_datalist
from breastseg.workflows.data.synthetic import generate
from breastseg.workflows.metrics import compute_case_table, table_to_rows

ROOT = Path(__file__).resolve().parents[2]
BREASTSEG = str(Path(sys.executable).with_name("breastseg"))
NNUNET = importlib.util.find_spec("nnunetv2") is not None
NNUNET_REASON = ('nnunetv2 is not installed: it is the optional extra (pip install -e ".[nnunet]" then pip install '
                 "--no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4, see the README)")


def _datalist(layout: str, root: Path, out: Path, cases: int, **split) -> Path:
    generate(layout, root, cases=cases, seed=3)
    return write_datalist(build_datalist(layout, root, **split), out)


class TestExportNnunet(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.busi_json = _datalist("busi", cls.tmp / "busi", cls.tmp / "busi.json", 12, val_fraction=0.2, test_fraction=0.4)
        cls.cbis_json = _datalist("cbis-ddsm", cls.tmp / "cbis", cls.tmp / "cbis.json", 6, folds=2)
        cls.raw = cls.tmp / "nnUNet_raw"
        cls.busi = export_nnunet(cls.busi_json, 501, cls.raw, ckpt_dir=cls.tmp / "no_model")  # not the clone's bundles/*/models
        cls.cbis = export_nnunet(cls.cbis_json, 502, cls.raw, preprocessed=cls.tmp / "nnUNet_preprocessed")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def _case_ids(self, manifest, identifiers):
        by_identifier = {case["identifier"]: case["case_id"] for case in manifest["cases"]}
        return sorted(by_identifier[identifier] for identifier in identifiers)

    def test_splits_final_equals_the_datalist_split(self):
        datalist = json.loads(self.busi_json.read_text())
        splits = json.loads((Path(self.busi["folder"]) / "splits_final.json").read_text())
        self.assertEqual(len(splits), 1)
        for nnunet_key, split in (("train", "training"), ("val", "validation")):  # what the bundle trains on: lesion images
            self.assertEqual(self._case_ids(self.busi, splits[0][nnunet_key]), sorted(r["case_id"] for r in datalist[split] if r["lesion_count"]))
        # folds: nnU-Net fold k validates on the datalist's fold k and trains on the others
        datalist = json.loads(self.cbis_json.read_text())
        non_test = datalist["training"] + datalist["validation"]
        folder = Path(self.cbis["folder"])
        splits = json.loads((folder / "splits_final.json").read_text())
        self.assertEqual(len(splits), 2)
        for fold, entry in enumerate(splits):
            self.assertEqual(self._case_ids(self.cbis, entry["val"]), sorted(r["case_id"] for r in non_test if r["fold"] == fold))
            self.assertEqual(self._case_ids(self.cbis, entry["train"]), sorted(r["case_id"] for r in non_test if r["fold"] != fold))
        copied = self.tmp / "nnUNet_preprocessed" / folder.name / "splits_final.json"
        self.assertEqual(json.loads(copied.read_text()), splits)

    def test_test_images_only_in_images_ts_and_files_follow_the_chain(self):
        datalist = json.loads(self.busi_json.read_text())
        folder = Path(self.busi["folder"])
        test_ids = {case["identifier"] for case in self.busi["cases"] if case["split"] == "test"}
        self.assertEqual(len(test_ids), sum(r["lesion_count"] > 0 for r in datalist["test"]))
        trained = {p.name[: -len("_0000.nii.gz")] for p in (folder / "imagesTr").glob("*_0000.nii.gz")}
        self.assertEqual({p.name[: -len("_0000.nii.gz")] for p in (folder / "imagesTs").iterdir()}, test_ids)
        self.assertFalse(trained & test_ids)
        self.assertEqual({p.name[: -len(".nii.gz")] for p in (folder / "labelsTr").iterdir()}, trained)
        dataset_json = json.loads((folder / "dataset.json").read_text())
        self.assertEqual(dataset_json["labels"], {"background": 0, "lesion": 1})
        self.assertEqual((dataset_json["numTraining"], dataset_json["file_ending"]), (len(trained), ".nii.gz"))
        self.assertEqual(dataset_json["channel_names"], {"0": "ultrasound"})
        # a case's image and mask are the bundle chain's before its resize (multi-lesion masks OR-ed by its loader)
        chain = pre_resize_chain("hybrid_attention_us", "busi")
        multi = next(r for r in datalist["training"] if (r.get("lesion_count") or 0) > 1)
        identifier = next(c["identifier"] for c in self.busi["cases"] if c["case_id"] == multi["case_id"])
        sample = chain({key: multi.get(key) for key in PIPELINE_KEYS})
        image = np.asarray(nib.load(str(folder / "imagesTr" / f"{identifier}_0000.nii.gz")).dataobj).T
        label = np.asarray(nib.load(str(folder / "labelsTr" / f"{identifier}.nii.gz")).dataobj).T
        np.testing.assert_array_equal(image, np.asarray(sample["image"][0]))
        np.testing.assert_array_equal(label, np.asarray(sample["label"][0]) > 0.5)
        self.assertEqual(set(np.unique(label)), {0, 1})

    def test_a_case_that_cannot_be_read_is_listed_with_the_reason(self):
        datalist = json.loads(self.busi_json.read_text())
        broken = self.tmp / "broken.png"
        broken.write_bytes(b"not a png")
        bad = next(r for r in datalist["training"] if r["lesion_count"])
        bad_case, bad["image"] = bad["case_id"], str(broken)
        path = self.tmp / "broken.json"
        path.write_text(json.dumps(datalist))
        manifest = export_nnunet(path, 503, self.tmp / "raw_broken", lesions_only=False)
        self.assertEqual([(e["case_id"], e["path"], e["split"]) for e in manifest["not_exported"]], [(bad_case, str(broken), "training")])
        self.assertTrue(manifest["not_exported"][0]["reason"])
        self.assertNotIn(bad_case, [case["case_id"] for case in manifest["cases"]])
        splits = json.loads((Path(manifest["folder"]) / "splits_final.json").read_text())
        self.assertEqual(len(splits[0]["train"]), len(datalist["training"]) - 1)

    def test_exports_what_the_bundle_trains_on_at_the_size_its_model_was_trained_at(self):
        datalist = json.loads(self.busi_json.read_text())
        normals = sorted(r["case_id"] for s in ("training", "validation", "test") for r in datalist[s] if not r["lesion_count"])
        self.assertTrue(normals)
        self.assertTrue(self.busi["lesions_only"])  # hybrid_attention_us trains on lesion images only
        not_exported = {e["case_id"]: e["reason"] for e in self.busi["not_exported"]}
        self.assertEqual(sorted(not_exported), normals)
        self.assertTrue(all("hybrid_attention_us trains and evaluates on lesion images only" in r for r in not_exported.values()))
        self.assertEqual(self.busi["image_size"], 256)  # no trained model: train.json's
        models = self.tmp / "models"
        models.mkdir()
        torch.save({"model": {}, "context": {"bundle": "hybrid_attention_us", "settings": {"image_size": 128}}}, models / "model.pt")
        out = self.tmp / "raw_trained"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            self.assertEqual(main(["export-nnunet", "--datalist", str(self.busi_json), "--dataset-id", "9", "--out", str(out),
                                   "--ckpt-dir", str(models)]), 0)
        manifest = json.loads((out / "Dataset009_BUSI" / "breastseg_export.json").read_text())
        self.assertEqual((manifest["image_size"], manifest["image_size_from"]), (128, f"the model it was trained at ({models / 'model.pt'})"))
        self.assertIn("at image size 128: the model it was trained at", printed.getvalue())
        self.assertIn("images without a lesion are not exported: hybrid_attention_us trains", printed.getvalue())
        everything = export_nnunet(self.busi_json, 10, out, ckpt_dir=models, lesions_only=False)
        self.assertEqual(everything["not_exported"], [])
        torch.save({"model": {}, "context": {"bundle": "brems_net", "settings": {"image_size": 512}}}, models / "model.pt")
        with self.assertRaises(SystemExit) as raised:
            main(["export-nnunet", "--datalist", str(self.busi_json), "--dataset-id", "11", "--out", str(out), "--ckpt-dir", str(models)])
        self.assertIn("was trained by bundle 'brems_net', not 'hybrid_attention_us'", str(raised.exception))

    def test_cli_and_a_taken_dataset_id(self):
        out = self.tmp / "raw_cli"
        self.assertEqual(main(["export-nnunet", "--datalist", str(self.busi_json), "--dataset-id", "7", "--out", str(out)]), 0)
        self.assertTrue((out / "Dataset007_BUSI" / "dataset.json").is_file())
        with self.assertRaises(SystemExit) as raised:
            main(["export-nnunet", "--datalist", str(self.busi_json), "--dataset-id", "7", "--out", str(out), "--name", "Other"])
        self.assertRegex(str(raised.exception), r"^breastseg export-nnunet: .*Dataset007_BUSI exists")
        with self.assertRaises(SystemExit) as raised:
            main(["export-nnunet", "--datalist", str(self.busi_json), "--dataset-id", "8", "--out", str(out), "--bundle", "unetplusplus_mammo"])
        self.assertIn("crops around the known lesion", str(raised.exception))

    @unittest.skipUnless(NNUNET, NNUNET_REASON)
    def test_nnunet_verify_dataset_integrity(self):
        import SimpleITK as sitk

        env = dict(os.environ, nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.tmp / "nnUNet_preprocessed"),
                   nnUNet_results=str(self.tmp / "nnUNet_results"), OMP_NUM_THREADS="1")
        command = [str(Path(sys.executable).with_name("nnUNetv2_plan_and_preprocess")), "-d", "501", "502",
                   "--verify_dataset_integrity", "-c", "2d", "--no_pp", "-npfp", "1"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        for folder in (self.busi["folder"], self.cbis["folder"]):
            self.assertTrue((self.tmp / "nnUNet_preprocessed" / Path(folder).name / "nnUNetPlans.json").is_file())
        # nnU-Net's reader sees the chain's (H, W) image
        case = self.busi["cases"][0]
        read = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(self.busi["folder"]) / "imagesTr" / f"{case['identifier']}_0000.nii.gz")))
        record = next(r for s in ("training", "validation") for r in json.loads(self.busi_json.read_text())[s] if r["case_id"] == case["case_id"])
        expected = pre_resize_chain("hybrid_attention_us", "busi")({key: record.get(key) for key in PIPELINE_KEYS})["image"][0]
        np.testing.assert_array_equal(read, np.asarray(expected))


#: a model folder as nnU-Net training leaves it (plans, dataset.json, fold_0/checkpoint_final.pth), untrained weights
_MODEL_FOLDER = """
import shutil, sys
from pathlib import Path
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.paths import nnUNet_preprocessed
sys.path.insert(0, sys.argv[2])
trainer_class = getattr(__import__(sys.argv[1]), sys.argv[1])
preprocessed = Path(nnUNet_preprocessed) / "Dataset501_BUSI"
plans = dict(load_json(str(preprocessed / "nnUNetPlans.json")), continue_training=False)
trainer = trainer_class(plans=plans, configuration="2d", fold=0, dataset_json=load_json(str(preprocessed / "dataset.json")),
                        device=torch.device("cpu"))
trainer.initialize()
trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
shutil.copy(preprocessed / "nnUNetPlans.json", Path(trainer.output_folder_base) / "plans.json")
shutil.copy(preprocessed / "dataset.json", Path(trainer.output_folder_base) / "dataset.json")
"""


class TestNnunetPredict(unittest.TestCase):
    """The README's step 2 predicts with ``breastseg nnunet-predict``, which works after the documented install."""

    def test_readme_step_2_is_the_project_entry_point(self):
        readme = (ROOT / "README.md").read_text()
        self.assertIn("breastseg nnunet-predict -i $nnUNet_raw/Dataset501_BUSI/imagesTs -o PRED -d 501", readme)
        done = subprocess.run([BREASTSEG, "nnunet-predict", "--help"], capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        for option in ("-i", "-o", "-d", "-c", "-f", "-tr", "-p", "-chk", "-device"):
            self.assertIn(option, done.stdout)

    @unittest.skipIf(NNUNET, "nnunetv2 is installed here")
    def test_without_nnunet_one_line_says_how_to_install_it(self):
        done = subprocess.run([BREASTSEG, "nnunet-predict", "-i", "x", "-o", "y", "-d", "501"], capture_output=True, text=True, timeout=120)
        self.assertNotEqual(done.returncode, 0)
        self.assertNotIn("Traceback", done.stderr)
        self.assertIn("nnunetv2 is not installed: pip install -e", done.stderr.strip().splitlines()[-1])

    @unittest.skipUnless(NNUNET, NNUNET_REASON)
    def test_predicts_with_a_trainer_whose_lookup_stops_the_console_script(self):
        tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        datalist = _datalist("busi", tmp / "busi", tmp / "busi.json", 8, val_fraction=0.2, test_fraction=0.3)
        export = export_nnunet(datalist, 501, tmp / "raw", ckpt_dir=tmp / "no_model")
        trainers = ROOT / "benchmarks" / "nnunet_trainers"
        env = dict(os.environ, nnUNet_raw=str(tmp / "raw"), nnUNet_preprocessed=str(tmp / "pre"), nnUNet_results=str(tmp / "res"),
                   nnUNet_extTrainer=str(trainers), OMP_NUM_THREADS="1")
        tool = str(Path(sys.executable).with_name("nnUNetv2_plan_and_preprocess"))
        for command in ([tool, "-d", "501", "-c", "2d", "-npfp", "1", "-np", "1"],
                        [sys.executable, "-c", _MODEL_FOLDER, "nnUNetTrainerWallClock", str(trainers)]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        images = Path(export["folder"]) / "imagesTs"
        options = ["-i", str(images), "-d", "501", "-c", "2d", "-f", "0", "-tr", "nnUNetTrainerWallClock"]
        done = subprocess.run([BREASTSEG, "nnunet-predict", *options, "-o", str(tmp / "pred")], env=env, capture_output=True,
                              text=True, timeout=600)
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        tests = sorted(case["identifier"] for case in export["cases"] if case["split"] == "test")
        self.assertTrue(tests)
        self.assertEqual(sorted(p.name[: -len(".nii.gz")] for p in (tmp / "pred").glob("*.nii.gz")), tests)
        self.assertTrue((tmp / "pred" / "predict_from_raw_data_args.json").is_file())  # what breastseg compare reads
        for identifier in tests:
            image = nib.load(str(images / f"{identifier}_0000.nii.gz"))
            self.assertEqual(nib.load(str(tmp / "pred" / f"{identifier}.nii.gz")).shape[:2], image.shape[:2])
        if importlib.util.find_spec("timm") is None:  # the console script, after the same install
            console = subprocess.run([str(Path(sys.executable).with_name("nnUNetv2_predict")), *options, "-o", str(tmp / "pred2"),
                                      "-device", "cpu"], env=env, capture_output=True, text=True, timeout=600)
            self.assertNotEqual(console.returncode, 0)
            self.assertIn("No module named 'timm'", console.stderr)


class TestCompareNnunetPredictions(unittest.TestCase):
    """nnU-Net-named masks of the test cases against the same masks seen through the bundle's own chain."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        # a bundle run's layout: <output_dir>/datalist.json and <output_dir>/eval/<run>/cases.csv
        cls.bundle_dir = cls.tmp / "hybrid"
        cls.bundle_dir.mkdir()
        cls.datalist_json = _datalist("busi", cls.tmp / "busi", cls.bundle_dir / "datalist.json", 14,
                                      val_fraction=0.1, test_fraction=0.4)
        # normal images too: the empty-mask rule is part of what is compared
        cls.manifest = export_nnunet(cls.datalist_json, 42, cls.tmp / "raw", image_size=64, lesions_only=False)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def _predictions(self) -> tuple[Path, dict[str, np.ndarray]]:
        """One mask per test case on the export grid: the lesion shifted, nothing, or a false blob."""
        datalist = json.loads(self.datalist_json.read_text())
        records = {r["case_id"]: r for r in datalist["test"]}
        chain = pre_resize_chain("hybrid_attention_us", "busi")
        folder, masks = self.tmp / "predictions", {}
        folder.mkdir(exist_ok=True)
        for position, case in enumerate(c for c in self.manifest["cases"] if c["split"] == "test"):
            label = np.asarray(chain({k: records[case["case_id"]].get(k) for k in PIPELINE_KEYS})["label"][0]) > 0.5
            mask = [np.roll(label, (3, -5), axis=(0, 1)), np.zeros_like(label), label.copy()][position % 3]
            if position % 3 == 2:
                mask[5:25, 10:40] = True
            masks[case["case_id"]] = mask
            nib.save(nib.Nifti1Image(mask.T.astype(np.uint8), np.eye(4)), str(folder / f"{case['identifier']}.nii.gz"))
        return folder, masks

    def _bundle_evaluation(self, masks: dict[str, np.ndarray]) -> tuple[Path, dict[str, dict]]:
        """The same masks as a bundle's evaluation: PNG masks read and resized by the bundle's full chain at 64."""
        datalist = json.loads(self.datalist_json.read_text())
        chain = chains.hybrid_attention_us(image_size=64)
        rows = {}
        for record in datalist["test"]:
            png = self.tmp / "pngs" / f"{record['case_id']}_pred.png"
            png.parent.mkdir(exist_ok=True)
            Image.fromarray(masks[record["case_id"]].astype(np.uint8) * 255).save(png)
            truth = chain({k: record.get(k) for k in PIPELINE_KEYS})
            pred = chain({"image": record["image"], "label": str(png), "label_format": "png", "case_id": record["case_id"]})
            affine = torch.as_tensor(truth["label"].affine, dtype=torch.float64)
            spacing = [float(affine[:2, 0].norm()), float(affine[:2, 1].norm())]
            table = compute_case_table(pred["label"][None] > 0.5, truth["label"][None] > 0.5, [spacing])
            rows[record["case_id"]] = table_to_rows(table)[0]
        cases = self.bundle_dir / "eval" / "run-1" / "cases.csv"
        cases.parent.mkdir(parents=True)
        columns = ["case_id", "lesion_index", "split", "status", "dice", "hd95_px"]
        with open(cases, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for case_id, row in rows.items():
                writer.writerow([case_id, 0, "test", row["status"], row["dice"], row["hd95_px"]])
        return cases.parent.parent, rows

    def test_prediction_folder_scores_as_the_bundle_evaluation_of_the_same_masks(self):
        predictions, masks = self._predictions()
        evaluation, expected = self._bundle_evaluation(masks)
        self.assertLessEqual({"lesion", "missed"}, {row["status"] for row in expected.values()})
        for metric in ("dice", "hd95_px"):
            out = self.tmp / f"cmp_{metric}"
            args = ["compare", "--cases", f"nnunet={predictions}", "--nnunet-export", f"nnunet={self.manifest['folder']}",
                    "--cases", f"hybrid={evaluation}", "--out", str(out), "--metric", metric,
                    "--tracking-uri", f"sqlite:///{self.tmp / 'mlruns.db'}"]
            self.assertEqual(main(args), 0)
            with open(out / "nnunet" / "nnunet" / "cases.csv") as handle:
                scored = {row["case_id"]: row for row in csv.DictReader(handle)}
            self.assertEqual(set(scored), set(expected))
            for case_id, row in expected.items():
                self.assertEqual(scored[case_id]["status"], row["status"], case_id)
                np.testing.assert_allclose(float(scored[case_id][metric]), row[metric], rtol=1e-6, err_msg=case_id)  # nan == nan
            summary = json.loads((out / "comparison.json").read_text())
            both_empty = sum(row["status"] == "both_empty" for row in expected.values())
            self.assertEqual((summary["n"], summary["n_left_out"]), (len(expected) - both_empty, both_empty))
            self.assertIsNotNone(summary["splits"]["nnunet"])
            self.assertEqual(summary["splits"]["nnunet"].split(" of ")[0], summary["splits"]["hybrid"].split(" of ")[0])
            with open(out / "matched_cases.csv") as handle:
                for row in csv.DictReader(handle):
                    self.assertEqual(row["nnunet"], row["hybrid"], row["case_id"])

    def test_a_prediction_folder_without_its_export_is_refused(self):
        folder = self.tmp / "orphan"
        folder.mkdir()
        nib.save(nib.Nifti1Image(np.zeros((4, 4), np.uint8), np.eye(4)), str(folder / "BUSI_0001.nii.gz"))
        other = self.tmp / "other_eval"
        with self.assertRaises(SystemExit) as raised:
            main(["compare", "--cases", f"nnunet={folder}", "--cases", f"x={other}", "--out", str(self.tmp / "x")])
        self.assertRegex(str(raised.exception), r"^breastseg compare: .*orphan: no predict_from_raw_data_args.json .*--nnunet-export")


if __name__ == "__main__":
    unittest.main()
