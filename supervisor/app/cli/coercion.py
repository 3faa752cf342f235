"""Typer's conversion of the command line's values, without pydantic for the plain ones this CLI takes.

Typer (0.29 here) converts every option and argument, ``--help`` and default values included, through a
pydantic ``TypeAdapter`` built on first use: any command, `status` too, imports pydantic and its plugin
loader (``importlib.metadata``), 0.08 s of CPU. This CLI's values are strings, paths, flags and whole
numbers. :class:`PlainTyper`'s commands convert those the way Typer's adapters do, and hand everything else
to Typer's own conversion: other types, a number written other than ``-?[0-9]+`` (Typer's adapter also
reads ``+5``, ``1_000``, ``5.0``), and every value Typer rejects, so that its messages stay its own.

This reaches into Typer's private modules (``typer._coercion``, ``typer._param_types``); where they are not
there, the CLI uses ``typer.Typer`` as it is (supervisor/app/cli/base.py). tests/test_cli_coercion.py
compares the two conversions value by value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer._click.core import Context, Parameter
from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer._param_types import coerce_cli_path
from typer.core import TyperCommand, TyperGroup, _TyperParameter
from typer.models import CommandFunctionType

# What int() and pydantic's lax int both read the same way; anything else goes to Typer.
_WHOLE = re.compile(r"-?[0-9]{1,18}")


@dataclass(frozen=True)
class PlainRuntimeParam(RuntimeParam):
    """A str, int, bool or Path parameter: the value converted here when it is plain, else by Typer."""

    descriptor: TypeDescriptor

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
        if self.annotation is bool and isinstance(value, bool):
            return value
        if isinstance(value, str):
            if self.annotation is str:
                return value
            if self.annotation is int and _WHOLE.fullmatch(value):
                return int(value)
            if self.annotation is Path:
                try:
                    # Typer's own checks (exists, dir_okay...) on the Path pydantic would have made.
                    return coerce_cli_path(Path(value), self.parameter_info, path_type=Path, param=param, ctx=ctx)
                except typer.BadParameter:
                    pass  # Typer's message names the path as it was typed
        return build_runtime_param(self.descriptor)._coerce_value(value, param=param, ctx=ctx)


def plain(descriptor: TypeDescriptor) -> PlainRuntimeParam | None:
    """The plain conversion of a parameter of this type, or None where Typer's own is needed."""
    info = descriptor.parameter_info
    if info.parser is not None or descriptor.file_annotation is not None:
        return None
    if descriptor.annotation in (str, bool) or (descriptor.annotation is int and not descriptor.is_ranged):
        return PlainRuntimeParam(info, descriptor.annotation, descriptor)
    if descriptor.annotation is Path and info.path_type is None:
        return PlainRuntimeParam(info, descriptor.annotation, descriptor)
    return None


def use_plain(params: list[Parameter]) -> None:
    """Give the parameters the plain conversion where it applies, before any of them is converted."""
    for param in params:
        if isinstance(param, _TyperParameter) and param._runtime_param is None:
            param._runtime_param = plain(param.type_descriptor)


class PlainCommand(TyperCommand):
    """Typer's command, its parameters (``--help`` too) converted by :class:`PlainRuntimeParam` where plain."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        use_plain(self.get_params(ctx))
        return super().parse_args(ctx, args)


class PlainGroup(TyperGroup):
    """Typer's group, its own parameters converted by :class:`PlainRuntimeParam` where plain."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        use_plain(self.get_params(ctx))
        return super().parse_args(ctx, args)


class PlainTyper(typer.Typer):
    """``typer.Typer`` whose group and commands are :class:`PlainGroup` and :class:`PlainCommand`."""

    def __init__(self, **options: Any) -> None:
        super().__init__(cls=PlainGroup, **options)

    def command(self, *args: Any, **options: Any) -> Callable[[CommandFunctionType], CommandFunctionType]:
        options.setdefault("cls", PlainCommand)
        return super().command(*args, **options)
