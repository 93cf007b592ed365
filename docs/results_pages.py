"""The claims' figures on the pages, rendered from ``results/claims.jsonl`` (written by benchmarks/paper_claims.py).

A page holds a marker comment where a figure goes, and the docs build (docs/hooks.py) puts the figure there; the
README's claims table is the one block outside the build, rewritten by ``python docs/results_pages.py`` and checked
by tests/test_docs.py. Markers:

* ``<!-- uniemo:claims-table -->``: every claim of the benchmark, measured or not yet, with its verdict;
* ``<!-- uniemo:claim KEY -->``: one claim's figures in a sentence;
* ``<!-- uniemo:claim-seeds KEY KEY … -->``: those claims seed by seed;
* ``<!-- uniemo:claim-probe KEY PROBE FIELD -->``: a probe's mean over the seeds (``gradient_share``,
  ``cond_gradient``);
* ``<!-- uniemo:claims-time -->``: the time the full profile's runs took here, from its timing file.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
README_START, README_END = "<!-- uniemo:claims-table:start -->", "<!-- uniemo:claims-table:end -->"
MARKER = re.compile(r"<!-- uniemo:(claims-table|claims-time|claim|claim-seeds|claim-probe)((?: [\w.-]+)*) -->")


def claims_module() -> Any:
    """benchmarks/paper_claims.py, for its list of claims and the stand-in record."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import paper_claims
    finally:
        sys.path.pop(0)
    return paper_claims


def load_rows(path: Path = RESULTS / "claims.jsonl") -> dict[str, dict[str, Any]]:
    """The gathered claims, by key."""
    if not path.is_file():
        return {}
    return {row["key"]: row for row in map(json.loads, path.read_text().splitlines()) if row}


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def signed(x: float) -> str:
    return f"{100 * x:+.1f}".replace("-", "−")


def interval(row: dict[str, Any]) -> str:
    low, high = row["interval"]
    return f"[{signed(low)}, {signed(high)}]"


def verdict(row: dict[str, Any]) -> str:
    """holds in words: yes / no, or why it is not decided (too few seeds, too little power, the interval)."""
    if row["holds"] is True:
        return "**yes**"
    if row["holds"] is False:
        return "**no**"
    seeds = len(row["seeds"])
    if seeds < 3:
        return f"not decided: {seeds} seed{'s' * (seeds > 1)} (3 decide)"
    if row["powered"] is False:
        half = (row["interval"][1] - row["interval"][0]) / 2
        return f"cannot decide: ±{100 * half:.1f} points against the paper's {100 * abs(row['paper_effect']):.1f}"
    return "not decided" + (": no image differs" if row["discordant"] == 0 else "")


def sentence(row: dict[str, Any] | None) -> str:
    if row is None:
        return "*(not yet measured on the shipped stand-in)*"
    return (
        f"{pct(row['measured'])} vs {pct(row['control'])}: {signed(row['measured'] - row['control'])} points "
        f"{interval(row)} over {len(row['seeds'])} seed{'s' * (len(row['seeds']) > 1)}, N = {row['n']:,} "
        f"({verdict(row).replace('**', '')})"
    )


def claims_table(rows: dict[str, dict[str, Any]], compact: bool = False) -> str:
    """Every claim of the benchmark in its order; those without a result say so."""
    head = "| claim | the paper | here: method vs control | difference [95 %], seeds, N | holds here? |"
    lines = [head, "|---|---|---|---|---|"]
    for claim in claims_module().CLAIMS:
        if compact and claim.key not in rows:
            continue
        row = rows.get(claim.key)
        if row is None:
            lines.append(f"| {claim.claim} | {claim.paper} | *not yet measured on the shipped stand-in* | | |")
            continue
        seeds = f"{len(row['seeds'])} seed{'s' * (len(row['seeds']) > 1)}"
        here = f"{pct(row['measured'])} vs {pct(row['control'])}"
        difference = f"{signed(row['measured'] - row['control'])} {interval(row)}, {seeds}, {row['n']:,}"
        lines.append(f"| {row['claim']} | {row['paper']} | {here} | {difference} | {verdict(row)} |")
    return "\n".join(lines)


def seeds_table(rows: dict[str, dict[str, Any]], keys: list[str]) -> str:
    """The named claims seed by seed: method vs control on each."""
    present = [rows[k] for k in keys if k in rows]
    if not present:
        return "*(not yet measured on the shipped stand-in)*"
    seeds = sorted({s["seed"] for row in present for s in row["per_seed"]})
    lines = ["| claim | " + " | ".join(f"seed {s}" for s in seeds) + " | all seeds |"]
    lines.append("|---" * (len(seeds) + 2) + "|")
    for row in present:
        by_seed = {s["seed"]: s for s in row["per_seed"]}
        cells = [
            f"{pct(by_seed[s]['measured'])} vs {pct(by_seed[s]['control'])}" if s in by_seed else "–" for s in seeds
        ]
        lines.append(f"| {row['claim']} | " + " | ".join(cells) + f" | {sentence(row)} |")
    return "\n".join(lines)


def probe(rows: dict[str, dict[str, Any]], key: str, name: str, field: str) -> str:
    row = rows.get(key)
    if row is None or name not in row:
        return "*(not yet measured on the shipped stand-in)*"
    value = row[name]["mean"][field]
    if not field.endswith("norm_ratio"):
        return f"{value:.2f}".replace("-", "−")
    return f"{100 * value:,.0f} %" if value >= 1 else f"{100 * value:.2g} %"


def profile_time(path: Path = RESULTS / "claims" / "full" / "timing.json") -> str:
    if not path.is_file():
        return "*(no timing recorded yet)*"
    seconds = sum(json.loads(path.read_text()).values())
    return f"{seconds / 3600:.1f} hours"


def render(markdown: str, rows: dict[str, dict[str, Any]] | None = None) -> str:
    """``markdown`` with every claims marker replaced by its figures."""
    rows = load_rows() if rows is None else rows

    def replace(match: re.Match) -> str:
        kind, args = match.group(1), match.group(2).split()
        if kind == "claims-table":
            return claims_table(rows)
        if kind == "claims-time":
            return profile_time()
        if kind == "claim":
            return sentence(rows.get(args[0]))
        if kind == "claim-seeds":
            return seeds_table(rows, args)
        return probe(rows, *args)

    return MARKER.sub(replace, markdown)


def readme_block(rows: dict[str, dict[str, Any]] | None = None) -> str:
    """The README's claims table: the claims measured so far (the docs' page has every claim)."""
    rows = load_rows() if rows is None else rows
    if not rows:
        return f"{README_START}\n*(no claim measured on the shipped stand-in yet)*\n{README_END}"
    return f"{README_START}\n{claims_table(rows, compact=True)}\n{README_END}"


def write_readme(readme: Path = REPO / "README.md") -> bool:
    """Rewrites the README's claims block from the results; True when it changed."""
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    new = text[:start] + readme_block() + text[end:]
    readme.write_text(new)
    return new != text


if __name__ == "__main__":
    print("README.md: " + ("rewritten" if write_readme() else "unchanged"))
