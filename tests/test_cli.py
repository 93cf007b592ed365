"""The CLI as a user runs it: a real subprocess, real files, one-line errors."""

import argparse
import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import micro_overrides
from uniemo.config import (
    BaseConfig,
    ConditioningProbeConfig,
    EmoClassifierConfig,
    GenerationMetricsConfig,
    SamplingConfig,
    UnderstandingEvalConfig,
)
from uniemo.data.datasets import open_dataset
from uniemo.pipelines.classifier import EmotionClassifier


def uniemo(*args, cwd=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "uniemo", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def assert_one_line_error(result, message):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_synth_command(tmp_path):
    r = uniemo("synth", tmp_path / "d", "--train", 16, "--val", 4, "--test", 4, "--resolution", 24)
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "d" / "train.json").read_text())) == 16
    assert_one_line_error(uniemo("synth", tmp_path / "d"), "not empty")


def test_options_take_their_defaults_from_the_library_configs():
    """A command's options are its config's fields: left out, the library's default; given, that field only."""
    from uniemo.cli.main import build_parser
    from uniemo.cli.options import fields_from
    from uniemo.data.synth import SynthConfig

    parse = build_parser().parse_args
    assert fields_from(SynthConfig, parse(["synth", "d"])) == SynthConfig()
    assert fields_from(SynthConfig, parse(["synth", "d", "--label-noise", "0.2"])) == SynthConfig(label_noise=0.2)
    assert fields_from(BaseConfig, parse(["train", "base", "d", "--out", "o"])) == BaseConfig()
    args = parse(["train", "base", "d", "--out", "o", "--continue-from", "old", "--unet-steps", "7"])
    assert fields_from(BaseConfig, args) == BaseConfig(init="old", unet_steps=7)
    evaluate = ["evaluate", "generation", "--images", "i", "--reference", "r"]
    assert fields_from(GenerationMetricsConfig, parse(evaluate)) == GenerationMetricsConfig()
    args = parse([*evaluate, "--skip", "fid", "--skip", "lpips", "--legacy", "--fid-network", "clip"])
    assert fields_from(GenerationMetricsConfig, args) == GenerationMetricsConfig(
        skip=("fid", "lpips"), legacy=True, fid_network="clip"
    )
    with pytest.raises(SystemExit):  # a Literal field offers only its values
        parse([*evaluate, "--fid-network", "vgg"])
    train = ["train", "emo-classifier", "d", "--clip", "c", "--out", "o"]
    assert fields_from(EmoClassifierConfig, parse(train)) == EmoClassifierConfig()
    args = parse([*train, "--format", "twitter", "--fold", "2", "--cache", "f"])
    assert fields_from(EmoClassifierConfig, args) == EmoClassifierConfig(data_format="twitter", fold=2, cache_dir="f")
    evaluate = ["evaluate", "understanding", "--checkpoint", "c", "--data", "d"]
    assert fields_from(UnderstandingEvalConfig, parse(evaluate)) == UnderstandingEvalConfig()
    args = parse([*evaluate, "--workers", "3", "--split", "val"])
    assert fields_from(UnderstandingEvalConfig, args) == UnderstandingEvalConfig(num_workers=3, split="val")
    probe = ["evaluate", "conditioning", "--checkpoint", "c", "--data", "d"]
    assert fields_from(ConditioningProbeConfig, parse(probe)) == ConditioningProbeConfig()
    args = parse([*probe, "--images", "16", "--draws", "2"])
    assert fields_from(ConditioningProbeConfig, args) == ConditioningProbeConfig(num_images=16, draws=2)
    generate = ["generate", "--checkpoint", "c", "--out", "o"]
    assert fields_from(SamplingConfig, parse(generate)) == SamplingConfig()
    args = parse([*generate, "--steps", "50", "--scheduler", "model", "--diversity", "0"])
    assert fields_from(SamplingConfig, args) == SamplingConfig(steps=50, scheduler="model", diversity=0.0)


