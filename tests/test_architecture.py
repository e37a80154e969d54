"""The layering rule: the data plane (``router/``) never imports the admin plane (``admin/``).

router/service.py is the one composition root that wires both planes; router/cli.py,
router/__main__.py and the demo reach admin only through it. Checked on the source (every
import statement at any depth, and ``importlib.import_module("admin...")``) and on the lint
configuration, so the rule survives an edit of either.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSITION_ROOT = "router.service"
# Modules that may import the composition root, and so reach admin through it.
COMPOSITION = frozenset({"router.service", "router.cli", "router.__main__", "router.demo.run"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def router_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / "router").rglob("*.py"))}


def imported_names(path: Path) -> set[str]:
    """Every module an import in this file may load: ``a.b`` and, for ``from a import b``,
    both ``a`` and ``a.b`` (b may be a submodule). Relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, node.module] if node.module else parent)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            names.add(node.args[0].value)
    return names


def is_admin(name: str) -> bool:
    return name == "admin" or name.startswith("admin.")


def test_only_the_composition_root_imports_admin() -> None:
    offenders = {
        name: sorted(n for n in imported_names(path) if is_admin(n))
        for name, path in router_modules().items()
        if name != COMPOSITION_ROOT
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_walker_sees_the_composition_roots_admin_import() -> None:
    """Guards the test above against passing vacuously (a walker that finds nothing)."""
    assert any(is_admin(n) for n in imported_names(router_modules()[COMPOSITION_ROOT]))


def test_data_plane_modules_do_not_reach_admin_through_other_modules() -> None:
    """No router module outside the composition layer imports one that leads to admin."""
    modules = router_modules()
    graph = {name: imported_names(path) for name, path in modules.items()}

    def reaches_admin(start: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for target in graph[todo.pop()]:
                if is_admin(target):
                    return True
                if target in modules and target not in seen:
                    seen.add(target)
                    todo.append(target)
        return False

    reaching = {name for name in modules if reaches_admin(name)}
    assert reaching - COMPOSITION == set()


def ruff_config() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    ruff = data["tool"]["ruff"]
    assert isinstance(ruff, dict)
    return ruff


def covers_tid251(code: str) -> bool:
    return code in ("ALL", "TID251") or (code.startswith("TID") and "TID251".startswith(code))


def test_ruff_config_bans_admin_imports_outside_the_composition_root() -> None:
    lint = ruff_config()["lint"]
    assert isinstance(lint, dict)
    banned = lint["flake8-tidy-imports"]["banned-api"]
    assert "admin" in banned, "pyproject: [tool.ruff.lint.flake8-tidy-imports.banned-api] admin"
    assert any(covers_tid251(c) for c in lint.get("select", []) + lint.get("extend-select", []))
    assert not any(covers_tid251(c) for c in lint.get("ignore", []))
    router_files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "router").rglob("*.py")]
    exempt: set[str] = set()
    for pattern, codes in lint.get("per-file-ignores", {}).items():
        if any(covers_tid251(c) for c in codes):
            exempt.update(
                f
                for f in router_files
                if fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(Path(f).name, pattern)
            )
    assert exempt <= {"router/service.py"}


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_ruff_rejects_an_admin_import_in_a_router_module() -> None:
    """The real linter with the real config, on a would-be router module."""
    source = "import admin.app\nfrom admin import errors\n\nprint(admin.app, errors)\n"
    probe = "router/layering_probe.py"
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--stdin-filename", probe, "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("TID251") == 2, result.stdout


def test_every_router_folder_is_a_package_that_git_tracks() -> None:
    """A folder without ``__init__.py`` is a namespace package that setuptools leaves out of
    the wheel; a ``.gitignore`` pattern like ``state/`` once hid router/state/ from git and
    ruff alike."""
    folders = sorted({p.parent for p in (ROOT / "router").rglob("*.py")})
    assert [f for f in folders if not (f / "__init__.py").is_file()] == []
    if not (ROOT / ".git").exists():
        return
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *(str(f / "__init__.py") for f in folders)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert ignored.stdout == "", ignored.stdout
