"""A paper's ablation table and its cross-dataset test, each as one command through the real bundle CLI.

``breastseg ablation``: every variant a bundle declares (config id ``ablation_variants``: variant name ->
table label, selected by the override ``--variant``) is trained and evaluated on the same split (one
output folder, so one datalist); the rows are written in the bundle's table layout (``table_columns``,
see :mod:`breastseg.workflows.evaluation.paper_tables`) with each variant's parameter count.

``breastseg cross-dataset``: train on one dataset, evaluate on every lesion image of another with no
fine-tuning (the same chain, only the second dataset's reader). The evaluation uses a datalist of the
test dataset with no validation or test share (``--val_fraction 0 --test_fraction 0``), so all its
images are in the list that is evaluated (``--eval_split training``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from breastseg.workflows.commands import bundle_runs
from breastseg.workflows.engine.model_context import load_weights
from breastseg.workflows.tracking.runs import PROJECT_ROOT

__all__ = ["bundle_settings", "parameter_count", "run_ablation", "run_cross_dataset"]

#: state-dict entries that are buffers, not trained parameters (batch-norm statistics)
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def bundle_settings(bundle: str, *ids: str) -> dict[str, Any]:
    """The raw values of config ``ids`` of the bundle's ``train.json``.

    Raises:
        KeyError: naming the bundle and the id it does not declare.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_files(str(bundle_runs.bundle_configs(bundle) / "train.json")))
    values = {}
    for config_id in ids:
        if config_id not in parser:
            raise KeyError(f"bundle {bundle!r} declares no {config_id!r} in configs/train.json")
        values[config_id] = parser[config_id]
    return values


def parameter_count(checkpoint: str | Path) -> int:
    """Trained parameters in a ``model.pt`` (batch-norm statistics left out)."""
    state = load_weights(checkpoint)
    return sum(int(v.numel()) for k, v in state.items() if not k.endswith(_BUFFER_SUFFIXES))


def run_ablation(
    bundle: str,
    dataset: str = "cbis-ddsm",
    dataset_dir: str | None = None,
    overrides: dict[str, str] | None = None,
    output_dir: str | None = None,
    variants: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate each ablation variant of ``bundle`` on one split; write and return the table.

    Everything goes under ``output_dir`` (default ``bundles/<bundle>/runs/<dataset>/ablation``): the
    datalist, ``<variant>/models``, the evaluations, ``ablation_table.md`` and ``ablation.json``.

    Raises:
        KeyError: when the bundle declares no ``ablation_variants``/``table_columns``.
        ValueError: for a variant the bundle does not declare.
    """
    from breastseg.workflows.evaluation.paper_tables import format_table, table_row

    settings = bundle_settings(bundle, "ablation_variants", "table_columns")
    labels, columns = settings["ablation_variants"], settings["table_columns"]
    chosen = list(variants) if variants else list(labels)
    unknown = [v for v in chosen if v not in labels]
    if unknown:
        raise ValueError(f"bundle {bundle!r} has no ablation variant(s) {unknown}; it declares {list(labels)}")
    out_root = Path(output_dir).resolve() if output_dir else PROJECT_ROOT / "bundles" / bundle / "runs" / dataset / "ablation"
    base = dict(overrides or {}, dataset=dataset, output_dir=str(out_root))
    if dataset_dir:
        base["dataset_dir"] = str(Path(dataset_dir).resolve())
    rows = []
    for variant in chosen:
        ckpt_dir = out_root / variant / "models"
        step = dict(base, variant=variant, ckpt_dir=str(ckpt_dir))
        eval_dir = bundle_runs.train_and_evaluate(bundle, step, out_root / "eval").parent
        row = table_row(eval_dir, columns, labels[variant])
        row.update(variant=variant, parameters=parameter_count(ckpt_dir / "model.pt"), eval_dir=str(eval_dir))
        rows.append(row)
    table = format_table(rows, columns)
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "ablation_table.md").write_text(table)
    result = {"bundle": bundle, "dataset": dataset, "overrides": dict(overrides or {}), "rows": rows}
    (out_root / "ablation.json").write_text(json.dumps(result, indent=4, default=str))
    print(f"\n=== ablation of {bundle} on {dataset} (same split, {out_root / 'datalist.json'}) ===\n{table}")
    for row in rows:
        print(f"  {row['model']}: {row['parameters']:,} parameters")
    return result


def run_cross_dataset(
    bundle: str,
    train_dataset: str = "cbis-ddsm",
    test_dataset: str = "inbreast",
    train_dir: str | None = None,
    test_dir: str | None = None,
    overrides: dict[str, str] | None = None,
    output_dir: str | None = None,
    ckpt_dir: str | None = None,
    train: bool = True,
) -> dict[str, Any]:
    """Train on ``train_dataset`` (unless ``train=False``: the model in ``ckpt_dir`` is used) and evaluate
    on every lesion image of ``test_dataset`` without fine-tuning; return the table row.

    Everything goes under ``output_dir`` (default ``bundles/<bundle>/runs/cross_<train>_to_<test>``):
    ``<train_dataset>/`` (datalist), ``models/`` (unless ``ckpt_dir``), ``<test_dataset>/eval/<run>/``.

    Raises:
        FileNotFoundError: with ``train=False``, when ``ckpt_dir`` holds no ``model.pt``.
    """
    from breastseg.workflows.evaluation.paper_tables import format_table, table_row

    out_root = (
        Path(output_dir).resolve()
        if output_dir
        else PROJECT_ROOT / "bundles" / bundle / "runs" / f"cross_{train_dataset}_to_{test_dataset}"
    )
    models = Path(ckpt_dir).resolve() if ckpt_dir else out_root / "models"
    common = dict(overrides or {}, ckpt_dir=str(models))
    if train:
        step = dict(common, dataset=train_dataset, output_dir=str(out_root / train_dataset))
        if train_dir:
            step["dataset_dir"] = str(Path(train_dir).resolve())
        bundle_runs.train(bundle, step)
    elif not (models / "model.pt").is_file():
        raise FileNotFoundError(f"no trained model at {models / 'model.pt'} (train first, or drop --no-train)")
    evaluation = dict(common)
    evaluation.update(
        dataset=test_dataset, output_dir=str(out_root / test_dataset), val_fraction="0.0", test_fraction="0.0", eval_split="training",
        cross_dataset="True",
    )
    if test_dir:
        evaluation["dataset_dir"] = str(Path(test_dir).resolve())
    eval_dir = bundle_runs.evaluate(bundle, evaluation, out_root / test_dataset / "eval").parent
    settings = bundle_settings(bundle, "table_columns")
    row = table_row(eval_dir, settings["table_columns"], f"trained on {train_dataset}, tested on {test_dataset}")
    row["eval_dir"] = str(eval_dir)
    table = format_table([row], settings["table_columns"])
    (out_root / "cross_dataset_table.md").write_text(table)
    print(f"\n=== {bundle}: trained on {train_dataset}, evaluated on all of {test_dataset} (no fine-tuning) ===\n{table}")
    return row