def test_each_option_reads_its_help_from_the_field():
    """An option's help is its field's ``metadata["help"]`` (one place for the CLI and the docs); a field without
    one is no option."""
    from uniemo.cli.main import build_parser
    from uniemo.data.synth import SynthConfig

    def command(parser, path):
        for name in path:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        return parser

    configs = {("synth",): SynthConfig, ("train", "base"): BaseConfig, ("generate",): SamplingConfig}
    configs |= {
        ("evaluate", "conditioning"): ConditioningProbeConfig,
        ("train", "emo-classifier"): EmoClassifierConfig,
        ("evaluate", "generation"): GenerationMetricsConfig,
        ("evaluate", "understanding"): UnderstandingEvalConfig,
    }
    for path, cls in configs.items():
        actions = {a.dest: a for a in command(build_parser(), path)._actions if a.option_strings}
        for f in dataclasses.fields(cls):
            if "help" in f.metadata:
                assert actions[f.name].help.startswith(f.metadata["help"]), (path, f.name)
                assert actions[f.name].option_strings[0] == f.metadata.get("flag", "--" + f.name.replace("_", "-"))
            else:
                assert f.name not in actions, (path, f.name)


def test_models_lists_the_presets():
    from uniemo.models.factory import list_models

    r = uniemo("models")
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()] == list_models()
    assert "The paper's default" in r.stdout


def test_help_imports_no_torch():
    """The parser is built from torch-free configs, so ``uniemo --help`` answers at once."""
    code = "import sys; from uniemo.cli.main import build_parser; build_parser(); "
    code += "print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_library_functions_take_their_defaults_from_the_same_configs():
    """The function a command calls has the defaults of the command's config, so the CLI and Python agree."""
    from uniemo.evaluate import evaluate_understanding
    from uniemo.metrics.networks import train_emotion_classifier
    from uniemo.pipelines.generation import UniEmoPipeline
    from uniemo.train.conditioning import diagnose_checkpoint

    for function, config in (
        (train_emotion_classifier, EmoClassifierConfig()),
        (evaluate_understanding, UnderstandingEvalConfig()),
        (diagnose_checkpoint, ConditioningProbeConfig()),
        (UniEmoPipeline.__call__, SamplingConfig()),
    ):
        parameters = inspect.signature(function).parameters
        for name, value in dataclasses.asdict(config).items():
            assert parameters[name].default == value, (function.__qualname__, name)


