"""MkDocs hook: the CLI and configuration references, generated at build time from the sources the program uses.

The CLI reference walks ``uniemo.cli.main.build_parser()`` through its sub-commands; the configuration reference
walks the config dataclasses of ``uniemo.config`` (field name, type and default from the dataclass, the text from
the class docstring's ``Attributes:`` section or, for the commands' configs, from the help of the option the field
becomes). Nothing here restates an option or a field: a page holds a marker comment and this hook fills it in.

The claims' figures come from ``results/claims.jsonl`` through docs/results_pages.py.

``mkdocs.yml`` names this file under ``hooks:``; ``tests/test_docs.py`` imports it to check that every
sub-command, option and field reaches the pages.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import inspect
import os
import re
import typing
from importlib import resources
from typing import Any

import yaml

CLI_MARKER = "<!-- uniemo:cli-reference -->"
CONFIG_MARKER = "<!-- uniemo:config-reference -->"


def _md(text: str) -> str:
    """Docstring text (reST-ish: ``code``, :func:`x`) as one line of Markdown that is safe in a table cell."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)  # :func:`x` → `x`
    return _prose(text.replace("``", "`"))


def _prose(text: str) -> str:
    """One line of text with `code` spans (help texts and docstrings have them) as table-safe HTML-escaped
    Markdown: ``<out>`` in a help stays visible, ``|`` does not split the cell."""
    pieces = " ".join(text.split()).split("`")
    html_text = "".join(
        ("<code>" + html.escape(p, quote=False) + "</code>") if i % 2 else html.escape(p, quote=False)
        for i, p in enumerate(pieces)
    )
    return html_text.replace("|", "&#124;")


def _code(text: str) -> str:
    return "<code>" + html.escape(text, quote=False).replace("|", "&#124;") + "</code>"


# --------------------------------------------------------------------------------------------------------------
# The command line


def iter_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = ""
) -> typing.Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every (sub-)command of ``parser``, depth first: (its words after ``uniemo``, its parser, its help)."""
    yield path, parser, help
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield from iter_commands(sub, (*path, name), helps.get(name, ""))


def _is_group(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:
        return _code(action.metavar or action.dest)
    flags = ", ".join(action.option_strings)
    if action.nargs == 0:
        return _code(flags)
    metavar = action.metavar or (action.dest.upper() if not action.choices else "{" + ",".join(action.choices) + "}")
    return _code(f"{flags} {metavar}")


def _default(action: argparse.Action) -> str:
    if action.required or not action.option_strings:
        return "required" if action.nargs not in ("*", "?") else ""
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.default == []:
        return ""
    return _code(str(action.default))


def _usage(parser: argparse.ArgumentParser) -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "116"  # argparse wraps at the terminal's width; the page's is fixed
    try:
        return parser.format_usage().strip()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def cli_reference() -> str:
    """Markdown for every sub-command of ``uniemo``: its usage and a table of its arguments."""
    from uniemo.cli.main import build_parser

    lines: list[str] = []
    for path, parser, help in iter_commands(build_parser()):
        name = " ".join(("uniemo", *path))
        lines += [f"## `{name}`", ""]
        if help:
            lines += [_prose(help[0].upper() + help[1:]) + ".", ""]
        lines += ["```text", _usage(parser), "```", ""]
        formatter = parser._get_formatter()
        rows = []
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                subs = ", ".join(f"[`{name} {c}`](#{_anchor(name + ' ' + c)})" for c in action.choices)
                rows.append(f"| {_code(action.metavar or action.dest)} | required | one of {subs} |")
                continue
            text = formatter._expand_help(action) if action.help else ""
            if action.choices and not isinstance(action, argparse._SubParsersAction) and "{" not in _argument(action):
                text += f" (one of {', '.join(map(str, action.choices))})"
            rows.append(f"| {_argument(action)} | {_default(action)} | {_prose(text)} |")
        if rows:
            lines += ["| argument | default | description |", "|---|---|---|", *rows, ""]
        if not _is_group(parser) and not rows:
            lines += ["No arguments.", ""]
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """The id MkDocs' toc extension gives a heading ``## `title` ``."""
    return re.sub(r"[^\w\- ]", "", title).strip().lower().replace(" ", "-")


# --------------------------------------------------------------------------------------------------------------
# The configuration


