"""pyproject lists every sub-package: a normal (non-editable) install copies only listed ones."""

from __future__ import annotations

import re
import subprocess
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


# absolute paths that exist on one developer's machine only (built from parts so this file does not match itself)
MACHINE_PATH = re.compile("[\"'` (]/(" + "|".join(("tmp/venv", "work", "root", "home", "opt/pypi")) + ")/")
CHECKED_SUFFIXES = {".py", ".sh", ".json", ".toml", ".cfg", ".yaml", ".yml", ".md"}


def test_no_path_of_one_machine_in_code_or_docs():
    """A clone on a fresh machine has none of them: the suite passed on one machine and failed on CI's."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in CHECKED_SUFFIXES or name.startswith(".ci/"):
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if MACHINE_PATH.search(line):
                    offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# what runs leave in a clone: MLflow stores (SQLite files, mlruns/, artifacts), bundle runs and checkpoints
STORE_SUFFIXES = {".db", ".sqlite", ".sqlite3", ".db-journal"}
RUN_FOLDERS = {"mlruns", "mlartifacts", "artifacts", "runs", "models", "unsent"}


def test_no_store_run_or_artifact_is_tracked():
    """A store made by one machine's tests (absolute artifact locations of that machine) must not travel with a clone."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    offenders = [name for name in tracked if Path(name).suffix in STORE_SUFFIXES or RUN_FOLDERS & set(Path(name).parts[:-1])]
    assert not offenders, offenders
