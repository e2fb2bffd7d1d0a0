"""No import circle among the modules of ``breastseg.workflows``, and each role imports only the roles below
it (each module's imports of the project, read from its source with ``ast``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE, FOLDER = "breastseg.workflows", ROOT / "workflows"


def _module_name(path: Path) -> str:
    parts = path.relative_to(FOLDER).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join((PACKAGE, *parts))


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported by one module, at any depth of its code (function-level imports included)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def test_no_import_circle_in_workflows():
    paths = {_module_name(path): path for path in FOLDER.rglob("*.py")}
    graph = {name: _imports(path, name, set(paths)) for name, path in paths.items()}
    circles = []

    def visit(node: str, trail: list[str], done: set[str]) -> None:
        for target in sorted(graph[node]):
            if target in trail:
                circles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in done:
                visit(target, trail + [target], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], done)
    assert not circles, "\n".join(sorted(set(circles)))


# role of each top-level part of breastseg.workflows -> roles it may import (``errors`` is open to all)
ALLOWED_IMPORTS = {
    "errors": set(),
    "data": {"errors"},
    "metrics": {"errors"},
    "engine": {"errors", "data", "metrics"},
    "tracking": {"errors", "data", "metrics", "engine"},
    "evaluation": {"errors", "data", "metrics", "engine", "tracking"},
    "two_stage": {"errors", "data", "metrics", "engine", "tracking", "evaluation"},
    "commands": {"errors", "data", "metrics", "engine", "tracking", "evaluation", "two_stage"},
}


def _role(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 else None


def test_workflows_roles_import_only_the_roles_below_them():
    """Engine <- tracking <- evaluation <- two_stage <- commands: the engine imports no tracking, report or
    command module (trackers plug in as handlers); every module lives in a role package."""
    paths = {_module_name(path): path for path in FOLDER.rglob("*.py")}
    offenders = []
    for name, path in sorted(paths.items()):
        role = _role(name)
        if role is None:
            continue  # breastseg.workflows itself
        if role not in ALLOWED_IMPORTS:
            offenders.append(f"{name}: not in a role package ({', '.join(sorted(ALLOWED_IMPORTS))})")
            continue
        for target in sorted(_imports(path, name, set(paths))):
            target_role = _role(target)
            if target_role is None:
                continue  # breastseg.workflows itself holds no code (e.g. the registry finds its folder through it)
            if target_role != role and target_role not in ALLOWED_IMPORTS[role]:
                offenders.append(f"{name} ({role}) imports {target} ({target_role})")
    assert not offenders, "\n".join(offenders)
