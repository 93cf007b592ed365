"""``uniemo demo``: the pipeline end to end on the built-in dataset, one stage after another, and its report.

Stages: write the built-in dataset; train stage 1 (the tiny config, on the shipped stand-in CLIP); evaluate it on
the test split; train stage 2 (joint understanding + generation with the shipped stand-in Stable Diffusion) and its
control (the same run without L(θ): does generation feed back into understanding?); generate images of every
emotion, an emotion transfer and a fusion, and measure them (Emo-A, Sem-C, Sem-D, FID); draw the expert queries'
attention; run explicit feedback (Alg. 1) against a baseline; write ``report.html``.
A finished stage is reused when its settings are unchanged (``--force`` redoes everything); the settings of each
finished stage are kept in ``demo-state.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from uniemo.checkpoint import write_atomic

logger = logging.getLogger(__name__)

#: Stage settings: the full demo and ``--fast`` (a few minutes; the tests).
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "synth": {"train": 4000, "val": 500, "test": 1000},
        # stage 1 stops at 300 steps (its validation accuracy had peaked there) and feedback is shorter, so that the
        # four modes judged at N = 128 (and the oracle) fit in the time the demo took before they were measured
        "steps": 300,
        "eval_every": 100,
        "joint_steps": 300,
        "per_emotion": 16,
        "feedback_m": 8,
        "feedback_steps": 25,
        "showcase": 4,
        "sample_steps": None,  # the checkpoint's own default
        "judge_steps": 1000,
    },
    "fast": {
        "synth": {"train": 1600, "val": 200, "test": 400},
        "steps": 80,
        "eval_every": 40,
        "joint_steps": 25,
        "per_emotion": 4,
        "feedback_m": 4,
        "feedback_steps": 6,
        "showcase": 2,
        "sample_steps": 12,
        "judge_steps": 300,
    },
}
STANDIN_CLIP = "uniemo-standin"


class _Stages:
    """Runs named stages with timing, skipping those whose recorded settings match."""

    def __init__(self, out: Path, force: bool) -> None:
        self.out = out
        self.force = force
        self.start = time.perf_counter()
        self.state_file = out / "demo-state.json"
        self.state: dict[str, Any] = (
            {} if force or not self.state_file.is_file() else json.loads(self.state_file.read_text())
        )

    def done(self, name: str, settings: dict[str, Any]) -> bool:
        return self.state.get(name, {}).get("settings") == settings

    def record(self, name: str, settings: dict[str, Any], result: dict[str, Any]) -> None:
        self.state[name] = {"settings": settings, "result": result}
        write_atomic(self.state_file, json.dumps(self.state, indent=1))

    def banner(self, index: int, total: int, name: str, reused: bool = False) -> None:
        elapsed = time.perf_counter() - self.start
        suffix = " (finished earlier: reused; --force redoes it)" if reused else ""
        logger.info("[%d/%d] %s — %.0f s elapsed%s", index, total, name, elapsed, suffix)


@dataclass
class _Demo:
    """What the stages share: the output directory, the mode's settings and the results of the stages so far."""

    out: Path
    mode: str
    settings: dict[str, Any]
    stages: _Stages
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.out / name

    def overrides(self, run: str, *extra: str) -> list[str]:
        """The ``key=value`` overrides of a training run of this demo (its data, its output directory, ``extra``)."""
        return [f"data.root={self.path('data')}", f"output_dir={self.path(run)}", *extra]


# ---- the stages: each runs its step into out/<name>/ and returns what demo-state.json records of it ---------------
def _dataset(demo: _Demo) -> dict[str, Any]:
    from uniemo.data.synth import SynthConfig, write_synthetic_dataset

    write_synthetic_dataset(demo.path("data"), SynthConfig(**demo.settings["synth"]), overwrite=True)
    return {"dir": str(demo.path("data"))}


def _understanding(demo: _Demo) -> dict[str, Any]:
    from uniemo.config import load_config, resolve_config_path
    from uniemo.train.understanding import train_understanding

    s = demo.settings
    shutil.rmtree(demo.path("understanding"), ignore_errors=True)
    overrides = demo.overrides("understanding", f"optim.max_steps={s['steps']}", f"eval_every={s['eval_every']}")
    return dict(train_understanding(load_config(resolve_config_path("tiny"), overrides)).__dict__)


