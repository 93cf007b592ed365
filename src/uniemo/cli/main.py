"""The ``uniemo`` command line. Heavy libraries are imported inside each command, so ``--help`` is instant.

User errors (bad paths, configs, data, checkpoints) print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from uniemo import __version__
from uniemo.cli.options import add_fields, fields_from
from uniemo.config import (
    BaseConfig,
    ConditioningProbeConfig,
    EmoClassifierConfig,
    GenerationMetricsConfig,
    SamplingConfig,
    UnderstandingEvalConfig,
    resolve_config_path,
)
from uniemo.errors import UniEmoError
from uniemo.runtime import tune_allocator


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "accelerate", "PIL", "matplotlib", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _quiet_loading_bars(command: str) -> None:
    """transformers' and diffusers' per-load progress bars ("Loading weights", "Loading pipeline components")
    would fill stderr around our own; download bars (huggingface_hub's) stay."""
    if command in ("synth", "architectures"):
        return
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    if command in ("generate", "train", "feedback", "demo"):  # these import diffusers anyway
        import diffusers.utils.logging

        diffusers.utils.logging.disable_progress_bar()


# --------------------------------------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from uniemo.data.synth import SynthConfig, write_synthetic_dataset

    cfg = fields_from(SynthConfig, args)
    root = write_synthetic_dataset(args.dir, cfg, overwrite=args.overwrite)
    print(
        f"wrote the built-in dataset to {root}: {cfg.train} train / {cfg.val} val / {cfg.test} test images, "
        f"{cfg.resolution} px (seed {cfg.seed})"
    )
    return 0


def cmd_train_understanding(args: argparse.Namespace) -> int:
    from uniemo.config import load_config
    from uniemo.train.understanding import train_understanding

    cfg = load_config(resolve_config_path(args.config), args.overrides)
    summary = train_understanding(cfg, resume=args.resume)
    if not summary.main_process:
        return 0
    print(
        f"stage 1 done: best val accuracy {summary.best_val_accuracy:.2%} at step {summary.best_step} "
        f"({summary.steps} steps, {summary.seconds_per_step * 1000:.0f} ms/step); model in {cfg.output_dir}/best"
    )
    return 0


def cmd_train_joint(args: argparse.Namespace) -> int:
    from uniemo.config import JointRunConfig, load_config
    from uniemo.train.joint import train_joint

    cfg = load_config(resolve_config_path(args.config), args.overrides, cls=JointRunConfig)
    summary = train_joint(cfg, resume=args.resume)
    if not summary.main_process:
        return 0
    print(
        f"stage 2 done: {summary.steps} steps ({summary.seconds_per_step * 1000:.0f} ms/step); understanding test "
        f"accuracy {summary.accuracy_before:.2%} before joint training, {summary.accuracy_after:.2%} after; "
        f"model in {cfg.output_dir}/last"
    )
    return 0


def cmd_train_base(args: argparse.Namespace) -> int:
    from uniemo.train.base import train_base, training_seconds

    cfg = fields_from(BaseConfig, args)
    info = train_base(args.data, args.out, cfg)
    minutes = training_seconds(info) / 60
    print(
        f"stand-in models written to {args.out} (clip/: CLIPModel, sd/: StableDiffusionPipeline) after "
        f"{minutes:.1f} min of training"
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from uniemo.pipelines.generation import UniEmoPipeline

    if not args.emotion and not args.reference:
        raise UniEmoError("give --emotion NAME (or NAME=WEIGHT, repeated) or --reference IMAGE")
    pipe = UniEmoPipeline.from_pretrained(args.checkpoint, args.device, args.diffusion, args.dtype)
    if args.emotion == ["all"]:  # one folder per emotion: the layout `uniemo evaluate generation` reads
        total = sum(_generate_one(pipe, args, [emotion], Path(args.out) / emotion) for emotion in pipe.classes)
        print(f"wrote {total} image(s) to {args.out}/<emotion>/ ({len(pipe.classes)} emotions)")
        return 0
    count = _generate_one(pipe, args, args.emotion or None, Path(args.out))
    print(f"wrote {count} image(s) and settings.json to {args.out}")
    return 0


def _generate_one(pipe, args: argparse.Namespace, emotion: list[str] | None, out: Path) -> int:
    from uniemo.pipelines.generation import save_generation

    sampling = dataclasses.asdict(fields_from(SamplingConfig, args))
    output = pipe(emotion, args.prompt, args.reference, num_images=args.num_images, **sampling)
    stem = "reference" if args.reference else "-".join(output.settings.emotions)
    return len(save_generation(output, out, stem, {"checkpoint": str(args.checkpoint)}))


def _collect_images(inputs: list[str]) -> list[Path]:
    from uniemo.data.images import is_image_file

    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)))
        elif p.exists():
            paths.append(p)
        else:
            raise UniEmoError(f"no such file or directory: {item}")
    if not paths:
        raise UniEmoError(f"no image files found in {', '.join(inputs)}")
    return paths


