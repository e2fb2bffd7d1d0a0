"""``breastseg bundles`` and ``breastseg --version`` through the installed console script."""

from __future__ import annotations

import json
import tomllib

import pytest

from bundle_cli import ROOT, assert_ok, breastseg_cli

from breastseg.workflows.commands.bundle import bundle_summaries
from breastseg.workflows.errors import UserError


def test_bundles_lists_every_bundle_with_paper_modality_and_default_dataset():
    result = breastseg_cli("bundles")
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["bundle", "paper", "modality", "dataset", "method"]
    listed = {line.split()[0]: line.split()[1:4] for line in lines[1:] if line and not line.startswith("train one")}
    for metadata in (ROOT / "bundles").glob("*/configs/metadata.json"):
        train = json.loads((metadata.parent / "train.json").read_text())
        name = metadata.parent.parent.name
        modality = "ultrasound" if train["dataset"] in ("busi", "udiat") else "mammography"
        assert listed[name] == [train["paper"], modality, train["dataset"]], name


def test_version_is_the_installed_package_version():
    result = breastseg_cli("--version")
    assert_ok(result)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.stdout.strip() == f"breastseg {version}"


def test_no_bundle_found_is_one_line_naming_the_folder(tmp_path):
    # a package installed without its clone has no bundles/ folder: say where we looked, not crash on max()
    with pytest.raises(UserError, match=f"no bundle found under {tmp_path / 'bundles'}.*pip install -e"):
        bundle_summaries(tmp_path)


def test_help_is_plain_text():
    """reStructuredText markup of the docstrings (double backticks) is no help text: argparse prints it as it is."""
    from breastseg.workflows.commands.cli import build_parser

    result = breastseg_cli("--help")
    assert_ok(result)
    assert "``" not in result.stdout and "serve" in result.stdout
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in subcommands.items():
        assert "``" not in parser.format_help(), name
