"""The documentation: `mkdocs build --strict` passes, the generated CLI and configuration references name every
sub-command, option and config field, and the code blocks of the README, the docs pages and the model cards they
include run (python) or parse (uniemo commands in bash blocks).

A python block that cannot run here says so on its first line, with the reason: ``# no-test: needs the hub``.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = REPO / "docs"
README = REPO / "README.md"
NO_TEST = re.compile(r"#\s*no-test:\s*(\S.*)")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SNIPPET = re.compile(r'^-{1,}8<-{1,}\s+"([^":]+)(?::[\w-]+)?"', re.M)


def _hooks():
    spec = importlib.util.spec_from_file_location("uniemo_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documents() -> list[Path]:
    """The README, every docs page and every file a page includes (the model cards)."""
    pages = sorted(DOCS.rglob("*.md"))
    included = {REPO / m for page in pages for m in SNIPPET.findall(page.read_text())}
    return [README, *pages, *sorted(included - {README, *pages})]


def _blocks(path: Path, languages: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line number, code) of each fenced block in one of ``languages``."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) in languages]


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


# --------------------------------------------------------------------------------------------------------------
# (a) the build


def test_docs_build_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "uniemo train joint" in cli and "--checkpoint" in cli  # the generated reference, not the marker
    assert "uniemo:cli-reference" not in cli
    config = (site / "reference" / "config" / "index.html").read_text()
    assert "joint.condition_norm" in config and "uniemo:config-reference" not in config
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "from_pretrained" in api and "UniEmoPipeline" in api
    card = (site / "model-cards" / "standin" / "index.html").read_text()
    assert "Measured sample quality" in card  # the model card itself, included
    usage = (site / "usage" / "index.html").read_text()
    assert "save_pretrained" in usage  # the README's Python API section, included
    assert (site / "assets" / "demo-grid.png").stat().st_size < 300_000


# --------------------------------------------------------------------------------------------------------------
# (b) the generated references are complete (what they must hold is computed here, from the parser and the
# dataclasses themselves)


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _sections(markdown: str, level: str) -> dict[str, str]:
    """Heading (its first backticked part, if any) → the text under it, for the headings of ``level`` (``##``)."""
    parts = re.split(rf"^{level} (.+)$", markdown, flags=re.M)
    titles = [(re.search(r"`([^`]+)`", t) or re.search(r"(.+)", t)).group(1) for t in parts[1::2]]
    return dict(zip(titles, parts[2::2]))


def _first_cells(markdown: str) -> list[str]:
    return re.findall(r"^\| <code>(.*?)</code> \|", markdown, re.M)


def test_cli_reference_names_every_command_and_option():
    from uniemo.cli.main import build_parser

    sections = _sections(_hooks().cli_reference(), "##")
    expected_commands = {" ".join(("uniemo", *path)) for path, _ in _parsers(build_parser())}
    assert not expected_commands - set(sections), (
        f"missing from the CLI reference: {expected_commands - set(sections)}"
    )
    assert not set(sections) - expected_commands, f"not commands: {set(sections) - expected_commands}"
    for path, parser in _parsers(build_parser()):
        command = " ".join(("uniemo", *path))
        documented = {word.rstrip(",") for cell in _first_cells(sections[command]) for word in cell.split()}
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            names = action.option_strings or [action.metavar or action.dest]
            for name in names:
                assert name in documented, f"{command}: {name} is missing from the CLI reference"
            if action.help and not isinstance(action, argparse._SubParsersAction):  # and its help text
                shown = " ".join(html.unescape(re.sub(r"</?code>", "", sections[command])).split())
                assert " ".join(action.help.replace("%%", "%").replace("`", "").split()[:4]) in shown, name


def _documented_in_docstring(cls: type, name: str) -> bool:
    """Whether an ``Attributes:`` section of ``cls`` or a base names the field (alone or in an ``a / b:`` entry)."""
    for klass in cls.__mro__:
        doc = klass.__doc__ or ""
        if "Attributes:" in doc and re.search(rf"(?m)^\s+(?:\w+\s*/\s*)*{name}(?:\s*/\s*\w+)*:", doc):
            return True
    return False


def _rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| <code>"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[re.sub(r"</?code>", "", cells[0])] = cells
    return rows


def test_config_reference_names_every_field():
    import uniemo.config as config

    reference = _hooks().config_reference()
    sections = _sections(reference, "##")
    run_configs = [config.UnderstandingRunConfig, config.JointRunConfig, config.FeedbackRunConfig]
    section_classes: set[type] = set()
    rows = _rows(reference)
    for run in run_configs:
        assert run.__name__ in sections, f"{run.__name__} is missing from the configuration reference"
        top = _rows(sections[run.__name__])
        hints = typing.get_type_hints(run)
        for f in dataclasses.fields(run):
            if dataclasses.is_dataclass(hints[f.name]):
                section_classes.add(hints[f.name])
                assert f"`{f.name}:`" in sections[run.__name__], f"{run.__name__}: section {f.name} is not listed"
                for g in dataclasses.fields(hints[f.name]):
                    key = f"{f.name}.{g.name}"
                    assert key in rows, f"{key} is missing from the configuration reference"
                    if _documented_in_docstring(hints[f.name], g.name):
                        assert rows[key][3], f"{key}: its docstring text did not reach the reference"
            else:
                assert f.name in top, f"{run.__name__}.{f.name} is missing from the configuration reference"
                if _documented_in_docstring(run, f.name):
                    assert top[f.name][3], f"{run.__name__}.{f.name}: its docstring text did not reach the reference"
    # every other config dataclass of uniemo.config is a command's config: each has its table, every field a row
    commands = _sections(reference, "###")
    for cls in vars(config).values():
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == config.__name__):
            continue
        if cls in run_configs or cls in section_classes:
            continue
        assert cls.__name__ in commands, f"{cls.__name__} is missing from the configuration reference"
        documented = _rows(commands[cls.__name__])
        for f in dataclasses.fields(cls):
            assert f.name in documented, f"{cls.__name__}.{f.name} is missing from the configuration reference"


