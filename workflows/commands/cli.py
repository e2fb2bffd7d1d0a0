"""The ``breastseg`` console script: one sub-command per user task."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

DATASETS = ("cbis-ddsm", "inbreast", "busi", "udiat")
#: what ``breastseg --help`` says first (plain text: the module docstring's reStructuredText would print as is)
DESCRIPTION = "breastseg: one sub-command per user task. Research software, not for clinical use."


def _key_values(items: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option} expects KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic dataset in a real dataset's on-disk layout")
    p.add_argument("--layout", required=True, choices=DATASETS)
    p.add_argument("--out", required=True, help="folder to write (created; must be empty or absent)")
    p.add_argument("--cases", type=int, default=None, help="number of patients/images (layout default if absent)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-size", action="store_true", help="write the real image sizes instead of the reduced default")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    import logging

    from breastseg.workflows.data.synthetic import generate

    # progress: a bar on a terminal, these log lines otherwise (``--full-size`` takes minutes)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(message)s")

    summary = generate(args.layout, args.out, cases=args.cases, seed=args.seed, full_size=args.full_size)
    for key, value in summary.items():
        if isinstance(value, list):  # the planted near duplicates: one line each
            print(f"{key}: {len(value)}")
            for pair in value:
                print(f"  {pair['copy']} re-exports {pair['source']} ({pair['transform']})")
        else:
            print(f"{key}: {value}")
    return 0


def _add_datalist(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datalist", help="index a dataset folder into a MONAI datalist JSON with splits")
    p.add_argument("--bundle", default=None,
                   help="take the split settings (dataset, seed, folds, fractions, official split) of this bundle's "
                        "configs/train.json, so the split shown is the one it trains on; options given here win")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="required without --bundle")
    p.add_argument("--root", required=True, help="the dataset folder as downloaded")
    p.add_argument("--out", required=True, help="datalist JSON to write")
    p.add_argument("--folds", type=int, default=None, help="K > 1 adds a 'fold' to every non-test record (default 0)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--val-fraction", type=float, default=None, help="default 0.1")
    p.add_argument("--test-fraction", type=float, default=None, help="default 0.1")
    p.add_argument("--official-split", action="store_true", default=None,
                   help="CBIS-DDSM: keep the official train/test split")
    p.add_argument("--abnormality", choices=("mass", "calc", "both"), default=None,
                   help="CBIS-DDSM: which description tables to index (default: mass, as the papers)")
    p.add_argument("--near-duplicates", choices=("group", "list"), default=None,
                   help="group: near-duplicate images share a partition (default); list: found and listed but split "
                        "by the dataset's own unit, as published splits were (the leaks are counted)")
    p.add_argument("--label-conflicts", choices=("quarantine", "keep"), default=None,
                   help="near duplicates labelled differently: quarantine them (default) or keep them in one group")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any record is quarantined")
    p.set_defaults(func=_run_datalist)


def index_options(args: argparse.Namespace) -> dict:
    """Indexer options given on the command line (only those that apply to the dataset)."""
    if args.abnormality is None:
        return {}
    if args.dataset != "cbis-ddsm":
        raise SystemExit(f"--abnormality applies to cbis-ddsm only, not {args.dataset}")
    return {"abnormality": args.abnormality}


#: ``breastseg datalist`` defaults without ``--bundle``
_SPLIT_DEFAULTS = {
    "seed": 0, "folds": 0, "val_fraction": 0.1, "test_fraction": 0.1, "official_split": False,
    "near_duplicates": "group", "label_conflicts": "quarantine",
}


def _split_options(args: argparse.Namespace) -> dict:
    """The dataset and split settings: those given on the command line, else the bundle's (``--bundle``),
    else the defaults."""
    settings = {"dataset": args.dataset, **_SPLIT_DEFAULTS}
    if args.bundle is not None:
        from breastseg.workflows.commands.bundle import split_settings

        try:
            settings = split_settings(args.bundle, args.dataset)
        except FileNotFoundError as error:
            raise SystemExit(f"--bundle: {error}") from None
        print(f"split settings of bundle {args.bundle} (configs/train.json): "
              + ", ".join(f"{key} {value}" for key, value in settings.items()))
    elif args.dataset is None:
        raise SystemExit("breastseg datalist: give --dataset, or --bundle to take the bundle's dataset and split")
    settings.update({key: getattr(args, key) for key in _SPLIT_DEFAULTS if getattr(args, key) is not None})
    args.dataset = settings["dataset"]  # index_options checks --abnormality against it
    return settings


def _run_datalist(args: argparse.Namespace) -> int:
    from breastseg.workflows.data.datalist import build_datalist, fingerprint_cache, format_summary, write_datalist

    settings = _split_options(args)
    datalist = build_datalist(
        settings.pop("dataset"),
        args.root,
        **settings,
        cache_file=fingerprint_cache(args.out),
        **index_options(args),
    )
    write_datalist(datalist, args.out)
    print(format_summary(datalist))
    if args.strict and datalist["quarantine"]:
        print(f"--strict: {len(datalist['quarantine'])} record(s) quarantined", file=sys.stderr)
        return 3
    return 0


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="count the near-duplicate images that leak across the partitions of a split and "
                                     "draw them on a contact sheet")
    p.add_argument("split", help="a datalist JSON (the project's or a MONAI datalist), a CSV with image and partition "
                                 "columns, or nnU-Net's splits_final.json (with --nnunet-raw)")
    p.add_argument("--out", required=True, help="folder for audit.json, contact_sheet.png and the fingerprint cache")
    p.add_argument("--images-root", default=None,
                   help="folder that relative image paths start from (default: the split file's folder)")
    p.add_argument("--nnunet-raw", default=None, help="the raw Dataset<ID>_<name> folder of a splits_final.json")
    p.add_argument("--strict", action="store_true", help="exit 3 when a split leaks or a label conflicts")
    p.set_defaults(func=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from breastseg.workflows.data.audit import audit_split, format_audit, read_split_table, write_audit
    from breastseg.workflows.data.near_duplicates import FingerprintStore

    table = read_split_table(args.split, images_root=args.images_root, nnunet_raw=args.nnunet_raw)
    store = FingerprintStore(Path(args.out) / "fingerprints.npz")
    report = audit_split(table, store)
    store.save()
    report_file, sheet = write_audit(report, args.out)
    print("\n".join(format_audit(report)))
    print(f"contact sheet: {sheet}\nreport: {report_file}")
    leaks = sum(entry["groups"] for split in report["splits"].values() for entry in split["leaks"])
    return 3 if args.strict and (leaks or report["label_conflicts"]) else 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: train, evaluate and register a bundle on synthetic data")
    p.add_argument("--bundle", default="unetplusplus_mammo")
    p.add_argument("--dataset", default="cbis-ddsm", choices=DATASETS)
    p.add_argument("--max-epochs", type=int, default=None, help="override the demo's short schedule")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from breastseg.workflows.commands.demo import run_demo

    return run_demo(args.bundle, max_epochs=args.max_epochs, dataset=args.dataset)


def _add_cv(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cv", help="K-fold cross-validation of a bundle: train and evaluate every fold, report mean ± sd")
    p.add_argument("--bundle", default="unetplusplus_mammo")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--dataset", default="cbis-ddsm", choices=DATASETS)
    p.add_argument("--dataset-dir", default=None, help="real dataset folder (default: the synthetic copy)")
    p.add_argument("--output-dir", default=None, help="folder of the folds' checkpoints and reports (default bundles/<b>/runs/<dataset>)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra bundle override, repeatable")
    p.set_defaults(func=_run_cv)


def _run_cv(args: argparse.Namespace) -> int:
    from breastseg.workflows.commands.crossval import run_cross_validation

    overrides = _key_values(args.override, "--override")
    run_cross_validation(args.bundle, args.folds, args.dataset, args.dataset_dir, overrides, args.output_dir)
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare methods evaluated on one test split: a paired Wilcoxon test for two, "
                                       "Friedman + Nemenyi and pairwise Wilcoxon (Holm) for more")
    p.add_argument("--cases", action="append", default=[], metavar="NAME=PATH",
                   help="a method's evaluation folder or cases.csv, or an nnU-Net v2 prediction folder of an "
                        "export-nnunet dataset's imagesTs; repeatable (any methods sharing a split)")
    p.add_argument("--nnunet-export", action="append", default=[], metavar="NAME=DIR",
                   help="the DatasetNNN_<name> folder (export-nnunet) of method NAME's nnU-Net predictions, where "
                        "the folder has no predict_from_raw_data_args.json (nnUNetv2_predict writes it)")
    p.add_argument("--bundle", default=None, help="train and evaluate this bundle once per --networks entry first")
    p.add_argument("--networks", default="", help="comma-separated registered network names for --bundle")
    p.add_argument("--dataset", default=None, choices=DATASETS)
    p.add_argument("--dataset-dir", default=None, help="real dataset folder (default: the synthetic copy)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra bundle override, repeatable")
    p.add_argument("--metric", default="dice", help="per-case column compared (default dice; hd* columns: lower is better)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level; intervals are at 1 - alpha")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the cases (two methods)")
    p.add_argument("--out", required=True, help="folder of the summary, tables and plots")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI or the project's)")
    p.set_defaults(func=_run_compare)


def _print_comparison(result: dict, out: str) -> None:
    metric, names = result["metric"], result["methods"]
    if result["test"] == "wilcoxon":
        level = f"{1 - result['alpha']:.0%}"
        print(f"Wilcoxon signed-rank, {names[0]} vs {names[1]}: W = {result['wilcoxon_statistic']:.4g}, "
              f"p = {result['wilcoxon_p_value']:.4g} ({result['n']} paired cases)")
        for name in ("median", "mean"):
            low, high = result[f"{name}_difference_ci"]
            print(f"  {name} {metric} difference {names[0]} - {names[1]} = {result[f'{name}_difference']:.4g} "
                  f"({level} CI {low:.4g} to {high:.4g}; bootstrap, {result['n_resamples']} resamples, seed {result['seed']})")
        print(f"  better {metric}: {names[0]} on {result['wins'][0]} cases, {names[1]} on {result['wins'][1]}, "
              f"tied on {result['ties']}")
    else:
        print(f"Friedman chi2 = {result['statistic']:.4g}, p = {result['p_value']:.4g} ({result['n']} cases, {result['k']} methods)")
        print(f"Nemenyi critical difference (alpha {result['alpha']}) = {result['cd']:.3f}")
        print("Pairwise Wilcoxon signed-rank, Holm-corrected:")
        for pair in result["pairwise_wilcoxon"]:
            print(f"  {pair['a']} vs {pair['b']}: median difference {pair['median_difference']:.4g}, "
                  f"p = {pair['p_value']:.4g}, Holm p = {pair['p_holm']:.4g}")
    print(f"Per method, over the {result['n']} compared cases:")
    ranks = result.get("mean_ranks", [None] * len(names))
    for name, rank, mean in zip(names, ranks, result["mean_metric"]):
        print(f"  {name:<24} " + (f"mean rank {rank:.2f}   " if rank is not None else "") + f"mean {metric} {mean:.4f}")
    if result["both_empty_scored_best"]:
        print(f"{result['both_empty_scored_best']} normal image(s) predicted empty by one method and not by another: "
              f"the empty prediction scored the best {metric}")
    if result["n_left_out"]:
        reasons = ", ".join(f"{count} {reason}" for reason, count in result["left_out"].items())
        print(f"{result['n_left_out']} case(s) left out ({reasons}): listed in {out}/left_out_cases.csv")
    for name, split in result["splits"].items():
        print(f"  split of {name}: {split or 'not checked (no datalist.json beside its evaluation)'}")
    print(f"summary, tables and plots: {out}")


def _run_compare(args: argparse.Namespace) -> int:
    import os

    from breastseg.workflows.commands.compare import compare_methods, train_and_evaluate_network
    from breastseg.workflows.errors import UserError
    from breastseg.workflows.tracking.runs import default_tracking_uri

    cases = _key_values(args.cases, "--cases")
    networks = [name for name in args.networks.split(",") if name]
    if networks and not args.bundle:
        raise SystemExit("--networks needs --bundle")
    overrides = _key_values(args.override, "--override")
    for network in networks:
        cases[network] = str(train_and_evaluate_network(args.bundle, network, args.out, args.dataset, args.dataset_dir, overrides))
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    try:
        result = compare_methods(cases, args.out, metric=args.metric, alpha=args.alpha, tracking_uri=uri,
                                 n_resamples=args.resamples, nnunet_exports=_key_values(args.nnunet_export, "--nnunet-export"))
    except UserError as error:
        raise SystemExit(f"breastseg compare: {error}") from None
    _print_comparison(result, args.out)
    return 0


def _add_export_nnunet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-nnunet", help="write a datalist's split as an nnU-Net v2 raw dataset (imagesTr, labelsTr, "
                                             "imagesTs, dataset.json, splits_final.json)")
    p.add_argument("--datalist", required=True, help="a breastseg datalist JSON (or a bundle run's datalist.json)")
    p.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id, 1..999")
    p.add_argument("--out", required=True, help="the nnUNet_raw folder (DatasetNNN_<name> is created in it)")
    p.add_argument("--bundle", default=None, help="whose chain (up to its resize) prepares the images; default: "
                                                  "connected_unets for mammography, hybrid_attention_us for ultrasound")
    p.add_argument("--name", default=None, help="dataset name, letters and digits (default: the dataset's, e.g. BUSI)")
    p.add_argument("--image-size", type=int, default=None,
                   help="the grid breastseg compare scores the predictions on (default: the image size the bundle's "
                        "model in --ckpt-dir was trained at, else its train.json's image_size)")
    p.add_argument("--ckpt-dir", default=None, help="the bundle's trained model folder (default: bundles/<bundle>/models)")
    p.add_argument("--all-images", action="store_true",
                   help="export images without a lesion too (default: what the bundle trains on; every bundle trains on "
                        "lesion images only)")
    p.add_argument("--preprocessed", default=None, help="an nnUNet_preprocessed folder to write splits_final.json into too")
    p.set_defaults(func=_run_export_nnunet)


def _run_export_nnunet(args: argparse.Namespace) -> int:
    from breastseg.workflows.commands.nnunet_export import export_nnunet

    try:
        manifest = export_nnunet(args.datalist, args.dataset_id, args.out, bundle=args.bundle, name=args.name,
                                 image_size=args.image_size, preprocessed=args.preprocessed, ckpt_dir=args.ckpt_dir,
                                 lesions_only=False if args.all_images else None)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"breastseg export-nnunet: {error}") from None
    counts = {split: sum(case["split"] == split for case in manifest["cases"]) for split in ("training", "validation", "test")}
    folder = manifest["folder"]
    print(f"{folder}: {counts['training'] + counts['validation']} training images ({counts['training']} training, "
          f"{counts['validation']} validation) in imagesTr/labelsTr, {counts['test']} test images in imagesTs; "
          f"{manifest['bundle']} chain before its resize")
    print(f"splits_final.json: {manifest['folds'] or 1} fold(s) of the datalist's split; nnU-Net reads it from "
          f"$nnUNet_preprocessed/{Path(folder).name}/" + (" (written there too)" if args.preprocessed else " (copy it there)"))
    print(f"breastseg compare scores the predictions at image size {manifest['image_size']}: {manifest['image_size_from']}")
    if manifest["lesions_only"]:
        print(f"images without a lesion are not exported: {manifest['bundle']} trains and evaluates on lesion images only "
              "(--all-images exports them)")
    print(f"not exported: {len(manifest['not_exported'])}")
    for entry in manifest["not_exported"]:
        print(f"  {entry['path']} ({entry['split']}): {entry['reason']}")
    return 0


def _add_nnunet_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nnunet-predict", help="nnUNetv2_predict through nnU-Net's Python API: works after the documented "
                                              "nnU-Net install (the console script needs timm)")
    p.add_argument("-i", dest="images", required=True, help="the images to predict (an export's imagesTs)")
    p.add_argument("-o", dest="output", required=True, help="the folder of the predictions (give it to breastseg compare)")
    p.add_argument("-d", dest="dataset", required=True, help="nnU-Net dataset id or name (Dataset501_BUSI)")
    p.add_argument("-c", dest="configuration", default="2d", help="nnU-Net configuration (default 2d)")
    p.add_argument("-f", dest="folds", nargs="+", default=["0"], help="trained folds to ensemble (default 0)")
    p.add_argument("-tr", dest="trainer", default="nnUNetTrainer", help="trainer class trained with (default nnUNetTrainer; "
                                                                       "others are also looked up in $nnUNet_extTrainer)")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth", help="checkpoint file of each fold")
    p.add_argument("-device", dest="device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=_run_nnunet_predict)


def _run_nnunet_predict(args: argparse.Namespace) -> int:
    from breastseg.workflows.commands.nnunet_predict import predict
    from breastseg.workflows.errors import UserError

    try:
        folder = predict(args.images, args.output, args.dataset, args.configuration, args.folds, args.trainer, args.plans,
                         args.checkpoint, args.device)
    except UserError as error:
        raise SystemExit(f"breastseg nnunet-predict: {error}") from None
    print(f"{args.output}: predictions of {args.images} by {folder} (folds {' '.join(args.folds)})")
    return 0


def _add_ablation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablation", help="train and evaluate each ablation variant of a bundle on one split; print the table")
    p.add_argument("--bundle", default="brems_net")
    p.add_argument("--dataset", default="cbis-ddsm", choices=DATASETS)
    p.add_argument("--dataset-dir", default=None, help="real dataset folder (default: the synthetic copy)")
    p.add_argument("--output-dir", default=None, help="folder of the variants' checkpoints, evaluations and table")
    p.add_argument("--variants", nargs="+", default=None, help="a subset of the bundle's variants (default: all)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra bundle override, repeatable")
    p.set_defaults(func=_run_ablation)


def _run_ablation(args: argparse.Namespace) -> int:
    from breastseg.workflows.commands.ablation import run_ablation

    run_ablation(args.bundle, args.dataset, args.dataset_dir, _key_values(args.override, "--override"), args.output_dir, args.variants)
    return 0


def _add_cross_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cross-dataset", help="train on one dataset, evaluate on all of another with no fine-tuning")
    p.add_argument("--bundle", default="brems_net")
    p.add_argument("--train-dataset", default="cbis-ddsm", choices=DATASETS)
    p.add_argument("--test-dataset", default="inbreast", choices=DATASETS)
    p.add_argument("--train-dir", default=None, help="real training dataset folder (default: the synthetic copy)")
    p.add_argument("--test-dir", default=None, help="real test dataset folder (default: the synthetic copy)")
    p.add_argument("--output-dir", default=None, help="folder of the datalists, checkpoints and evaluation")
    p.add_argument("--ckpt-dir", default=None, help="folder of model.pt (default <output-dir>/models)")
    p.add_argument("--no-train", action="store_true", help="evaluate the model already in --ckpt-dir")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra bundle override, repeatable")
    p.set_defaults(func=_run_cross_dataset)


def _run_cross_dataset(args: argparse.Namespace) -> int:
    from breastseg.workflows.commands.ablation import run_cross_dataset

    run_cross_dataset(
        args.bundle, args.train_dataset, args.test_dataset, args.train_dir, args.test_dir,
        _key_values(args.override, "--override"), args.output_dir, args.ckpt_dir, train=not args.no_train,
    )
    return 0


def _add_bundles(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundles", help="list the bundles: paper, modality, default dataset, method")
    p.set_defaults(func=_run_bundles)


def _run_bundles(args: argparse.Namespace) -> int:
    from breastseg.workflows.commands.bundle import bundle_summaries

    rows = bundle_summaries()
    columns = ("bundle", "paper", "modality", "dataset", "method")
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in columns}
    for row in [dict(zip(columns, columns)), *rows]:
        print("  ".join(row[column].ljust(widths[column]) for column in columns).rstrip())
    print("train one: python -m monai.bundle run training --config_file bundles/<bundle>/configs/train.json")
    return 0


def _add_promote(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote",
        help="move a registered model's alias 'champion' to a version that beats the champion on the same dataset and split",
    )
    p.add_argument("model", help="registered model name (the bundle's name, e.g. unetplusplus_mammo)")
    p.add_argument("version", help="the version to promote (see the MLflow UI, Models)")
    p.add_argument("--force", action="store_true", help="promote even when it does not beat the champion")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default MLFLOW_TRACKING_URI, else mlflow/mlruns.db)")
    p.set_defaults(func=_run_promote)


def _run_promote(args: argparse.Namespace) -> int:
    from breastseg.workflows.tracking.registry import promote

    print(promote(args.model, args.version, tracking_uri=args.tracking_uri, force=args.force))
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered model versions: aliases, dataset, split, validation and test metrics")
    p.add_argument("model", nargs="?", default=None, help="one registered model (the bundle's name); default all")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default MLFLOW_TRACKING_URI, else mlflow/mlruns.db)")
    p.set_defaults(func=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from breastseg.workflows.tracking.registry import list_versions

    rows = list_versions(args.model, tracking_uri=args.tracking_uri)
    if not rows:
        print("no registered model yet: train a bundle (python -m monai.bundle run training ...) or run breastseg demo")
        return 0
    columns = list(rows[0])
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in columns}
    print("  ".join(column.ljust(widths[column]) for column in columns).rstrip())
    for row in rows:
        print("  ".join(row[column].ljust(widths[column]) for column in columns).rstrip())
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a registered model over HTTP: mlflow models serve against the project's store")
    p.add_argument("model", help="NAME@ALIAS, NAME/VERSION or NAME (its newest version), e.g. unetplusplus_mammo@champion")
    p.add_argument("--port", type=int, default=5001, help="default 5001")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own copy of the model (default 1)")
    p.add_argument("--image-folder", default=None,
                   help="the one folder whose files a request may name by path (default: none; images come as base64 or arrays)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest image accepted, rows x columns (default: a full-field mammogram fits)")
    p.add_argument("--max-bytes", type=int, default=None, help="largest image file accepted, in bytes (default: a full-field mammogram fits)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default MLFLOW_TRACKING_URI, else mlflow/mlruns.db)")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import os

    from breastseg.workflows.tracking.registry import serve_command

    limits = {"image_folder": args.image_folder, "max_pixels": args.max_pixels, "max_bytes": args.max_bytes}
    command, env, description = serve_command(
        args.model, args.port, args.host, args.workers, {key: value for key, value in limits.items() if value is not None}, args.tracking_uri
    )
    print(description, file=sys.stderr, flush=True)
    os.execve(command[0], command, env)  # the server replaces this process: signals reach it directly


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("breastseg")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breastseg", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"breastseg {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (or BREASTSEG_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_bundles(sub)
    _add_synth(sub)
    _add_datalist(sub)
    _add_audit(sub)
    _add_demo(sub)
    _add_cv(sub)
    _add_ablation(sub)
    _add_cross_dataset(sub)
    _add_compare(sub)
    _add_export_nnunet(sub)
    _add_nnunet_predict(sub)
    _add_promote(sub)
    _add_models(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from breastseg.workflows.errors import install_excepthook

    install_excepthook()  # a user error ends in one line (--debug: the traceback)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