def _evaluation(demo: _Demo) -> dict[str, Any]:
    from uniemo.evaluate import evaluate_understanding

    data, run = demo.path("data"), demo.path("understanding")
    return {"accuracy": evaluate_understanding(run, data, split="test", out_dir=demo.path("evaluation"))["accuracy"]}


def _train_joint(demo: _Demo, run: str, *extra: str) -> dict[str, Any]:
    """A joint run from stage 1's model into out/<run>/ (the tiny-joint config, the demo's steps, ``extra``)."""
    from uniemo.config import JointRunConfig, load_config, resolve_config_path
    from uniemo.train.joint import train_joint

    shutil.rmtree(demo.path(run), ignore_errors=True)
    start = f"joint.understanding={demo.path('understanding')}", f"optim.max_steps={demo.settings['joint_steps']}"
    cfg = load_config(resolve_config_path("tiny-joint"), demo.overrides(run, *start, *extra), JointRunConfig)
    return dict(train_joint(cfg).__dict__)


def _joint(demo: _Demo) -> dict[str, Any]:
    return _train_joint(demo, "joint")


def _implicit_control(demo: _Demo) -> dict[str, Any]:
    """Implicit feedback's control: the joint run again without L(θ) (L_U alone, the same optimiser, batches, seed
    and steps), and both models on the test images, paired by image (``joint-control/comparison.json``)."""
    from uniemo.evaluate import compare_understanding

    _train_joint(demo, "joint-control", "joint.diffusion_weight=0", "joint.diagnostic_images=0")
    comparison = compare_understanding(demo.path("joint"), demo.path("joint-control"), demo.path("data"))
    write_atomic(demo.path("joint-control") / "comparison.json", json.dumps(comparison, indent=1))
    return comparison


def _generation(demo: _Demo) -> dict[str, Any]:
    """The Emo-A classifier (METHOD §7) and the attribute judge (each kept while the data is unchanged), then the
    generated images and their metrics."""
    from uniemo.metrics.judge import judge_for
    from uniemo.metrics.networks import train_emotion_classifier

    s = demo.settings
    stages = demo.stages
    data = demo.path("data")
    clf_dir = demo.path("emo-classifier")
    judge_dir = demo.path("judge")
    gen_dir = demo.path("generation")
    if not (stages.done("emo-classifier", s["synth"]) and (clf_dir / "model.json").is_file()):
        stages.record("emo-classifier", s["synth"], train_emotion_classifier(data, STANDIN_CLIP, clf_dir, seed=0))
    judge_settings = {**s["synth"], "judge_steps": s["judge_steps"]}
    if not (stages.done("judge", judge_settings) and (judge_dir / "model.json").is_file()):
        judge, origin = judge_for(data, steps=s["judge_steps"])
        judge.save_pretrained(judge_dir, trained_on=judge.trained_on)
        stages.record("judge", judge_settings, {"origin": origin})
    showcase = s["per_emotion"], s["showcase"], s["sample_steps"]
    generation = generate_showcase(demo.path("joint"), data, clf_dir, judge_dir, gen_dir, *showcase)
    generation["emo-a"]["real_test"] = stages.state["emo-classifier"]["result"]["test_accuracy"]
    write_atomic(gen_dir / "metrics.json", json.dumps(generation, indent=1))
    return {"emo_a": generation["emo-a"]["value"]}


def _attention(demo: _Demo) -> dict[str, Any]:
    attention_showcase(demo.path("joint"), demo.path("data"), demo.path("attention"))
    return {}


def _feedback(demo: _Demo) -> dict[str, Any]:
    from uniemo.config import FeedbackRunConfig, load_config, resolve_config_path
    from uniemo.train.feedback import run_feedback

    s = demo.settings
    shutil.rmtree(demo.path("feedback"), ignore_errors=True)
    overrides = demo.overrides(
        "feedback",
        f"feedback.checkpoint={demo.path('joint')}",
        f"feedback.emo_classifier={demo.path('emo-classifier')}",
        f"feedback.images_per_emotion={s['feedback_m']}",
        f"optim.max_steps={s['feedback_steps']}",
        *([f"feedback.steps={s['sample_steps']}"] if s["sample_steps"] else []),
    )
    run_feedback(load_config(resolve_config_path("tiny-feedback"), overrides, FeedbackRunConfig))
    return {}