# --------------------------------------------------------------------------------------------------------------
# (c) the code blocks


def _python_blocks():
    for path in _documents():
        for line, code in _blocks(path, ("python", "py")):
            yield pytest.param(path, line, code, id=f"{_name(path)}:{line}")


def _readme_blocks_run_by_test_api() -> set[int]:
    """Line numbers of the README's blocks that tests/test_api.py runs (the first three after "## Python API")."""
    text = README.read_text()
    start = text.count("\n", 0, text.index("## Python API")) + 1
    return set(sorted(line for line, _ in _blocks(README, ("python",)) if line > start)[:3])


@pytest.mark.parametrize(("path", "line", "code"), list(_python_blocks()))
def test_python_blocks_run(path, line, code, request, tmp_path, monkeypatch):
    first = code.splitlines()[0] if code.strip() else ""
    if (marker := NO_TEST.search(first)) is not None:
        pytest.skip(f"marked not to run: {marker.group(1)}")
    if path == README and line in _readme_blocks_run_by_test_api():
        pytest.skip("run by tests/test_api.py, which also checks what it prints")
    assert path != README, (
        f"README.md:{line}: a python block that no test runs: add it to tests/test_api.py or mark it '# no-test: why'"
    )
    # the paths the examples name, as a finished `uniemo demo` leaves them, and the repository's src/
    demo = tmp_path / "demo-output"
    demo.mkdir()
    for name, fixture in (("understanding", "trained_run"), ("joint", "joint_run"), ("data", "synth_dir")):
        if f"demo-output/{name}" in code:
            (demo / name).symlink_to(request.getfixturevalue(fixture))
    (tmp_path / "src").symlink_to(REPO / "src")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{_name(path)}:{line}", "exec"), {"__name__": "__docs__"})


