"""``uniemo demo``: the pipeline end to end on the built-in dataset, one stage after another, and its report.

Stages: write the built-in dataset; train stage 1 (the tiny config, on the shipped stand-in CLIP); evaluate it on
the test split; train stage 2 (joint understanding + generation with the shipped stand-in Stable Diffusion);
generate images of every emotion, an emotion transfer and a fusion, and measure them (Emo-A, Sem-C, Sem-D, FID);
draw the expert queries' attention; run explicit feedback (Alg. 1) against a baseline; write ``report.html``.
A finished stage is reused when its settings are unchanged (``--force`` redoes everything); the settings of each
finished stage are kept in ``demo-state.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from uniemo.checkpoint import write_atomic

logger = logging.getLogger(__name__)

#: Stage settings: the full demo (about 9 minutes on 2 CPU cores) and ``--fast`` (about 2.5 minutes; the tests).
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
TOTAL_STAGES = 8


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
        write_atomic(self.state_file, json.dumps(self.state, indent=1))

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

    train_settings = {
        "config": "tiny",
        "synth": synth_settings,  # every later stage's settings hold the earlier ones: a change redoes what follows
        "max_steps": settings["steps"],
        "eval_every": settings["eval_every"],
    }
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
    joint = json.loads((joint_dir / "summary.json").read_text())

    # ---- the Emo-A classifier (METHOD §7) and the generated images with their metrics ----------------------------
    clf_dir, judge_dir = out / "emo-classifier", out / "judge"
    gen_settings = {
        **joint_settings,
        "per_emotion": settings["per_emotion"],
        "showcase": settings["showcase"],
        "sample_steps": settings["sample_steps"],
    }
    reused = stages.done("generation", gen_settings) and (gen_dir / "metrics.json").is_file()
    stages.banner(5, TOTAL_STAGES, "generate every emotion, a transfer, a fusion; Emo-A, Sem-C, Sem-D, FID", reused)
    if reused:
        generation = json.loads((gen_dir / "metrics.json").read_text())
    else:
        from uniemo.metrics.judge import judge_for
        from uniemo.metrics.networks import train_emotion_classifier

        if not (stages.done("emo-classifier", synth_settings) and (clf_dir / "model.json").is_file()):
            clf = train_emotion_classifier(data_dir, STANDIN_CLIP, clf_dir, seed=0)
            stages.record("emo-classifier", synth_settings, clf)
        judge_settings = {**synth_settings, "judge_steps": settings["judge_steps"]}
        if not (stages.done("judge", judge_settings) and (judge_dir / "model.json").is_file()):
            judge, origin = judge_for(data_dir, steps=settings["judge_steps"])
            judge.save_pretrained(judge_dir, trained_on=judge.trained_on)
            stages.record("judge", judge_settings, {"origin": origin})
        generation = generate_showcase(
            joint_dir,
            data_dir,
            clf_dir,
            judge_dir,
            gen_dir,
            settings["per_emotion"],
            settings["showcase"],
            settings["sample_steps"],
        )
        generation["emo-a"]["real_test"] = stages.state["emo-classifier"]["result"]["test_accuracy"]
        write_atomic(gen_dir / "metrics.json", json.dumps(generation, indent=1))
        stages.record("generation", gen_settings, {"emo_a": generation["emo-a"]["value"]})

    att_dir = out / "attention"
    reused = stages.done("attention", joint_settings) and (att_dir / "attention.json").is_file()
    stages.banner(6, TOTAL_STAGES, "where the expert queries look (attention maps)", reused)
    if not reused:
        attention_showcase(joint_dir, data_dir, att_dir)
        stages.record("attention", joint_settings, {})

    fb_dir = out / "feedback"
    fb_settings = {
        **joint_settings,
        "m": settings["feedback_m"],
        "steps": settings["feedback_steps"],
        "sample_steps": settings["sample_steps"],
    }
    reused = stages.done("feedback", fb_settings) and (fb_dir / "report.json").is_file()
    stages.banner(7, TOTAL_STAGES, "explicit feedback (Alg. 1): filter generated images, train on them", reused)
    if reused:
        feedback = json.loads((fb_dir / "report.json").read_text())
    else:
        from uniemo.config import FeedbackRunConfig
        from uniemo.train.feedback import run_feedback

        shutil.rmtree(fb_dir, ignore_errors=True)
        overrides = [
            f"data.root={data_dir}",
            f"output_dir={fb_dir}",
            f"feedback.checkpoint={joint_dir}",
            f"feedback.emo_classifier={clf_dir}",
            f"feedback.images_per_emotion={settings['feedback_m']}",
            f"optim.max_steps={settings['feedback_steps']}",
            *([f"feedback.steps={settings['sample_steps']}"] if settings["sample_steps"] else []),
        ]
        feedback = run_feedback(load_config(resolve_config_path("tiny-feedback"), overrides, FeedbackRunConfig))
        stages.record("feedback", fb_settings, {})

    stages.banner(8, TOTAL_STAGES, "report")
    from uniemo.demo.report import write_report

    report_path = write_report(out, mode)
    chance = 1 / len(result["classes"])
    emo_a = generation["emo-a"]
    print(
        f"\nunderstanding (built-in dataset, not EmoSet): test accuracy {result['accuracy']:.2%} on "
        f"N={result['num_samples']} images (chance {chance:.1%}); 2-class {result['sentiment_accuracy']:.2%}"
    )
    print(
        f"joint training: understanding test accuracy {joint['accuracy_before']:.2%} before, "
        f"{joint['accuracy_after']:.2%} after ({joint['steps']} steps, {joint['seconds_per_step'] * 1000:.0f} ms/step)"
    )
    judged = generation.get("judge", {})
    if judged:
        e, low_high = judged["emotions"], judged["emotions"]["interval"]
        print(
            f"generation (stand-in SD, built-in dataset): Emo-A {e['emo_a']:.2%} [{low_high[0]:.1%}, "
            f"{low_high[1]:.1%}] by the attribute judge on N={e['n']} images (chance {chance:.1%}; real test images "
            f"{judged['real']['emotion']:.2%}, oracle {judged['oracle']['emo_a']:.2%}); 2-class {e['valence']:.2%}"
        )
    print(
        f"generation (stand-in SD, built-in dataset): Emo-A {emo_a['value']:.2%} on N={emo_a['n']} images "
        f"(chance {chance:.1%}), read by a classifier on the stand-in CLIP's image features"
    )
    both = feedback["variants"].get("both", {})
    base = feedback["variants"].get("baseline", {})
    if both and base:
        print(
            f"explicit feedback ({feedback['continued_steps']} more steps): accuracy {base['accuracy']:.2%} without, "
            f"{both['accuracy']:.2%} with {both['added']} filtered generated images"
        )
    print(f"report: {report_path} · total {time.perf_counter() - stages.start:.0f} s")
    return {**result, "joint": joint, "generation": generation, "feedback": feedback, "report": str(report_path)}


STANDIN_CLIP = "uniemo-standin"


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
