"""``uniemo demo``: the pipeline end to end on the built-in dataset, one stage after another.

Stages: write the built-in dataset; train stage 1 (the tiny config, on the shipped stand-in CLIP); evaluate it on
the test split; train stage 2 (joint understanding + generation with the shipped stand-in Stable Diffusion);
generate images of every emotion, an emotion transfer and a fusion, and measure their Emo-A with the stage-1
model. A finished stage is reused when its settings are unchanged (``--force`` redoes everything); the settings of
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
    "full": {
        "synth": {"train": 4000, "val": 500, "test": 1000},
        "steps": 600,
        "eval_every": 100,
        "joint_steps": 400,
        "per_emotion": 12,
    },
    "fast": {
        "synth": {"train": 1600, "val": 200, "test": 400},
        "steps": 200,
        "eval_every": 50,
        "joint_steps": 60,
        "per_emotion": 4,
    },
}
TOTAL_STAGES = 5


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
    stages.banner(1, TOTAL_STAGES, "built-in dataset", reused)
    if not reused:
        write_synthetic_dataset(data_dir, SynthConfig(**synth_settings), overwrite=True)
        stages.record("data", synth_settings, {"dir": str(data_dir)})
        stages.state.pop("understanding", None)

    train_settings = {"config": "tiny", "max_steps": settings["steps"], "eval_every": settings["eval_every"]}
    reused = stages.done("understanding", train_settings) and (run_dir / "best").is_dir()
    stages.banner(2, TOTAL_STAGES, "stage 1: train the expert-query understanding model", reused)
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
    stages.banner(3, TOTAL_STAGES, "evaluate on the test split", reused)
    if reused:
        result = json.loads((eval_dir / "report.json").read_text())
    else:
        result = evaluate_understanding(run_dir, data_dir, split="test", out_dir=eval_dir)
        stages.record("evaluation", train_settings, {"accuracy": result["accuracy"]})
    joint_dir, gen_dir = out / "joint", out / "generation"
    joint_settings = {**train_settings, "joint_steps": settings["joint_steps"]}
    reused = stages.done("joint", joint_settings) and (joint_dir / "summary.json").is_file()
    stages.banner(4, TOTAL_STAGES, "stage 2: joint training with the stand-in Stable Diffusion", reused)
    if not reused:
        from uniemo.config import JointRunConfig
        from uniemo.train.joint import train_joint

        shutil.rmtree(joint_dir, ignore_errors=True)
        overrides = [
            f"data.root={data_dir}",
            f"output_dir={joint_dir}",
            f"joint.understanding={run_dir}",
            f"optim.max_steps={settings['joint_steps']}",
        ]
        summary = train_joint(load_config(resolve_config_path("tiny-joint"), overrides, JointRunConfig))
        stages.record("joint", joint_settings, dict(summary.__dict__))
        stages.state.pop("generation", None)
    joint = json.loads((joint_dir / "summary.json").read_text())

    gen_settings = {**joint_settings, "per_emotion": settings["per_emotion"]}
    reused = stages.done("generation", gen_settings) and (gen_dir / "generation.json").is_file()
    stages.banner(5, TOTAL_STAGES, "generate: every emotion, a transfer, a fusion; Emo-A", reused)
    if reused:
        generation = json.loads((gen_dir / "generation.json").read_text())
    else:
        generation = generate_showcase(joint_dir, run_dir, gen_dir, settings["per_emotion"])
        stages.record("generation", gen_settings, generation)

    chance = 1 / len(result["classes"])
    print(
        f"\nunderstanding (built-in dataset, not EmoSet): test accuracy {result['accuracy']:.2%} on "
        f"N={result['num_samples']} images (chance {chance:.1%}); 2-class {result['sentiment_accuracy']:.2%}"
    )
    print(
        f"joint training: understanding test accuracy {joint['accuracy_before']:.2%} before, "
        f"{joint['accuracy_after']:.2%} after ({joint['steps']} steps, {joint['seconds_per_step'] * 1000:.0f} ms/step)"
    )
    print(
        f"generation (stand-in SD, built-in dataset): Emo-A {generation['emo_a']:.2%} on "
        f"N={generation['num_images']} images, read by the stage-1 model (chance {chance:.1%})"
    )
    print(
        f"models: {run_dir}/best, {joint_dir}/last · confusion matrix: {result['confusion_png']} · images: "
        f"{gen_dir} · total {time.perf_counter() - stages.start:.0f} s"
    )
    return {**result, "joint": joint, "generation": generation}


def generate_showcase(joint_dir: Path, judge_dir: Path, out: Path, per_emotion: int) -> dict[str, Any]:
    """Images of every emotion (Emo-A read by the stage-1 model), an emotion transfer and a fusion, as grids."""
    from uniemo.pipelines.classifier import EmotionClassifier
    from uniemo.pipelines.generation import UniEmoPipeline, emotion_accuracy
    from uniemo.plotting import image_grid

    pipe = UniEmoPipeline.from_pretrained(joint_dir)
    judge = EmotionClassifier.from_pretrained(judge_dir)
    sampling = {"steps": 25, "guidance": 3.0, "seed": 0}
    result, images = emotion_accuracy(pipe, judge, per_emotion, **sampling)
    image_grid([row[:8] for row in images], pipe.classes, out / "emotions.png")
    transfer = [pipe(e, prompt="a house", num_images=4, **sampling).images for e in pipe.classes]
    image_grid(transfer, [f"house · {e}" for e in pipe.classes], out / "transfer-house.png")
    weights = [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    fusion = [pipe({"amusement": a, "sadness": b}, num_images=4, **sampling).images for a, b in weights]
    image_grid(fusion, [f"amuse {a:.2f}/sad {b:.2f}" for a, b in weights], out / "fusion.png")
    result["dir"] = str(out)
    (out / "generation.json").write_text(json.dumps(result, indent=1))
    return result
