"""`make mutate`: mutation testing of the mechanism functions with the fast tests that cover them (mutmut).

    python tests/mutate.py                 # a fixed sample of 450 mutants (about 16 min on 2 CPU cores)
    python tests/mutate.py --sample 0      # every mutant of the mechanism functions (not timed)
    python tests/mutate.py --report        # the table of the last run, without running anything

mutmut (configured in pyproject.toml's [tool.mutmut]) copies src/ to mutants/, makes every one-token change it
knows to the modules listed there and runs, for each change, the tests that call the changed function. A mutant
that no test notices "survived": either it is equivalent (the change cannot alter behaviour) or the tests have a
gap. Only the functions in MECHANISMS below are run: the method's mechanisms (METHOD §2–§7), the generation
pipeline's modes and the metrics; constructors, checkpoint loading, logging and the training loops are not (the
slow end-to-end tests cover those). The report (mutants/report.md, and printed) counts per module and lists the
survivors; `mutmut show NAME` prints one's diff.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTANTS = REPO / "mutants"

#: mutmut's names of the mechanism functions (``module.x_function`` / ``module.xǁClassǁmethod``), as globs. A
#: pattern that matches no mutant stops the run. mutmut does not mutate decorated functions (other than static and
#: class methods), so the mechanisms take ``with torch.no_grad():`` in their body rather than the decorator; the
#: properties and context managers among them (``sampling_defaults``, ``_scheduler``, ``PlaceholderInjector.inject``)
#: are not mutated.
MECHANISMS = [
    # L_U = ce·L_CE + scene·L_S + object·L_O, L_S / L_O (InfoNCE against the names), L_cond (METHOD §2, §4)
    "uniemo.losses.*",
    # the expert-query model: queries entering at their stages, Interactive Blocks, heads (METHOD §2)
    "uniemo.models.understanding.x_default_stage_layers*",
    "uniemo.models.understanding.xǁExpertQueryCLIPǁforward*",
    "uniemo.models.understanding.xǁExpertQueryCLIPǁ_refine*",
    "uniemo.models.understanding.xǁExpertQueryCLIPǁ_run_layer*",
    "uniemo.models.understanding.xǁInteractiveBlockLayerǁforward*",
    # priors, α, mappers, fusion, the emotion space, placeholder injection (METHOD §3–§5)
    "uniemo.models.alpha.x_*",
    "uniemo.models.alpha.x_correlation_coefficient*",  # α itself, named so that a decorator cannot hide it
    "uniemo.models.alpha.x_classifier_prior*",
    "uniemo.models.emotion_space.x_*",
    "uniemo.models.mappers.xǁConditionMappersǁforward*",
    "uniemo.models.placeholder.xǁPlaceholderInjectorǁtokenize*",
    "uniemo.models.placeholder.xǁPlaceholderInjectorǁencode*",
    "uniemo.models.uniemo.xǁUniEmoModelǁalphas*",
    "uniemo.models.uniemo.xǁUniEmoModelǁforward*",
    "uniemo.models.uniemo.xǁUniEmoModelǁcondition*",
    "uniemo.models.uniemo.xǁUniEmoModelǁ_condition*",
    "uniemo.models.uniemo.xǁUniEmoModelǁnormalize_condition*",
    "uniemo.models.uniemo.xǁUniEmoModelǁsample_features*",
    "uniemo.models.uniemo.xǁUniEmoModelǁgeneration_parameters*",
    "uniemo.models.placeholder.xǁPromptEncoderǁ_ids*",
    "uniemo.models.placeholder.xǁPromptEncoderǁencode*",
    # the joint objective L_Joint = w_U·L_U + w_cond·L_cond + w_θ·L(θ) (METHOD §4)
    "uniemo.train.objective.xǁJointObjectiveǁ*",
    "uniemo.train.objective.x_content_words*",
    # the feedback selection (METHOD §6)
    "uniemo.train.feedback.x_rank_window*",
    "uniemo.train.feedback.x_select_images*",
    "uniemo.train.feedback.x_mix_count*",
    "uniemo.train.feedback.x_mix_in*",
    # the generation pipeline's four modes (METHOD §5)
    "uniemo.pipelines.generation.x_parse_emotion_weights*",
    "uniemo.pipelines.generation.x_default_scheduler*",
    "uniemo.pipelines.generation.x_emotion_accuracy*",
    "uniemo.pipelines.generation.x_save_generation*",
    "uniemo.pipelines.generation.xǁUniEmoPipelineǁemotion_conditions*",
    "uniemo.pipelines.generation.xǁUniEmoPipelineǁreference_condition*",
    "uniemo.pipelines.generation.xǁUniEmoPipelineǁprompt_for*",
    "uniemo.pipelines.generation.xǁUniEmoPipelineǁ__call__*",
    # the metrics (METHOD §7) and the understanding evaluation's label mapping
    "uniemo.metrics.classification.x_classification_report*",
    "uniemo.metrics.classification.xǁClassificationReportǁto_dict*",
    "uniemo.metrics.generation.*",
    "uniemo.metrics.modes.*",
    "uniemo.evaluate.x_label_mapping*",
]


def mechanism_mutants() -> dict[str, int | None]:
    """Every generated mutant of a mechanism function → its last exit code (None: not run)."""
    found: dict[str, int | None] = {}
    for meta in sorted(MUTANTS.glob("src/**/*.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(name, pattern) for pattern in MECHANISMS):
                found[name] = code
    return found


def module_of(name: str) -> str:
    return name.split(".x_")[0].split(".xǁ")[0]


def report(names: list[str]) -> str:
    from mutmut.stats import status_by_exit_code

    results = mechanism_mutants()
    rows: dict[str, Counter] = {}
    survivors = []
    for name in names:
        status = status_by_exit_code[results.get(name)]
        rows.setdefault(module_of(name), Counter())[status] += 1
        if status in ("survived", "no tests", "timeout", "suspicious"):
            survivors.append(f"- {status}: `{name}`")
    lines = ["| module | mutants | killed | survived | no tests | other | killed % |", "|---|---|---|---|---|---|---|"]
    total = Counter()
    for module, counts in sorted(rows.items()):
        total += counts
        lines.append(_row(module, counts))
    lines.append(_row("**all**", total))
    return "\n".join(lines + ["", f"Not killed ({len(survivors)}; `mutmut show NAME` prints the change):", *survivors])


def _row(module: str, counts: Counter) -> str:
    n = sum(counts.values())
    killed = counts["killed"]
    other = n - killed - counts["survived"] - counts["no tests"]
    cells = [module, n, killed, counts["survived"], counts["no tests"], other, f"{100 * killed / n:.1f}"]
    return "| " + " | ".join(map(str, cells)) + " |"


def mutmut(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "mutmut"), *args], cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=450, help="mutants to run, drawn with --seed; 0: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--children", type=int, default=2, help="mutants run in parallel")
    parser.add_argument("--report", action="store_true", help="print the last run's report, run nothing")
    args = parser.parse_args()
    chosen_file = MUTANTS / "chosen.json"
    if not args.report:
        # mutmut generates the mutants and records which tests call which function, then runs the names given;
        # a first run of the smallest mechanism does the first two, so that the sample can be drawn from all
        mutmut("run", "--max-children", str(args.children), "uniemo.losses.x_attribute_infonce__mutmut_1")
        names = sorted(mechanism_mutants())
        # a pattern that matches nothing (a function renamed or moved) would shrink the run without a word
        unmatched = [p for p in MECHANISMS if not any(fnmatch.fnmatch(n, p) for n in names)]
        if unmatched:
            sys.exit(f"no mutant matches {', '.join(unmatched)}: update MECHANISMS (and [tool.mutmut] only_mutate)")
        if 0 < args.sample < len(names):
            names = sorted(random.Random(args.seed).sample(names, args.sample))
        chosen_file.write_text(json.dumps(names))
        mutmut("run", "--max-children", str(args.children), *names)
    if not chosen_file.is_file():
        sys.exit("no mutation run to report on: run `make mutate` first")
    table = report(json.loads(chosen_file.read_text()))
    (MUTANTS / "report.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
