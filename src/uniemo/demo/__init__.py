"""``uniemo demo``: the pipeline end to end on the built-in dataset, one stage after another.

Stages so far: write the built-in dataset, train stage 1 (the tiny config), evaluate on the test split.
A finished stage is reused when its settings are unchanged (``--force`` redoes everything); the settings of
each finished stage are kept in ``demo-state.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Stage settings: the full demo (about 6 minutes on 2 CPU cores) and ``--fast`` (about 2.5 minutes).
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"synth": {"train": 4000, "val": 500, "test": 1000}, "steps": 600, "eval_every": 100},
    "fast": {"synth": {"train": 1600, "val": 200, "test": 400}, "steps": 200, "eval_every": 50},
}


class _Stages:
    """Runs named stages with timing, skipping those whose recorded settings match."""

    def __init__(self, out: Path, force: bool) -> None:
        self.out, self.force, self.start = out, force, time.perf_counter()
        self.state_file = out / "demo-state.json"
        self.state: dict[str, Any] = (
            {} if force or not self.state_file.is_file() else json.loads(self.state_file.read_text())
        )

    def done(self, name: str, settings: dict[str, Any]) -> bool:
        return self.state.get(name, {}).get("settings") == settings

    def record(self, name: str, settings: dict[str, Any], result: dict[str, Any]) -> None:
        self.state[name] = {"settings": settings, "result": result}
        self.state_file.write_text(json.dumps(self.state, indent=1))

    def banner(self, index: int, total: int, name: str, reused: bool = False) -> None:
        elapsed = time.perf_counter() - self.start
        suffix = " (finished earlier: reused; --force redoes it)" if reused else ""
        logger.info("[%d/%d] %s — %.0f s elapsed%s", index, total, name, elapsed, suffix)


def run_demo(out: Path, fast: bool = False, force: bool = False) -> dict[str, Any]:
    """Runs the demo into ``out`` and returns the evaluation result of the understanding model."""
    from uniemo.config import load_config, resolve_config_path
    from uniemo.data.synth import SynthConfig, write_synthetic_dataset
    from uniemo.evaluate import evaluate_understanding
    from uniemo.train.understanding import train_understanding

    mode = "fast" if fast else "full"
    settings = SETTINGS[mode]
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out, force)
    data_dir, run_dir, eval_dir = out / "data", out / "understanding", out / "evaluation"

    synth_settings = settings["synth"]
    reused = stages.done("data", synth_settings) and (data_dir / "info.json").is_file()
    stages.banner(1, 3, "built-in dataset", reused)
    if not reused:
        write_synthetic_dataset(data_dir, SynthConfig(**synth_settings), overwrite=True)
        stages.record("data", synth_settings, {"dir": str(data_dir)})
        stages.state.pop("understanding", None)

    train_settings = {"config": "tiny", "max_steps": settings["steps"], "eval_every": settings["eval_every"]}
    reused = stages.done("understanding", train_settings) and (run_dir / "best").is_dir()
    stages.banner(2, 3, "stage 1: train the expert-query understanding model", reused)
    if not reused:
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = [
            f"data.root={data_dir}",
            f"output_dir={run_dir}",
            f"optim.max_steps={settings['steps']}",
            f"eval_every={settings['eval_every']}",
        ]
        summary = train_understanding(load_config(resolve_config_path("tiny"), overrides))
        stages.record("understanding", train_settings, dict(summary.__dict__))
        stages.state.pop("evaluation", None)

    reused = stages.done("evaluation", train_settings) and (eval_dir / "report.json").is_file()
    stages.banner(3, 3, "evaluate on the test split", reused)
    if reused:
        result = json.loads((eval_dir / "report.json").read_text())
    else:
        result = evaluate_understanding(run_dir, data_dir, split="test", out_dir=eval_dir)
        stages.record("evaluation", train_settings, {"accuracy": result["accuracy"]})
    chance = 1 / len(result["classes"])
    print(
        f"\nunderstanding (built-in dataset, not EmoSet): test accuracy {result['accuracy']:.2%} on "
        f"N={result['num_samples']} images (chance {chance:.1%}); 2-class {result['sentiment_accuracy']:.2%}"
    )
    print(
        f"model: {run_dir}/best · confusion matrix: {result['confusion_png']} · "
        f"total {time.perf_counter() - stages.start:.0f} s"
    )
    return result
