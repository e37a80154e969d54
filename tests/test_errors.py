"""One error tree: every exception class defined in router/ derives from RouterError and is
drawn in router/errors.py's docstring and docs/architecture.md."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import router
from router import errors
from router.errors import RouterError

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def router_exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(router.__path__, "router."):
        if info.name == "router.__main__":
            continue  # runs the CLI when imported
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_router_exception_derives_from_router_error() -> None:
    classes = router_exception_classes()
    assert "router.store.files.StoreWriteError" in classes  # the walk found the packages
    assert {name for name, cls in classes.items() if not issubclass(cls, RouterError)} == set()


@pytest.mark.parametrize("where", ["router/errors.py", "docs/architecture.md"])
def test_the_drawn_tree_names_every_class(where: str) -> None:
    text = (errors.__doc__ or "") if where == "router/errors.py" else ARCHITECTURE.read_text()
    names = {name.rpartition(".")[2] for name in router_exception_classes()}
    assert {n for n in names if f" {n} " not in text and f"\n{n} " not in text} == set()