def field_docs(cls: type) -> dict[str, str]:
    """Field name → text of the ``Attributes:`` entries in the docstrings of ``cls`` and its bases.

    An entry may name several fields (``train_split / val_split / test_split: split names``); each gets the text.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        lines = inspect.cleandoc(klass.__doc__ or "").splitlines()
        if "Attributes:" not in lines:
            continue
        block = []
        for line in lines[lines.index("Attributes:") + 1 :]:
            if line.strip() and not line[0].isspace():  # back at the docstring's margin: the section ended
                break
            if line.strip():
                block.append(line)
        indent = min(len(line) - len(line.lstrip()) for line in block)
        entries: list[tuple[list[str], list[str]]] = []
        for line in block:
            match = re.fullmatch(r"([A-Za-z_]\w*(?:\s*/\s*[A-Za-z_]\w*)*):\s*(.*)", line.strip())
            if match and len(line) - len(line.lstrip()) == indent:
                entries.append(([n.strip() for n in match.group(1).split("/")], [match.group(2)]))
            elif entries:
                entries[-1][1].append(line.strip())
        for names, text in entries:
            for name in names:
                docs[name] = " ".join(text)
    return docs


def _type_name(tp: Any) -> str:
    from uniemo.config import _type_name as name  # the names the config's own errors use

    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args[-1] is Ellipsis:  # tuple[str, ...]: a list on the command line
        return "list of " + name(args[0])
    return name(tp).replace("NoneType", "None")


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text[:-4].strip() if text.endswith("\n...") or text.endswith(" ...") else text.removesuffix("...").strip()


def _plain(value: Any) -> Any:
    from uniemo.config import config_to_dict

    return config_to_dict(value) if dataclasses.is_dataclass(value) else value


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").split("\n\n", 1)[0]
    return _md(doc)


def _section_table(cls: type, prefix: str, instance: Any, texts: dict[str, str]) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        value = _yaml_value(_plain(getattr(instance, f.name)))
        rows.append(
            f"| {_code(prefix + f.name)} | {_code(_type_name(hints[f.name]))} | {_code(value)} "
            f"| {_md(texts.get(f.name, ''))} |"
        )
    return rows


#: The run configs (one YAML each) and the command that reads them.
RUN_CONFIGS = {
    "UnderstandingRunConfig": "uniemo train understanding",
    "JointRunConfig": "uniemo train joint",
    "FeedbackRunConfig": "uniemo feedback",
}
#: The configs of the commands without a run YAML: their fields are options of these commands.
COMMAND_CONFIGS = {
    "uniemo.data.synth.SynthConfig": ("synth",),
    "uniemo.config.BaseConfig": ("train", "base"),
    "uniemo.config.EmoClassifierConfig": ("train", "emo-classifier"),
    "uniemo.config.SamplingConfig": ("generate",),
    "uniemo.config.UnderstandingEvalConfig": ("evaluate", "understanding"),
    "uniemo.config.GenerationMetricsConfig": ("evaluate", "generation"),
    "uniemo.config.ConditioningProbeConfig": ("evaluate", "conditioning"),
}


def _load(dotted: str) -> type:
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _builtin_configs() -> list[str]:
    rows = ["| name | what |", "|---|---|"]
    for entry in sorted(resources.files("uniemo.configs").iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yaml"):
            continue
        head = []
        for line in entry.read_text().splitlines():
            text = line.lstrip("# ").rstrip()
            if not line.startswith("#") or text.startswith("uniemo "):  # the header's example command ends it
                break
            head.append(text)
        first = re.split(r"(?<=[\w)])\. (?=[A-Z])", " ".join(head))[0].rstrip(".") if head else ""
        rows.append(f"| {_code(entry.name[:-5])} | {_md(first)} |")
    return rows


def config_reference() -> str:
    """Markdown for every field of the run configs (by section) and of the commands' configs."""
    import uniemo.config as config
    from uniemo.cli.main import build_parser

    lines: list[str] = ["## Built-in configs", "", *_builtin_configs(), ""]
    sections: dict[str, type] = {}
    for name, command in RUN_CONFIGS.items():
        cls = getattr(config, name)
        default = cls()
        hints = typing.get_type_hints(cls)
        lines += [f"## `{name}`", "", f"`{command} --config FILE [key=value …]`. {_summary(cls)}", ""]
        lines += ["Top-level keys:", "", *_section_table(cls, "", default, field_docs(cls)), ""]
        for f in dataclasses.fields(cls):
            section = hints[f.name]
            if not dataclasses.is_dataclass(section):
                continue
            sections.setdefault(f.name, section)
            own = getattr(default, f.name)
            changed = {
                g.name: getattr(own, g.name)
                for g in dataclasses.fields(section)
                if getattr(own, g.name) != getattr(section(), g.name)
            }
            note = ""
            if changed:
                note = "; here with " + ", ".join(
                    f"`{f.name}.{k}: {_yaml_value(_plain(v))}`" for k, v in changed.items()
                )
            lines.append(f"- `{f.name}:` [`{section.__name__}`](#{f.name}-{section.__name__.lower()}){note}")
        lines.append("")
    lines += ["## Sections", ""]
    for key, section in sections.items():
        lines += [f"### `{key}:` {section.__name__}", "", _summary(section), ""]
        lines += [*_section_table(section, key + ".", section(), field_docs(section)), ""]

    lines += ["## The commands' configs", ""]
    lines += [
        "The commands without a run YAML take their options from these dataclasses (the library functions they",
        "call take their defaults from them too); a field without a flag is set from Python only.",
        "",
    ]
    commands = {path: parser for path, parser, _ in iter_commands(build_parser())}
    for dotted, path in COMMAND_CONFIGS.items():
        cls = _load(dotted)
        options = {a.dest: a for a in commands[path]._actions if a.option_strings}
        formatter = commands[path]._get_formatter()
        texts = field_docs(cls)
        hints = typing.get_type_hints(cls)
        command = " ".join(("uniemo", *path))
        lines += [f"### `{cls.__name__}`", "", f"[`{command}`](cli.md#{_anchor(command)}). {_summary(cls)}", ""]
        lines += ["| field | type | default | option | description |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            action = options.get(f.name)
            text = texts.get(f.name) or (formatter._expand_help(action) if action and action.help else "")
            flag = _code(action.option_strings[0]) if action else "(Python only)"
            value = _yaml_value(_plain(f.default if f.default is not dataclasses.MISSING else f.default_factory()))
            lines.append(
                f"| {_code(f.name)} | {_code(_type_name(hints[f.name]))} | {_code(value)} | {flag} | {_md(text)} |"
            )
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# The hook


def _results_pages() -> Any:
    """docs/results_pages.py (beside this file, which MkDocs loads by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "results_pages", os.path.join(os.path.dirname(__file__), "results_pages.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- uniemo:claim" in markdown:
        markdown = _results_pages().render(markdown)
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    return markdown
