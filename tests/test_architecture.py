"""The architecture, enforced (docs/architecture.md).

- pyproject's ``[tool.importlinter]`` contracts (layers; the data and control planes never
  import ``admin/``; only the composition root ``router.service`` imports it directly) hold,
  and the real ``lint-imports`` rejects a copy of the tree that breaks each of them;
- no import cycle among router modules, ``TYPE_CHECKING`` imports included;
- ruff's ``banned-api`` rule (the same admin rule, reported in the editor) stays configured;
- every folder of router/ is a package that git tracks and the wheel carries;
- the folders of tests/ mirror the packages.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """The real ``lint-imports`` with ``root``'s pyproject, analysing ``root``'s packages."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
            "--config",
            str(root / "pyproject.toml"),
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=120,
        check=False,
    )


def test_import_contracts_are_kept() -> None:
    result = run_lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_lint_imports_rejects_a_tree_that_breaks_each_contract(tmp_path: Path) -> None:
    """Guards the test above against passing vacuously: one violation per contract."""
    for folder in ("router", "admin"):
        shutil.copytree(
            ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)

    def append(module: str, line: str) -> None:
        with (tmp_path / module).open("a", encoding="utf-8") as f:
            f.write(f"\n{line}\n")

    # Package __init__ modules: they stay whatever the packages' modules become.
    append("router/proxy/__init__.py", "from router.control import core  # layers: upward")
    # Inside the proxy: an upward import under TYPE_CHECKING still breaks its layers.
    append(
        "router/proxy/upstream.py",
        "import typing\nif typing.TYPE_CHECKING:\n    from router.proxy import exchange",
    )
    append("router/store/__init__.py", "from admin import keys  # the planes: admin")
    append("router/cli.py", "import admin.app  # only the composition root")
    (tmp_path / "router" / "unplaced.py").write_text('"""In no layer."""\n', encoding="utf-8")
    result = run_lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "0 kept, 4 broken" in out, out
    assert "router.proxy is not allowed to import router.control" in out, out
    assert "router.proxy.upstream is not allowed to import router.proxy.exchange" in out, out
    assert "router.unplaced" in out, out  # exhaustive: a new module must be given a layer
    assert "router.store -> admin.keys" in out, out
    assert "router.cli -> admin.app" in out, out


def test_router_never_imports_dynamically() -> None:
    """import-linter sees import statements only; an ``import_module("admin.app")`` would
    slip past it, so the router does not import by name at run time at all."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "router").rglob("*.py")
        if "import_module(" in (text := p.read_text(encoding="utf-8")) or "__import__(" in text
    ]
    assert offenders == []


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        found.append(frozenset(component))
    return found


def router_graph() -> grimp.ImportGraph:
    # grimp counts imports under ``if TYPE_CHECKING:`` (exclude_type_checking_imports is
    # False): a type-only cycle is still two modules that cannot be understood apart.
    return grimp.build_graph("router", cache_dir=None)


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    adjacency = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    return sorted(sorted(cycle) for cycle in import_cycles(adjacency))


def test_no_import_cycle_among_router_modules() -> None:
    assert router_graph().find_modules_directly_imported_by("router.cli")  # not vacuous
    assert cycles(router_graph()) == []


def test_the_cycle_check_sees_new_cycles() -> None:
    graph = router_graph()
    graph.add_import(importer="router.config.units", imported="router.control.core")
    assert any("router.config.units" in cycle for cycle in cycles(graph))
    # The proxy path (issue 11 item 3) has no cycle left to tolerate: one call back up, as
    # the upstream connection naming its exchange once did, fails.
    graph = router_graph()
    graph.add_import(importer="router.proxy.upstream", imported="router.proxy.exchange")
    assert any({"router.proxy.exchange", "router.proxy.upstream"} <= set(c) for c in cycles(graph))


def test_grimp_counts_type_checking_imports(tmp_path: Path) -> None:
    package = tmp_path / "probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "a.py").write_text("from probe_pkg import b\n", encoding="utf-8")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from probe_pkg import a\n",
        encoding="utf-8",
    )
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("probe_pkg", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    adjacency = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert import_cycles(adjacency) == [frozenset({"probe_pkg.a", "probe_pkg.b"})]


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


def test_tests_mirror_the_packages() -> None:
    """Each folder of tests/ is named for a package of router/ (or admin/), so the tests of
    code are found beside its name; a test of the whole, or of a top-level module, sits in
    tests/ itself (docs/architecture.md, "Tests")."""
    tests = ROOT / "tests"
    packages = {p.name for p in (ROOT / "router").iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    assert folders - packages - {"admin"} == set()
    for folder in folders:
        assert (tests / folder / "__init__.py").is_file(), (
            folder
        )  # else pytest's rootdir imports clash
