"""Command-line options made from a library's config dataclass, so that each default lives once: in the dataclass.

``add_fields(parser, SynthConfig)`` adds ``--train`` for ``train: int = field(default=4000, metadata={"help":
"training images"})``, with the field's type, default (shown in the help) and help; ``fields_from(SynthConfig,
args)`` builds the dataclass back from the parsed arguments. Field types map to argparse as: ``bool`` → a
switch, ``Literal[...]`` → choices, ``tuple[str, ...]`` → a repeatable option, ``X | None`` → ``X``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _argument_type(kind: Any) -> Any:
    """``int | None`` → ``int``; other types unchanged."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return kind


def add_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of the dataclass ``cls`` that has a help text (``field(metadata={"help": …})``, the
    ``HfArgumentParser`` way), in the order of the fields, typed and defaulted by the field; its flag is
    ``--field-name``, or the field's ``metadata["flag"]`` (e.g. ``--continue-from``). A ``%`` in a help text is
    written ``%%``, as argparse wants."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help")
        if text is None:
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kind = _argument_type(hints[f.name])
        default = f.default
        name = f.name
        metavar = flag.lstrip("-").replace("-", "_").upper()
        if kind is bool:
            parser.add_argument(flag, dest=name, action="store_true", help=text)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, dest=name, action="append", default=list(default), metavar=metavar, help=text)
        elif typing.get_origin(kind) is typing.Literal:
            choices = typing.get_args(kind)
            parser.add_argument(flag, dest=name, default=default, choices=choices, help=f"{text} (default {default})")
        else:
            shown = "" if default is None or "default" in text else f" (default {default})"
            parser.add_argument(flag, dest=name, type=kind, default=default, metavar=metavar, help=text + shown)


def fields_from(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """``cls`` built from the parsed options :func:`add_fields` added (fields not on the command line keep their
    defaults; ``values`` set others)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if typing.get_origin(_argument_type(hints[f.name])) is tuple else value
    return cls(**values)