def cmd_classify(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from uniemo.pipelines.classifier import EmotionClassifier

    if args.top_k is not None and args.top_k < 1:
        raise UniEmoError("--top-k must be at least 1")
    clf = EmotionClassifier.from_pretrained(args.checkpoint)
    paths = _collect_images(args.inputs)
    top_k = args.top_k if args.top_k else (None if args.json else 3)
    workers = args.workers
    if workers is None:  # leave two cores to torch's threads; decoding workers only where cores are left over
        workers = max(0, min(4, (os.cpu_count() or 2) - 2))
    if len(paths) <= args.batch_size:
        workers = 0  # starting a process costs more than decoding a few images
    failed = 0
    for path, pred, error in clf.predict_files(paths, top_k, args.batch_size, workers, progress=len(paths) > 1):
        if pred is None:
            failed += 1
            tqdm.write(f"warning: skipped: {error}", file=sys.stderr)
        elif args.json:
            tqdm.write(json.dumps(pred.to_dict()), file=sys.stdout)
        else:
            others = ", ".join(f"{n} {v:.2f}" for n, v in pred.top[1:])
            line = f"{path}: {pred.label} {pred.probability:.2f}" + (f" ({others})" if others else "")
            if pred.sentiment:
                mood = max(pred.sentiment, key=pred.sentiment.get)
                line += f" · {mood} {pred.sentiment[mood]:.2f}"
            tqdm.write(line, file=sys.stdout)
    if failed == len(paths):
        raise UniEmoError(f"none of the {len(paths)} input(s) could be read as an image")
    return 0


def cmd_train_emo_classifier(args: argparse.Namespace) -> int:
    from uniemo.metrics.networks import train_emotion_classifier

    cfg = fields_from(EmoClassifierConfig, args)
    result = train_emotion_classifier(args.data, args.clip, args.out, **dataclasses.asdict(cfg))
    accuracies = ", ".join(
        f"{name} accuracy {result[key]:.2%}"
        for name, key in (("val", "val_accuracy"), ("test", "test_accuracy"))
        if result[key] is not None
    )
    print(
        f"Emo-A classifier on {args.clip}'s image embeddings of {result['num_train']} training images: "
        f"{accuracies or 'no val/test split'}; saved to {result['out']}"
        + (f" ({result['skipped']} unreadable image(s) skipped)" if result["skipped"] else "")
    )
    return 0


def cmd_evaluate_generation(args: argparse.Namespace) -> int:
    from uniemo.metrics.suite import GenerationEvaluator, format_report, load_generated, read_generated

    cfg = fields_from(GenerationMetricsConfig, args)
    suite = GenerationEvaluator(cfg, args.reference)
    images, bad = load_generated(read_generated(args.images, suite.classes))
    report = suite.evaluate(images)
    report["images"] = str(args.images)
    report["unreadable"] = bad
    if args.out:
        from uniemo.checkpoint import write_atomic

        write_atomic(args.out, json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['num_images']} generated images of {len(report['per_emotion_n'])} emotions in {args.images}")
    print(format_report(report))
    if bad:
        print(f"skipped {len(bad)} unreadable image(s), e.g. {bad[0]}")
    return 0


def cmd_evaluate_conditioning(args: argparse.Namespace) -> int:
    from uniemo.train.conditioning import diagnose_checkpoint, format_conditioning

    cfg = fields_from(ConditioningProbeConfig, args)
    report = diagnose_checkpoint(args.checkpoint, args.data, **dataclasses.asdict(cfg))
    print(json.dumps(report) if args.json else format_conditioning(report))
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from uniemo.config import FeedbackRunConfig, load_config
    from uniemo.train.feedback import format_feedback_report, run_feedback

    cfg = load_config(resolve_config_path(args.config), args.overrides, cls=FeedbackRunConfig)
    report = run_feedback(cfg)
    print(format_feedback_report(report))
    print(f"report: {cfg.output_dir}/report.json and report.md")
    return 0


def cmd_evaluate_understanding(args: argparse.Namespace) -> int:
    from uniemo.evaluate import evaluate_understanding

    cfg = fields_from(UnderstandingEvalConfig, args)
    result = evaluate_understanding(args.checkpoint, args.data, out_dir=args.out, **dataclasses.asdict(cfg))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['num_samples']} images of {result['dataset']} [{result['split']}] ({result['mode']})")
    print(f"top-1 accuracy: {result['accuracy']:.2%}")
    if result["sentiment_accuracy"] is not None:
        print(f"2-class accuracy: {result['sentiment_accuracy']:.2%}")
    for name, acc in result["per_class_accuracy"].items():
        print(f"  {name:<12} " + ("no images" if acc is None else f"{acc:.2%}"))
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable image(s), e.g. {result['skipped'][0]}")
    print(f"confusion matrix: {result['confusion_png']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from uniemo.demo import run_demo, summary_lines

    print("\n" + "\n".join(summary_lines(run_demo(Path(args.out), fast=args.fast, force=args.force))))
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from uniemo.pipelines.classifier import EmotionClassifier
    from uniemo.visualize import attention_maps, save_attention_figure

    clf = EmotionClassifier.from_pretrained(args.checkpoint)
    maps = attention_maps(clf, Path(args.image))
    path = save_attention_figure(maps, args.out, title=Path(args.image).name)
    print(f"{args.image}: {maps.prediction.label} {maps.prediction.probability:.2f}; attention maps in {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from uniemo.app import serve
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] != "gradio":
            raise
        raise UniEmoError("the web app needs gradio, which is not installed: pip install 'uniemo[app]'") from None
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, revision=args.revision)
    return 0


