"""The CLI's plain conversion of option and argument values gives what Typer's own pydantic conversion gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer._click.core import Command, Context
from typer._coercion import build_runtime_param
from typer.core import TyperGroup, _TyperParameter

from supervisor.app.cli import app
from supervisor.app.cli.coercion import PlainRuntimeParam, plain

# Values as a shell hands them over, the odd ones included: each must convert alike, or fail alike.
SAMPLES: dict[type, list[Any]] = {
    str: ["run-1", "", " a ", "[bold]x", "é", "\udcff", "--x"],
    int: ["1", "-1", "0", "-0", "007", " 5", "+5", "1_000", "5.0", "x", "", "١٢", "9" * 19, "9" * 30],
    bool: [True, False, "true", "0"],
}


def every_parameter() -> list[tuple[str, _TyperParameter, Context]]:
    """Each Typer parameter of every command, ``--help`` too, with a context of its own command."""
    found = []

    def walk(command: Command, path: str, parent: Context | None) -> None:
        ctx = Context(command, info_name=path, parent=parent)
        for param in command.get_params(ctx):
            assert isinstance(param, _TyperParameter)
            found.append((f"{path} {param.name}", param, ctx))
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}", ctx)

    walk(typer.main.get_command(app), "supervisor", None)
    return found


def outcome(convert: Any, value: Any, param: _TyperParameter, ctx: Context) -> tuple[str, Any]:
    try:
        return "value", convert._coerce_value(value, param=param, ctx=ctx)
    except typer.BadParameter as exc:
        return "error", exc.format_message()


def samples(annotation: Any, tmp_path: Path) -> list[Any]:
    if annotation is Path:
        (tmp_path / "file").write_text("x")
        return ["spec.yaml", "", "a//b/", "./x/", "/nonexistent/x", str(tmp_path), str(tmp_path / "file"), "\udcff"]
    return SAMPLES[annotation]


def test_every_parameter_of_the_cli_converts_as_typer_converts(tmp_path: Path) -> None:
    compared = set()
    for where, param, ctx in every_parameter():
        ours = plain(param.type_descriptor)
        if ours is None:
            continue
        typers = build_runtime_param(param.type_descriptor)
        assert not isinstance(typers, PlainRuntimeParam)
        for value in samples(param.type_descriptor.annotation, tmp_path):
            assert outcome(ours, value, param, ctx) == outcome(typers, value, param, ctx), (where, value)
        compared.add(param.type_descriptor.annotation)
    assert compared == {str, int, bool, Path}


@pytest.mark.parametrize("args", [["--home", "HOME", "status"], ["--home", "HOME", "logs", "r1", "--attempt", "2"]])
def test_a_command_converts_without_importing_pydantic(args: list[str], tmp_path: Path) -> None:
    code = ("import sys\nfrom supervisor.app.cli import main\nsys.argv = ['supervisor', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('pydantic' in sys.modules)")
    argv = [str(tmp_path) if a == "HOME" else a for a in args]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[-1] == "False", proc.stdout + proc.stderr