def test_classify_folder_json_and_text(trained_run, synth_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("awe_00001.jpg", "fear_00001.jpg"):
        (folder / name).write_bytes((synth_dir / "image" / name.split("_")[0] / name).read_bytes())
    (folder / "broken.jpg").write_bytes(b"not really a jpeg")
    r = uniemo("classify", "--checkpoint", trained_run, folder, "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2 and {os.path.basename(x["image"]) for x in rows} == {"awe_00001.jpg", "fear_00001.jpg"}
    for row in rows:
        assert len(row["top"]) == 8
        assert abs(sum(t["probability"] for t in row["top"]) - 1) < 1e-4
        assert abs(sum(row["sentiment"].values()) - 1) < 1e-4
        assert row["label"] == row["top"][0]["emotion"]
    assert "broken.jpg" in r.stderr and "Traceback" not in r.stderr
    r = uniemo("classify", "--checkpoint", trained_run, folder / "awe_00001.jpg", "--top-k", 2)
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and "awe_00001.jpg:" in r.stdout
    assert_one_line_error(uniemo("classify", "--checkpoint", trained_run, folder / "broken.jpg"), "could be read")


def test_evaluate_json_and_cross_dataset(trained_run, synth_dir, tmp_path):
    r = uniemo(
        "evaluate",
        "understanding",
        "--checkpoint",
        trained_run,
        "--data",
        synth_dir,
        "--json",
        "--out",
        tmp_path / "ev",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["num_samples"] == 96 and 0 <= report["accuracy"] <= 1
    assert set(report["per_class_accuracy"]) == set(report["classes"]) and len(report["confusion"]) == 8
    assert sum(map(sum, report["confusion"])) == 96
    assert (tmp_path / "ev" / "confusion.png").is_file() and (tmp_path / "ev" / "report.json").is_file()
    # A Twitter-style 2-class folder: the 8-class model is evaluated through the sentiment mapping.
    tw = tmp_path / "tw"
    for cls, emotion in (("positive", "awe"), ("negative", "fear")):
        (tw / cls).mkdir(parents=True)
        for i in range(20):
            src = synth_dir / "image" / emotion / f"{emotion}_{i + 1:05d}.jpg"
            (tw / cls / f"{i}.jpg").write_bytes(src.read_bytes())
    r = uniemo("evaluate", "understanding", "--checkpoint", trained_run, "--data", tw, "--split", "test", "--json")
    assert r.returncode == 0, r.stderr
    twitter = json.loads(r.stdout)
    assert twitter["mode"] == "emotions mapped to 2-class sentiment"
    # by hand: an image counts as positive when the model puts more than half its probability on positive emotions
    clf = EmotionClassifier.from_pretrained(trained_run)
    positive = [c in ("amusement", "awe", "contentment", "excitement") for c in clf.classes]  # written out by hand
    dataset = open_dataset(tw)
    samples = dataset.split("test")
    probs = clf.probabilities([s.path for s in samples])
    right = [(p[positive].sum() > 0.5) == (dataset.classes[s.label] == "positive") for p, s in zip(probs, samples)]
    assert twitter["num_samples"] == len(samples) >= 6
    assert twitter["accuracy"] == pytest.approx(sum(right) / len(right))
    assert twitter["accuracy"] > 0.5  # chance is 0.5: the complement of a model that reads valence falls below it


def test_attention_command(trained_run, synth_dir, tmp_path):
    image = synth_dir / "image" / "fear" / "fear_00001.jpg"
    r = uniemo("attention", "--checkpoint", trained_run, image, "--out", tmp_path / "att.png")
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "att.png") as png:
        assert png.width > 2 * png.height  # three panels side by side
    assert "fear_00001.jpg:" in r.stdout and str(tmp_path / "att.png") in r.stdout


def test_user_errors_are_one_line(trained_run, synth_dir, tmp_path):
    assert_one_line_error(
        uniemo("train", "understanding", "--config", "tiny", "optim.lrr=1"), "unknown config key 'optim.lrr'"
    )
    assert_one_line_error(
        uniemo("train", "understanding", "--config", "tiny", f"output_dir={tmp_path}"), "data.root is required"
    )
    assert_one_line_error(uniemo("train", "understanding", "--config", "nope"), "config not found")
    assert_one_line_error(uniemo("classify", "--checkpoint", tmp_path / "none", synth_dir), "checkpoint not found")
    assert_one_line_error(
        uniemo("evaluate", "understanding", "--checkpoint", trained_run, "--data", tmp_path), "no class folders"
    )
    assert_one_line_error(
        uniemo("evaluate", "understanding", "--checkpoint", trained_run, "--data", synth_dir, "--split", "holdout"),
        "no split 'holdout'",
    )
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    assert_one_line_error(
        uniemo("classify", "--checkpoint", trained_run / "best" / "model.safetensors", tmp_path / "x.png"), "is a file"
    )


@pytest.mark.slow
def test_demo_fast_end_to_end(tmp_path):
    r = uniemo("demo", "--fast", "--out", "demo", cwd=tmp_path, timeout=600)  # a relative --out, as `make demo`
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "evaluation" / "report.json").read_text())
    assert f"test accuracy {report['accuracy']:.2%}" in r.stdout  # the printed number is the stage's own
    # Clearly above chance: 12.5 % ± 1.7 % (one binomial σ at N = 400) for 8 classes, 50 % for 2.
    assert report["accuracy"] > 0.2 and report["sentiment_accuracy"] > 0.75, report
    assert (tmp_path / "demo" / "evaluation" / "confusion.png").is_file()
    joint = json.loads((tmp_path / "demo" / "joint" / "summary.json").read_text())
    assert f"{joint['accuracy_before']:.2%} before, {joint['accuracy_after']:.2%} after" in r.stdout
    demo = tmp_path / "demo"
    # implicit feedback's control: the same run without L(θ), both read again on the test images, paired by image
    control = json.loads((demo / "joint-control" / "summary.json").read_text())
    comparison = json.loads((demo / "joint-control" / "comparison.json").read_text())
    assert comparison["accuracy"] == joint["accuracy_after"] and comparison["n"] == 400
    assert comparison["control_accuracy"] == control["accuracy_after"] and control["steps"] == joint["steps"]
    assert control["losses"]["loss/diffusion"] == 0 and joint["losses"]["loss/diffusion"] > 0
    from uniemo.demo import implicit_line

    assert "implicit feedback: " + implicit_line(comparison) in r.stdout
    generation = json.loads((demo / "generation" / "metrics.json").read_text())
    assert generation["num_images"] == 32 and f"Emo-A {generation['emo-a']['value']:.2%}" in r.stdout
    for grid in ("emotions.png", "transfer-house.png", "fusion.png", "reference.png", "oracle.png"):
        assert (demo / "generation" / grid).is_file()
    judged = generation["judge"]
    assert judged["emotions"]["n"] == judged["oracle"]["n"] == judged["transfer"]["n"] == 32
    assert judged["reference"]["n"] == 32 and [r["n"] for r in judged["fusion"]["rows"]] == [4] * 5
    assert judged["real"]["n"] == 400
    # the report: self-contained, every section, and the numbers the stages wrote
    page = (demo / "report.html").read_text()
    from uniemo.demo.report import SECTIONS

    assert all(f'id="{section}"' in page for section in SECTIONS)
    assert 'src="http' not in page  # self-contained
    assert page.count("data:image/png;base64,") == 5 + 1 + 1 + 8  # grids, confusion, curves, 8 attention maps
    # the first line: the judge's Emo-A against chance, beside the judge's real-image ceiling and the oracle
    first = page[page.index('id="summary"') :].split("</p>")[0]
    emotions = judged["emotions"]
    assert f"<b>{emotions['emo_a']:.1%} [" in first and "chance 12.50%" in first
    assert (
        f"real test images {judged['real']['emotion']:.2%}" in first
        and f"oracle {judged['oracle']['emo_a']:.2%}" in first
    )
    assert f"<b>{generation['emo-a']['value']:.2%}</b>" in first
    assert f"<td>{report['accuracy']:.2%}</td>" in page and f"<td>{joint['accuracy_after']:.2%}</td>" in page
    assert f"<td>{generation['sem-c']['value']:.4f}</td>" in page
    assert f"<td>{comparison['control_accuracy']:.2%}</td>" in page and "joint − control, paired by image" in page
    feedback = json.loads((demo / "feedback" / "report.json").read_text())
    assert set(feedback["variants"]) == {"baseline", "both"}
    assert f"<td>{feedback['variants']['both']['accuracy']:.2%}</td>" in page
    assert f"{feedback['test_images']} test images for the accuracy" in page and "both against the baseline" in page
    assert len(json.loads((demo / "attention" / "attention.json").read_text())) == 8
    assert "report: demo/report.html" in r.stdout
    stages = [line for line in r.stderr.splitlines() if line.startswith("[")]  # progress: stage, elapsed time
    assert len(stages) == 9 and all("s elapsed" in line for line in stages), stages
    again = uniemo("demo", "--fast", "--out", demo)  # from another directory: the page finds the stages' files
    assert again.returncode == 0 and again.stderr.count("reused") == 8, again.stderr[-2000:]
    assert (demo / "report.html").read_text().count("data:image/png;base64,") == 5 + 1 + 1 + 8