def _commands(block: str) -> list[str]:
    """The logical lines of a shell block (continuations joined)."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _uniemo_argv(line: str) -> list[str] | None:
    """The words after ``uniemo`` (or ``-m uniemo``) in a shell line, None when it does not run uniemo."""
    words = shlex.split(line, comments=True)
    for i, word in enumerate(words):
        if word == "uniemo" or word.endswith("/uniemo"):
            return words[i + 1 :]
        if word == "-m" and i + 1 < len(words) and words[i + 1] in ("uniemo", "uniemo.cli"):
            return words[i + 2 :]
    return None


def _variants(words: list[str]) -> tuple[list[str], list[str]]:
    """The command without its ``[optional …]`` parts, and with all of them (brackets dropped, the first of
    ``a|b`` alternatives); ``…`` (more of the same) is dropped in both."""
    required, full, depth = [], [], 0
    for word in words:
        opens = len(word) - len(word.lstrip("["))
        closes = len(word) - len(word.rstrip("]"))
        bare = word.strip("[]").replace("…", "").replace("...", "")
        if "|" in bare and not bare.startswith("-"):  # inception|clip: one of them
            bare = bare.split("|")[0]
        if bare:
            if depth + opens == 0:
                required.append(bare)
            full.append(bare)
        depth += opens - closes
        assert depth >= 0, f"unbalanced [ ] in: {' '.join(words)}"
    assert depth == 0, f"unbalanced [ ] in: {' '.join(words)}"
    return required, full


def _shell_documents():
    for path in _documents():
        if _blocks(path, ("bash", "sh", "shell", "console")):
            yield pytest.param(path, id=_name(path))


@pytest.mark.parametrize("path", list(_shell_documents()))
def test_shell_blocks_parse(path, capsys):
    from uniemo.cli.main import build_parser

    for line_number, block in _blocks(path, ("bash", "sh", "shell", "console")):
        for line in _commands(block):
            words = _uniemo_argv(line)
            if words is None:
                continue
            for argv in _variants(words):
                try:
                    build_parser().parse_args(argv)
                except SystemExit:
                    error = capsys.readouterr().err.strip().splitlines()[-1:]
                    pytest.fail(f"{_name(path)}:{line_number}: `uniemo {' '.join(argv)}` does not parse: {error}")


# --------------------------------------------------------------------------------------------------------------
# (e) the claims' figures come from results/claims.jsonl, never typed by hand


def _results_pages():
    spec = importlib.util.spec_from_file_location("results_pages", REPO / "docs" / "results_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PERCENT = re.compile(r"\d\s?%")
SIGNED_INTERVAL = re.compile(r"\[\s*[−+-]\s?\d+(\.\d+)?,\s*[−+-]?\s?\d+(\.\d+)?\s*\]")


def _typed_figures(text: str) -> list[str]:
    """The lines of ``text`` (its markers removed) that show a percentage or a signed interval."""
    text = _results_pages().MARKER.sub("", text)
    return [line for line in text.splitlines() if PERCENT.search(line) or SIGNED_INTERVAL.search(line)]


def _readme_claims_section() -> str:
    pages = _results_pages()
    section = _sections(README.read_text(), "##")["What the paper claims, and what we measured"]
    start, end = section.index(pages.README_START), section.index(pages.README_END) + len(pages.README_END)
    return section[:start] + section[end:]


def test_claims_figures_are_rendered_from_the_results_not_typed():
    """docs/claims.md and the README's claims section hold no figure of their own: each comes from the results
    through a marker; the pages that link to the claims quote none of their figures beside the link."""
    assert _typed_figures((DOCS / "claims.md").read_text()) == []
    assert _typed_figures(_readme_claims_section()) == []
    for page in (DOCS / "verified.md", DOCS / "findings.md"):
        quoting = [line for line in _typed_figures(page.read_text()) if "claims.md" in line or "paper_claims" in line]
        assert quoting == [], page.name


def test_the_readme_claims_table_is_the_one_the_results_give():
    pages = _results_pages()
    assert pages.readme_block() in README.read_text(), "run: python docs/results_pages.py"


def test_every_claims_row_is_of_the_shipped_stand_in_and_has_its_control():
    pages = _results_pages()
    paper_claims = pages.claims_module()
    keys = {c.key for c in paper_claims.CLAIMS}
    for row in pages.load_rows().values():
        assert row["key"] in keys and row["standin"] == paper_claims.standin_record(), row["key"]
        assert row["profile"] == "full" and row["per_seed"], row["key"]
        assert all(0 <= s["control"] <= 1 and 0 <= s["measured"] <= 1 for s in row["per_seed"]), row["key"]
        assert sum(s["n"] for s in row["per_seed"]) == row["n"] and row["seeds"] == [
            s["seed"] for s in row["per_seed"]
        ]
        assert row["holds"] is None or len(row["seeds"]) >= 3, row["key"]


def test_claims_markers_render_the_rows_figures():
    pages = _results_pages()
    row = {
        "key": "alpha", "claim": "α soft vs no α", "paper": "Table V", "paper_effect": 0.0382,
        "measured": 0.729, "control": 0.806, "seeds": [0, 1, 2], "n": 1200, "discordant": 90,
        "interval": [-0.119, -0.036], "holds": False, "powered": False,
        "per_seed": [{"seed": s, "measured": 0.7, "control": 0.8, "n": 400, "discordant": 30} for s in range(3)],
    }  # fmt: skip
    page = pages.render("α: <!-- uniemo:claim alpha -->\n\n<!-- uniemo:claims-table -->", {"alpha": row})
    assert "72.9 % vs 80.6 %: −7.7 points [−11.9, −3.6] over 3 seeds, N = 1,200 (no)" in page
    assert "| α soft vs no α | Table V | 72.9 % vs 80.6 % | −7.7 [−11.9, −3.6], 3 seeds, 1,200 | **no** |" in page
    assert page.count("not yet measured on the shipped stand-in") == len(pages.claims_module().CLAIMS) - 1
    assert "<!-- uniemo" not in page
    row["gradient_share"] = {"mean": {"diffusion_norm_ratio": 0.00255, "cond_norm_ratio": 1.8, "cond_cosine": -0.0073}}
    probes = " ".join(f"<!-- uniemo:claim-probe alpha gradient_share {f} -->" for f in row["gradient_share"]["mean"])
    assert pages.render(probes, {"alpha": row}) == "0.26 % 180 % −0.01"
