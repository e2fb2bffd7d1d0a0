"""pyproject lists every sub-package: a normal (non-editable) install copies only listed ones."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE_FOLDERS = {"transforms": "breastseg.transforms", "networks": "breastseg.networks", "workflows": "breastseg.workflows"}


def test_every_code_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for folder, package in CODE_FOLDERS.items():
        assert config["package-dir"][package] == folder
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *parts)))
    assert found == listed


def test_mlflow_folder_is_not_a_python_package():
    assert not (ROOT / "mlflow" / "__init__.py").exists()