def cmd_push_to_hub(args: argparse.Namespace) -> int:
    from uniemo.hub import push_to_hub

    url = push_to_hub(
        args.checkpoint, args.repo_id, evaluations=args.evaluation, revision=args.revision, private=args.private
    )
    print(f"published {args.checkpoint} as {args.repo_id}: {url}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from uniemo.models.factory import list_models, model_preset

    for name in list_models():
        print(f"{name:<18} {model_preset(name)['description']}")
    return 0


def cmd_architectures(args: argparse.Namespace) -> int:
    from uniemo.models.factory import list_architectures

    print("\n".join(list_architectures()))
    return 0


# --------------------------------------------------------------------------------------------------------------
# The parser: one function per command, each option's default taken from the library's config where it has one.


def _add_checkpoint(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--checkpoint", required=True, help=help)
    p.add_argument("--revision", default=None, help="a hub id's branch, tag or commit (default: main)")


def _add_synth(sub: Any) -> None:
    from uniemo.data.synth import SynthConfig

    p = sub.add_parser("synth", help="write the built-in dataset (EmoSet layout)")
    p.add_argument("dir", help="output directory")
    add_fields(p, SynthConfig)
    p.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    p.set_defaults(func=cmd_synth)


def _add_train_stage(stages: Any, name: str, help: str, example: str, override: str, func: Any) -> None:
    t = stages.add_parser(name, help=help)
    t.add_argument("--config", required=True, help=f"YAML file or built-in config name (e.g. {example})")
    t.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last/ state")
    t.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {override}")
    t.set_defaults(func=func)


def _add_train(sub: Any) -> None:
    stages = sub.add_parser("train", help="train a stage").add_subparsers(dest="stage", required=True, metavar="STAGE")
    what = "stage 1: the expert-query emotion classifier"
    _add_train_stage(stages, "understanding", what, "tiny, emoset-vitb32", "optim.lr=3e-4", cmd_train_understanding)
    what = "stage 2: joint understanding + emotion-conditioned generation"
    _add_train_stage(stages, "joint", what, "tiny-joint, emoset-sd15", "joint.alpha=hard", cmd_train_joint)

    t = stages.add_parser("base", help="pre-train the stand-in CLIP and Stable Diffusion on the built-in dataset")
    t.add_argument("data", help="the built-in dataset (`uniemo synth DATA`)")
    t.add_argument("--out", required=True, help="output directory (clip/ and sd/ go there)")
    add_fields(t, BaseConfig)
    t.set_defaults(func=cmd_train_base)

    t = stages.add_parser("emo-classifier", help="the Emo-A classifier: a head on CLIP image embeddings (METHOD §7)")
    t.add_argument("data", help="dataset directory; the head trains on its training split")
    t.add_argument("--clip", required=True, help="pretrained CLIP: hub id, directory, or uniemo-standin")
    t.add_argument("--out", required=True, help="output directory")
    add_fields(t, EmoClassifierConfig)
    t.set_defaults(func=cmd_train_emo_classifier)


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate emotion-evoking images from a joint checkpoint")
    _add_checkpoint(p, "a joint run or checkpoint directory, or a hub id (owner/name)")
    p.add_argument(
        "--emotion",
        action="append",
        default=[],
        metavar="NAME[=W]",
        help="emotion to evoke; repeat with weights to fuse (--emotion amusement=0.5 --emotion awe=0.5); "
        "'all': every emotion, each into <out>/<emotion>/",
    )
    p.add_argument("--prompt", default=None, help="content to transfer the emotion onto (e.g. 'a bench')")
    p.add_argument("--reference", default=None, metavar="IMAGE", help="evoke this image's feeling instead")
    p.add_argument("--num-images", type=int, default=4, help="images to make (default 4)")
    add_fields(p, SamplingConfig)
    p.add_argument("--diffusion", default=None, help="use this diffusion model instead of the stored one")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu … (default: cuda when available)")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="the diffusion model's precision (default: float16 on a GPU, float32 on the CPU)",
    )
    p.add_argument("--out", required=True, help="output directory for the PNGs and settings.json")
    p.set_defaults(func=cmd_generate)


def _add_classify(sub: Any) -> None:
    p = sub.add_parser("classify", help="predict the emotion of images")
    _add_checkpoint(p, "a checkpoint or run directory, or a hub id (owner/name)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--top-k", type=int, default=None, help="emotions to list per image (default 3; all with --json)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--workers", type=int, default=None, help="image-decoding processes (default: CPU cores beyond two, at most 4)"
    )
    p.set_defaults(func=cmd_classify)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model")
    kinds = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    e = kinds.add_parser("understanding", help="accuracy, per-class and 2-class accuracy, confusion matrix")
    _add_checkpoint(e, "a checkpoint or run directory, or a hub id (owner/name)")
    e.add_argument("--data", required=True, help="dataset directory (EmoSet, FI, EmotionROI, Twitter, folders)")
    add_fields(e, UnderstandingEvalConfig)
    e.add_argument("--out", default=None, help="where report.json, confusion.png and predictions.csv go")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object")
    e.set_defaults(func=cmd_evaluate_understanding)

    e = kinds.add_parser("generation", help="FID, LPIPS, Emo-A, Sem-C, Sem-D of generated images (METHOD §7)")
    e.add_argument("--images", required=True, help="generated images in <emotion>/ sub-folders")
    e.add_argument("--reference", required=True, help="the real dataset (FID reference, Sem-C class names)")
    add_fields(e, GenerationMetricsConfig)
    e.add_argument("--out", default=None, help="also write the report to this JSON file")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object")
    e.set_defaults(func=cmd_evaluate_generation)

    e = kinds.add_parser("conditioning", help="does the UNet use c? L(θ) with own, shuffled, mean c, empty prompt")
    _add_checkpoint(e, "a finished joint run or checkpoint, or a hub id (owner/name)")
    e.add_argument("--data", required=True, help="the dataset it was trained on")
    add_fields(e, ConditioningProbeConfig)
    e.add_argument("--json", action="store_true", help="print the report as one JSON object")
    e.set_defaults(func=cmd_evaluate_conditioning)


def _add_tools(sub: Any) -> None:
    """feedback, demo, attention, serve, architectures."""
    p = sub.add_parser("feedback", help="explicit feedback (Alg. 1): generate, filter, retrain, compare")
    p.add_argument("--config", required=True, help="YAML file or built-in config name (e.g. tiny-feedback)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. feedback.rho=0.3")
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("demo", help="the whole pipeline on the built-in dataset")
    p.add_argument("--out", default="demo-output", help="output directory (default demo-output)")
    p.add_argument("--fast", action="store_true", help="a short run (the tests use it)")
    p.add_argument("--force", action="store_true", help="redo finished stages")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("attention", help="where the scene and object queries look in an image (paper Fig. 9)")
    _add_checkpoint(p, "a checkpoint or run directory, or a hub id (owner/name)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--out", required=True, help="PNG to write")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("serve", help="a web app: read the emotion of images, create emotion-evoking images")
    _add_checkpoint(p, "a joint checkpoint (both tabs) or a stage-1 one (Understand): a directory or a hub id")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cuda, cpu … (default: cuda when available)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("push-to-hub", help="publish a checkpoint on the Hugging Face hub with a generated model card")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint or run directory (its best/)")
    p.add_argument("repo_id", metavar="REPO_ID", help="the hub repository, owner/name (created when missing)")
    p.add_argument(
        "--evaluation",
        action="append",
        default=[],
        metavar="REPORT",
        help="report.json of `uniemo evaluate understanding` or `evaluate generation --out`: its figures, with N, "
        "go in the card (repeatable)",
    )
    p.add_argument("--revision", default=None, help="the branch to push to (default: main)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=cmd_push_to_hub)

    p = sub.add_parser("models", help="list the model presets (a CLIP backbone and its expert queries)")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("architectures", help="list the built-in CLIP architectures (random init, for tests)")
    p.set_defaults(func=cmd_architectures)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uniemo", description="UniEmo: emotion understanding and generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"uniemo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_synth, _add_train, _add_generate, _add_classify, _add_evaluate, _add_tools):
        add(sub)
    return parser


def _fetch_checkpoint(args: argparse.Namespace) -> None:
    """A hub id's checkpoint, brought into the hub cache (or read from it offline), in place of the id."""
    from uniemo.checkpoint import is_hub_id, resolve_checkpoint

    if args.revision is not None or is_hub_id(args.checkpoint):
        args.checkpoint = str(resolve_checkpoint(args.checkpoint, args.revision))


def _one_line(err: Exception) -> str:
    """The message of a user error; one raised in a DataLoader worker arrives with the worker's traceback in its
    text (torch re-raises it so), of which only the error's own last line is the message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith("uniemo.errors.") and ": " in last else last
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    tune_allocator()
    try:
        _quiet_loading_bars(args.command)
        if args.command not in ("push-to-hub", "serve") and getattr(args, "checkpoint", None) is not None:
            _fetch_checkpoint(args)
        return args.func(args)
    except UniEmoError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Leaves a distributed run cleanly: processes that exit with their process group still open can hang in its
    teardown (seen once with two gloo processes, after the run had finished)."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
