"""nnU-Net v2 (2D) and a bundle trained on the same split for the same wall-clock budget, scored alike.

Run (nnU-Net installed as the optional extra, see the README):
``python benchmarks/nnunet_side_by_side.py [--layout busi|cbis-ddsm] [--cases N] [--bundle B] [--bundle-epochs E]
[--image-size S] [--device cpu|cuda] [--work DIR]``

1. a synthetic dataset of ``--layout`` (``breastseg synth``);
2. the bundle trained for ``--bundle-epochs`` and evaluated on its test split through the ``monai.bundle`` CLI
   (its split in ``<work>/bundle/datalist.json``); its training wall time is the budget;
3. that datalist exported (``breastseg export-nnunet``), ``nnUNetv2_plan_and_preprocess -c 2d
   --verify_dataset_integrity``, then what ``nnUNetv2_train <id> 2d 0 -tr nnUNetTrainerWallClock`` and
   ``nnUNetv2_predict`` run (nnU-Net's trainer stopped at the first epoch end past the budget,
   ``benchmarks/nnunet_trainers``; see :func:`train_and_predict` for why not the console scripts themselves);
4. ``breastseg compare`` of both on the same test cases (the project's metrics and empty-mask rule, at the bundle's
   grid), printed side by side: Dice, HD95 (pixels of that grid) and minutes of training (the training loops alone:
   nnU-Net's planning, its end-of-training validation and the test prediction are printed apart).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from breastseg.workflows.commands import bundle_runs
from breastseg.workflows.commands.compare import compare_methods
from breastseg.workflows.commands.nnunet_export import DEFAULT_BUNDLE, export_nnunet
from breastseg.workflows.data.synthetic import generate

TRAINERS = Path(__file__).resolve().parent / "nnunet_trainers"
TRAINER = "nnUNetTrainerWallClock"  # its results folder: <dataset>/nnUNetTrainerWallClock__nnUNetPlans__2d


def _nnunet(tool: str, arguments: list[str], env: dict[str, str]) -> float:
    """Run an nnU-Net console script (from this interpreter's folder); its wall time in seconds."""
    command = [str(Path(sys.executable).with_name(tool)), *arguments]
    print("\n$ " + " ".join([tool, *arguments]), flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"{tool} failed with exit code {completed.returncode}")
    return time.perf_counter() - started


def train_and_predict(dataset_id: str, device: str, images: str, predictions: str) -> None:
    """What ``nnUNetv2_train ID 2d 0 -tr nnUNetTrainerWallClock`` runs (the trainer built from the plans, trained,
    nnU-Net's validation), then the test images predicted by the trained network as ``nnUNetv2_predict`` does it
    (``nnUNetPredictor``, the way the trainer's own validation initialises it).

    Not the console scripts: they find a trainer by name by importing every trainer module of nnU-Net, and the
    Primus one needs ``timm``, hence ``torchvision``, whose PyPI build does not load with the CPU torch pinned here.
    """
    import multiprocessing

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    sys.path.insert(0, str(TRAINERS))
    from nnUNetTrainerWallClock import nnUNetTrainerWallClock

    if device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_train on a CPU
    preprocessed = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(int(dataset_id))
    plans = dict(load_json(str(preprocessed / "nnUNetPlans.json")), continue_training=False)
    trainer = nnUNetTrainerWallClock(plans=plans, configuration="2d", fold=0,
                                     dataset_json=load_json(str(preprocessed / "dataset.json")), device=torch.device(device))
    started = time.perf_counter()
    trainer.run_training()
    trained = time.perf_counter()
    trainer.perform_actual_validation(False)
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(device=torch.device(device), perform_everything_on_device=device == "cuda", allow_tqdm=False)
    weights = [{key: value.detach().clone() for key, value in trainer.network.state_dict().items()}]
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, weights,
                                    trainer.dataset_json, type(trainer).__name__, trainer.inference_allowed_mirroring_axes)
    predictor.predict_from_files(images, predictions, save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    timings = {"train_s": trained - started, "validate_and_predict_s": time.perf_counter() - trained, "epochs": trainer.current_epoch}
    (Path(predictions).parent / "nnunet_timings.json").write_text(json.dumps(timings))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--nnunet-train-predict"]:  # the nnU-Net step, in a process that sees the nnUNet_* folders
        train_and_predict(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="busi", choices=("busi", "cbis-ddsm"))
    parser.add_argument("--cases", type=int, default=None, help="synthetic cases (layout default if absent)")
    parser.add_argument("--bundle", default=None, help="default: hybrid_attention_us (BUSI), connected_unets (CBIS-DDSM)")
    parser.add_argument("--bundle-epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64, help="the bundle's input and scoring grid")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dataset-id", type=int, default=901)
    parser.add_argument("--nnunet-steps", type=int, default=25, help="nnU-Net training steps per epoch")
    parser.add_argument("--work", default="nnunet_side_by_side", help="working folder (replaced)")
    args = parser.parse_args(argv)

    work = Path(args.work).absolute()
    shutil.rmtree(work, ignore_errors=True)
    bundle = args.bundle or DEFAULT_BUNDLE[args.layout]
    data = work / "data"
    print(f"synthetic {args.layout}: {generate(args.layout, data, cases=args.cases, seed=0)}")

    output_dir = work / "bundle"
    overrides = {"dataset": args.layout, "dataset_dir": str(data), "output_dir": str(output_dir),
                 "ckpt_dir": str(output_dir / "models"), "max_epochs": str(args.bundle_epochs),
                 "image_size": str(args.image_size), "device": args.device,
                 "tracking_uri": f"sqlite:///{work / 'mlruns.db'}"}
    started = time.perf_counter()
    bundle_runs.train(bundle, overrides)
    bundle_s = time.perf_counter() - started
    bundle_runs.evaluate(bundle, overrides, output_dir / "eval")

    raw, preprocessed, results = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    manifest = export_nnunet(output_dir / "datalist.json", args.dataset_id, raw, bundle=bundle,
                             image_size=args.image_size, preprocessed=preprocessed)
    folder = Path(manifest["folder"])
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(preprocessed), nnUNet_results=str(results),
               BREASTSEG_NNUNET_SECONDS=f"{bundle_s:.0f}",
               BREASTSEG_NNUNET_STEPS=str(args.nnunet_steps))
    dataset = str(args.dataset_id)
    preprocess_s = _nnunet("nnUNetv2_plan_and_preprocess", ["-d", dataset, "-c", "2d", "--verify_dataset_integrity",
                                                            "-np", "1", "-npfp", "1"], env)
    # augmentation in the training process, as the bundle's harness does it on a CPU (0: nnU-Net's single-threaded loader)
    train_env = dict(env, nnUNet_n_proc_DA="0") if args.device == "cpu" else env
    predictions = work / "nnunet_predictions"
    command = [sys.executable, __file__, "--nnunet-train-predict", dataset, args.device, str(folder / "imagesTs"), str(predictions)]
    print("\n$ " + " ".join(command[1:]), flush=True)
    if subprocess.run(command, env=train_env).returncode != 0:
        raise SystemExit("nnU-Net training failed")
    timings = json.loads((work / "nnunet_timings.json").read_text())
    nnunet_s = timings["train_s"]
    cases = {bundle: str(output_dir / "eval"), "nnunet": str(predictions)}
    means = {}
    for metric in ("dice", "hd95_px"):
        result = compare_methods(cases, work / f"compare_{metric}", metric=metric, n_resamples=1000)
        means[metric] = dict(zip(result["methods"], result["mean_metric"]))
    log = sorted((results / folder.name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0").glob("training_log_*.txt"))
    print(f"\n=== {args.layout} (synthetic), {result['n']} test cases scored alike at {args.image_size}x{args.image_size} "
          f"({result['n_left_out']} left out: {result['left_out'] or 'none'}); device {args.device} ===")
    print(f"{'method':<22} {'Dice':>7} {'HD95 px':>8} {'train min':>10}")
    print(f"{bundle:<22} {means['dice'][bundle]:>7.4f} {means['hd95_px'][bundle]:>8.2f} {bundle_s / 60:>10.2f}")
    print(f"{'nnU-Net 2d':<22} {means['dice']['nnunet']:>7.4f} {means['hd95_px']['nnunet']:>8.2f} {nnunet_s / 60:>10.2f}")
    print(f"nnU-Net: {timings['epochs']} epoch(s) of {args.nnunet_steps} steps; plan+preprocess {preprocess_s / 60:.2f} min, "
          f"its validation + test prediction {timings['validate_and_predict_s'] / 60:.2f} min (neither in the budget); "
          f"training log: {log[-1] if log else 'none'}")
    (work / "side_by_side.json").write_text(json.dumps({
        "layout": args.layout, "bundle": bundle, "device": args.device, "image_size": args.image_size,
        "bundle_epochs": args.bundle_epochs, "n_cases": result["n"], "means": means,
        "train_minutes": {bundle: bundle_s / 60, "nnunet": nnunet_s / 60},
        "nnunet_preprocess_minutes": preprocess_s / 60, "nnunet_epochs": timings["epochs"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