def _report(demo: _Demo) -> dict[str, Any]:
    from uniemo.demo.report import write_report

    return {"path": str(write_report(demo.out, demo.mode))}


def _stage_settings(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each stage's settings; a later stage's hold the earlier ones', so that a change redoes what follows."""
    understanding = {"config": "tiny", "synth": s["synth"], "max_steps": s["steps"], "eval_every": s["eval_every"]}
    joint = {**understanding, "joint_steps": s["joint_steps"]}
    sampling = {"per_emotion": s["per_emotion"], "showcase": s["showcase"], "sample_steps": s["sample_steps"]}
    feedback = {"m": s["feedback_m"], "steps": s["feedback_steps"], "sample_steps": s["sample_steps"]}
    return {
        "data": s["synth"],
        "understanding": understanding,
        "evaluation": understanding,
        "joint": joint,
        "implicit-control": joint,
        "generation": {**joint, **sampling},
        "attention": joint,
        "feedback": {**joint, **feedback},
    }


class Stage(NamedTuple):
    """One row of the demo: its name (in ``demo-state.json``), what the progress line says, the file that shows it
    finished (None: it always runs), the step, and the JSON file its result is read from."""

    name: str
    title: str
    marker: str | None
    run: Callable[[_Demo], dict[str, Any]]
    result: str | None = None


#: The demo, in order.
STAGES: tuple[Stage, ...] = (
    Stage("data", "built-in dataset", "data/info.json", _dataset),
    Stage("understanding", "stage 1: train the expert-query model", "understanding/best", _understanding),
    Stage("evaluation", "evaluate on the test split", "evaluation/report.json", _evaluation, "evaluation/report.json"),
    Stage(
        "joint",
        "stage 2: joint training with the stand-in Stable Diffusion",
        "joint/summary.json",
        _joint,
        "joint/summary.json",
    ),
    Stage(
        "implicit-control",
        "implicit feedback's control: the joint run without L(θ), as many steps",
        "joint-control/comparison.json",
        _implicit_control,
        "joint-control/comparison.json",
    ),
    Stage(
        "generation",
        "generate every emotion, a transfer, a fusion; Emo-A, Sem-C, Sem-D, FID",
        "generation/metrics.json",
        _generation,
        "generation/metrics.json",
    ),
    Stage("attention", "where the expert queries look (attention maps)", "attention/attention.json", _attention),
    Stage(
        "feedback",
        "explicit feedback (Alg. 1): filter generated images, train on them",
        "feedback/report.json",
        _feedback,
        "feedback/report.json",
    ),
    Stage("report", "report", None, _report),
)


def run_demo(out: Path, fast: bool = False, force: bool = False) -> dict[str, Any]:
    """Runs the demo's stages into ``out`` (each reused when finished with the same settings) and returns the
    results: the understanding model's test evaluation with ``joint``, ``implicit_control``, ``generation``,
    ``feedback`` and ``report``
    (the page's path); :func:`summary_lines` words them."""
    mode = "fast" if fast else "full"
    out.mkdir(parents=True, exist_ok=True)
    demo = _Demo(out, mode, SETTINGS[mode], _Stages(out, force))
    settings = _stage_settings(demo.settings)
    for index, stage in enumerate(STAGES, start=1):
        name = stage.name
        reused = stage.marker is not None and demo.stages.done(name, settings[name]) and (out / stage.marker).exists()
        demo.stages.banner(index, len(STAGES), stage.title, reused)
        if not reused:
            record = stage.run(demo)
            if stage.marker is None:
                demo.results[name] = record
                continue
            demo.stages.record(name, settings[name], record)
            for later in STAGES[index:]:  # what follows was made from the old output
                demo.stages.state.pop(later.name, None)
        if stage.result:
            demo.results[name] = json.loads((out / stage.result).read_text())
    r = demo.results
    seconds = time.perf_counter() - demo.stages.start
    extra = {
        "joint": r["joint"],
        "implicit_control": r["implicit-control"],
        "generation": r["generation"],
        "feedback": r["feedback"],
        "seconds": seconds,
    }
    return {**r["evaluation"], **extra, "report": r["report"]["path"]}


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What ``uniemo demo`` prints at the end: each stage's headline figure, from :func:`run_demo`'s result."""
    joint = result["joint"]
    generation = result["generation"]
    feedback = result["feedback"]
    chance = 1 / len(result["classes"])
    lines = [
        f"understanding (built-in dataset, not EmoSet): test accuracy {result['accuracy']:.2%} on "
        f"N={result['num_samples']} images (chance {chance:.1%}); 2-class {result['sentiment_accuracy']:.2%}",
        f"joint training: understanding test accuracy {joint['accuracy_before']:.2%} before, "
        f"{joint['accuracy_after']:.2%} after ({joint['steps']} steps, "
        f"{joint['seconds_per_step'] * 1000:.0f} ms/step)",
        "implicit feedback: " + implicit_line(result["implicit_control"]),
    ]
    judged = generation.get("judge", {})
    if judged:
        e, low_high = judged["emotions"], judged["emotions"]["interval"]
        lines.append(
            f"generation (stand-in SD, built-in dataset): Emo-A {e['emo_a']:.2%} [{low_high[0]:.1%}, "
            f"{low_high[1]:.1%}] by the attribute judge on N={e['n']} images (chance {chance:.1%}; real test images "
            f"{judged['real']['emotion']:.2%}, oracle {judged['oracle']['emo_a']:.2%}); 2-class {e['valence']:.2%}"
        )
    emo_a = generation["emo-a"]
    lines.append(
        f"generation (stand-in SD, built-in dataset): Emo-A {emo_a['value']:.2%} on N={emo_a['n']} images "
        f"(chance {chance:.1%}), read by a classifier on the stand-in CLIP's image features"
    )
    both, base = feedback["variants"].get("both", {}), feedback["variants"].get("baseline", {})
    if both and base:
        lines.append(
            f"explicit feedback ({feedback['continued_steps']} more steps): accuracy {base['accuracy']:.2%} without, "
            f"{both['accuracy']:.2%} with {both['added']} filtered generated images"
        )
    return [*lines, f"report: {result['report']} · total {result['seconds']:.0f} s"]


def implicit_line(comparison: dict[str, Any]) -> str:
    """The implicit-feedback comparison (``joint-control/comparison.json``) in words."""
    from uniemo.evaluate import comparison_words

    return (
        f"test accuracy {comparison['accuracy']:.2%} after joint training, {comparison['control_accuracy']:.2%} "
        f"after as many steps of L_U alone (the control: the same optimiser, batches and seed, without L(θ)); "
        + comparison_words(comparison)
    )


def generate_showcase(
    joint_dir: Path,
    data_dir: Path,
    clf_dir: Path,
    judge_dir: Path,
    out: Path,
    per_emotion: int,
    showcase: int = 4,
    steps: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The generation stage, sampled with the checkpoint's own defaults (what ``uniemo generate`` and the app use):
    ``per_emotion`` images of every emotion (kept in ``images/<emotion>/``), an emotion transfer onto "a house", an
    amusement–sadness fusion at five weights (``per_emotion`` images a weight), one image per real test image of
    every emotion as a reference, and the oracle row (the stand-in told each emotion's own cues in words). The
    attribute judge reads all of them; the evaluation suite measures the emotions' images (Emo-A by the head on CLIP
    features, Sem-C, Sem-D, FID). Grids show ``showcase`` images a row; returns the report (``metrics.json``)."""
    from uniemo.metrics.judge import AttributeJudge, judge_images, judge_real_accuracy, oracle_images
    from uniemo.metrics.modes import judge_emotions, judge_fusion, judge_reference, judge_transfer, reference_samples
    from uniemo.metrics.suite import GenerationEvaluator, GenerationMetricsConfig
    from uniemo.pipelines.generation import UniEmoPipeline
    from uniemo.plotting import image_grid

    pipe = UniEmoPipeline.from_pretrained(joint_dir)
    judge = AttributeJudge.from_pretrained(judge_dir)
    # guidance and sampler (and steps unless given): the checkpoint's own defaults, as `uniemo generate` uses them
    sampling = {"seed": seed, "batch_size": 32, "steps": steps}
    emotions, images = judge_emotions(pipe, judge, per_emotion, **sampling)
    for emotion, group in images.items():
        folder = out / "images" / emotion
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(group):
            image.save(folder / f"{i:04d}.png")
    image_grid([images[e][:8] for e in pipe.classes], pipe.classes, out / "emotions.png")
    transfer, transfer_images = judge_transfer(pipe, judge, per_emotion, "house", without=images, **sampling)
    rows = [transfer_images[e][:showcase] for e in pipe.classes]
    image_grid(rows, [f"house · {e}" for e in pipe.classes], out / "transfer-house.png")
    fusion, fusion_images = judge_fusion(pipe, judge, per_emotion, **sampling)
    labels = [f"amuse {r['weight']:.2f}/sad {1 - r['weight']:.2f}" for r in fusion["rows"]]
    image_grid([row[:showcase] for row in fusion_images], labels, out / "fusion.png")
    references = reference_samples(data_dir, per_emotion, "test")
    reference, reference_images = judge_reference(pipe, judge, references, **sampling)
    from uniemo.data.images import load_image

    firsts = [i for i, (_, e) in enumerate(references) if i == 0 or references[i - 1][1] != e]
    pairs = [[load_image(references[i][0]), reference_images[i]] for i in firsts]
    image_grid(pairs, [f"ref · {references[i][1]}" for i in firsts], out / "reference.png")
    defaults = {**pipe.sampling_defaults, **({"steps": steps} if steps else {})}
    with pipe._scheduler(defaults["scheduler"]):
        oracle = oracle_images(
            pipe.diffusion, pipe.classes, per_emotion, defaults["steps"], defaults["guidance"], seed
        )
    image_grid([oracle[e][:8] for e in pipe.classes], [f"oracle · {e}" for e in pipe.classes], out / "oracle.png")
    # No AlexNet or Inception weights ship with the demo: LPIPS is left out and FID reads CLIP features (both said).
    cfg = GenerationMetricsConfig(
        emo_classifier=str(clf_dir), clip=STANDIN_CLIP, fid_network="clip", skip=("lpips",), pairs=200
    )
    report = GenerationEvaluator(cfg, data_dir).evaluate(images)
    report["sampling"] = {**defaults, "seed": seed}
    report["skipped"] = {"lpips": "no AlexNet weights on this machine (torchvision's alexnet-owt-7be5be79.pth)"}
    report["judge"] = {
        "real": judge_real_accuracy(judge, data_dir, "test"),
        "emotions": emotions,
        "oracle": judge_images(judge, oracle, pipe.classes),
        "transfer": transfer,
        "fusion": fusion,
        "reference": reference,
    }
    write_atomic(out / "metrics.json", json.dumps(report, indent=1))
    return report


def attention_showcase(joint_dir: Path, data_dir: Path, out: Path) -> None:
    """The scene and object queries' attention for the first test image of every emotion (paper Fig. 9)."""
    from uniemo.data.datasets import open_dataset
    from uniemo.pipelines.classifier import EmotionClassifier
    from uniemo.visualize import attention_maps, save_attention_figure

    clf = EmotionClassifier.from_pretrained(joint_dir)
    dataset = open_dataset(data_dir)
    firsts: dict[int, Any] = {}
    for sample in dataset.split("test"):
        firsts.setdefault(sample.label, sample)
    entries = []
    for label in sorted(firsts):
        sample = firsts[label]
        maps = attention_maps(clf, sample.path)
        name = dataset.classes[label]
        png = save_attention_figure(maps, out / f"{name}.png", title=f"true: {name}")
        predicted = maps.prediction.label
        entries.append({"emotion": name, "image": sample.path.name, "png": png.name, "predicted": predicted})
    write_atomic(out / "attention.json", json.dumps(entries, indent=1))
