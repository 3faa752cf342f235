"""The wheel's package list names every package of the source tree: a subpackage left out installs nothing."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_python_package_in_the_tree_is_in_the_wheels_package_list() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts)
             for root in ("supervisor", "migrations") for init in (REPO / root).rglob("__init__.py")}
    assert found - listed == set()
