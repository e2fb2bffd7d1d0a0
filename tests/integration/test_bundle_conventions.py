"""Every bundle follows the model-zoo conventions the project promises (no training needed).

``verify_metadata`` and ``verify_net_in_out`` are the functions ``python -m monai.bundle`` dispatches to,
called in-process (the CLI itself is exercised by every bundle's integration test).
"""

from __future__ import annotations

import json
import warnings

import pytest

from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out
from monai.bundle.utils import DEPRECATED_ID_MAPPING

from bundle_cli import ROOT, SCHEMAS

BUNDLES = sorted(path.parent.parent.name for path in (ROOT / "bundles").glob("*/configs/metadata.json"))
REQUIRED_FILES = (
    "LICENSE",
    "docs/README.md",
    "configs/metadata.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
)


def test_every_bundle_is_checked():
    assert "unetplusplus_mammo" in BUNDLES and len(BUNDLES) >= 1


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_has_the_zoo_files_and_run_ids(bundle):
    folder = ROOT / "bundles" / bundle
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    assert not missing, f"{bundle}: missing {missing}"
    train = json.loads((folder / "configs" / "train.json").read_text())
    assert {"training", "run", "initialize", "finalize", "max_epochs", "dataset", "dataset_dir", "device"} <= set(train)
    assert train["train"]["trainer"]["_target_"] == "breastseg.workflows.engine.harness.build_trainer"  # the one harness
    assert train["validate"]["evaluator"]["_target_"] == "breastseg.workflows.engine.harness.build_evaluator"
    assert "evaluating" in json.loads((folder / "configs" / "evaluate.json").read_text())
    assert "inference" in json.loads((folder / "configs" / "inference.json").read_text())
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]


@pytest.mark.parametrize("schema", ["meta_schema_20240725.json", "meta_schema_20220324.json"])
@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_passes_the_model_zoo_schema(bundle, schema, tmp_path):
    metadata = ROOT / "bundles" / bundle / "configs" / "metadata.json"
    if schema == "meta_schema_20220324.json":
        # the bundles carry MONAI's current name only (the old one is a warning on every run); tools of the
        # 2022 schema read it under the old name, which MONAI maps back (DEPRECATED_ID_MAPPING)
        content = json.loads(metadata.read_text())
        legacy = {old: content[new] for old, new in DEPRECATED_ID_MAPPING.items() if new in content}
        metadata = tmp_path / "metadata.json"
        metadata.write_text(json.dumps({**content, **legacy}))
    verify_metadata(meta_file=str(metadata), filepath=str(SCHEMAS / schema))  # raises on a schema violation


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_uses_no_deprecated_name(bundle):
    metadata = ROOT / "bundles" / bundle / "configs" / "metadata.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ConfigParser().read_meta(str(metadata))  # what `python -m monai.bundle run` does first
    assert not [str(w.message) for w in caught if "deprecated" in str(w.message)]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_network_input_output_matches_metadata(bundle):
    configs = ROOT / "bundles" / bundle / "configs"
    # raises when the network's output shape or dtype disagrees with metadata.json at its spatial_shape
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"))