def test_evaluate_refuses_unmatched_labels_before_running(trained_run, tmp_path):
    for cls in ("calm", "tense"):
        (tmp_path / "other" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / "other" / cls / f"{i}.png")
    r = uniemo(
        "evaluate", "understanding", "--checkpoint", trained_run, "--data", tmp_path / "other", "--split", "train"
    )
    assert_one_line_error(r, "do not cover the dataset's (calm, tense)")


def test_a_bad_image_read_in_a_worker_process_is_still_one_line(synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    broken = sorted((data / "image").rglob("*.jpg"))[3]
    broken.write_bytes(b"not a jpeg")
    overrides = micro_overrides(data, tmp_path / "run") + ["data.num_workers=1", "data.on_bad_image=error"]
    r = uniemo("train", "understanding", "--config", "tiny", *overrides)
    assert_one_line_error(r, f"image {broken} is not an image Pillow can read")


def test_training_skips_unreadable_images_counts_and_reports_them(synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    entries = json.loads((data / "train.json").read_text())
    for entry in entries[:2]:
        (data / entry[1]).write_bytes(b"")  # zero-byte files named .jpg
    out = tmp_path / "run"
    r = uniemo("train", "understanding", "--config", "tiny", *micro_overrides(data, out))
    assert r.returncode == 0, r.stderr[-2000:]
    skipped = json.loads((out / "summary.json").read_text())["skipped_images"]
    assert skipped >= 2  # 12 steps of 32 read all 320 images once, some twice
    assert f"skipped {skipped} unreadable training images" in r.stderr
