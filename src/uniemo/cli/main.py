"""The ``uniemo`` command line. Heavy libraries are imported inside each command, so ``--help`` is instant.

User errors (bad paths, configs, data, checkpoints) print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from uniemo.config import resolve_config_path
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

    cfg = SynthConfig(
        train=args.train,
        val=args.val,
        test=args.test,
        resolution=args.resolution,
        seed=args.seed,
        label_noise=args.label_noise,
    )
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
    from uniemo.train.base import BaseConfig, train_base

    cfg = BaseConfig(
        seed=args.seed,
        clip_steps=args.clip_steps,
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        unet_lr=args.unet_lr,
        text_steps=args.text_steps,
        text_lr=args.text_lr,
        high_noise_share=args.high_noise_share,
        threads=args.threads,
        init=args.continue_from,
    )
    info = train_base(args.data, args.out, cfg)
    minutes = sum(info[k]["seconds"] for k in ("clip", "vae", "unet")) / 60
    print(
        f"stand-in models written to {args.out} (clip/: CLIPModel, sd/: StableDiffusionPipeline) after "
        f"{minutes:.1f} min of training"
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from uniemo.pipelines.generation import UniEmoPipeline

    if not args.emotion and not args.reference:
        raise UniEmoError("give --emotion NAME (or NAME=WEIGHT, repeated) or --reference IMAGE")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
        args.dtype or ("float16" if device.startswith("cuda") else "float32")
    ]
    pipe = UniEmoPipeline.from_pretrained(args.checkpoint, device=device, diffusion=args.diffusion, dtype=dtype)
    if args.emotion == ["all"]:  # one folder per emotion: the layout `uniemo evaluate generation` reads
        total = 0
        for emotion in pipe.classes:
            args.emotion = [emotion]
            total += _generate_one(pipe, args, Path(args.out) / emotion)
        print(f"wrote {total} image(s) to {args.out}/<emotion>/ ({len(pipe.classes)} emotions)")
        return 0
    count = _generate_one(pipe, args, Path(args.out))
    print(f"wrote {count} image(s) and settings.json to {args.out}")
    return 0


def _generate_one(pipe, args: argparse.Namespace, out: Path) -> int:
    from uniemo.pipelines.generation import save_generation

    output = pipe(
        emotion=args.emotion or None,
        prompt=args.prompt,
        reference=args.reference,
        num_images=args.num_images,
        steps=args.steps,
        guidance=args.guidance,
        scheduler=args.scheduler,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        diversity=args.diversity,
    )
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

    result = train_emotion_classifier(
        args.data,
        args.clip,
        args.out,
        data_format=args.format,
        epochs=args.epochs,
        hidden=args.hidden,
        lr=args.lr,
        seed=args.seed,
        cache_dir=args.cache,
        device=args.device,
    )
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
    from uniemo.metrics.suite import (
        GenerationEvaluator,
        GenerationMetricsConfig,
        format_report,
        load_generated,
        read_generated,
    )

    cfg = GenerationMetricsConfig(
        emo_classifier=args.emo_classifier,
        clip=args.clip,
        fid_network=args.fid_network,
        inception_weights=args.inception_weights,
        lpips_alexnet=args.lpips_alexnet,
        lpips_linear=args.lpips_linear,
        sem_classes=args.sem_classes,
        pairs=args.pairs,
        seed=args.seed,
        split=args.split,
        legacy=args.legacy,
        skip=tuple(args.skip),
        device=args.device,
    )
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

    report = diagnose_checkpoint(
        args.checkpoint, args.data, args.split, args.images, args.draws, args.seed, device=args.device
    )
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

    result = evaluate_understanding(
        args.checkpoint,
        args.data,
        split=args.split,
        data_format=args.format,
        fold=args.fold,
        out_dir=args.out,
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
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
    from uniemo.demo import run_demo

    run_demo(Path(args.out), fast=args.fast, force=args.force)
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
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device)
    return 0


def cmd_architectures(args: argparse.Namespace) -> int:
    from uniemo.models.factory import list_architectures

    print("\n".join(list_architectures()))
    return 0


# --------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uniemo", description="UniEmo: emotion understanding and generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write the built-in dataset (EmoSet layout)")
    p.add_argument("dir", help="output directory")
    p.add_argument("--train", type=int, default=4000, help="training images (default 4000)")
    p.add_argument("--val", type=int, default=500, help="validation images (default 500)")
    p.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-noise", type=float, default=0.05, help="fraction of flipped labels (default 0.05)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a stage")
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    t = stages.add_parser("understanding", help="stage 1: the expert-query emotion classifier")
    t.add_argument("--config", required=True, help="YAML file or built-in config name (e.g. tiny, emoset-vitb32)")
    t.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last/ state")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-4")
    t.set_defaults(func=cmd_train_understanding)

    t = stages.add_parser("joint", help="stage 2: joint understanding + emotion-conditioned generation")
    t.add_argument("--config", required=True, help="YAML file or built-in config name (e.g. tiny-joint, emoset-sd15)")
    t.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last/ state")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. joint.alpha=hard")
    t.set_defaults(func=cmd_train_joint)

    t = stages.add_parser("base", help="pre-train the stand-in CLIP and Stable Diffusion on the built-in dataset")
    t.add_argument("data", help="the built-in dataset (`uniemo synth DATA`)")
    t.add_argument("--out", required=True, help="output directory (clip/ and sd/ go there)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--clip-steps", type=int, default=1200, help="contrastive CLIP steps (default 1200)")
    t.add_argument("--vae-steps", type=int, default=1000, help="autoencoder steps (default 1000)")
    t.add_argument("--unet-steps", type=int, default=4000, help="UNet steps (default 4000)")
    t.add_argument("--unet-lr", type=float, default=4e-4, help="UNet peak learning rate (default 4e-4)")
    t.add_argument(
        "--high-noise-share",
        type=float,
        default=0.0,
        help="share of each UNet batch drawn from the noisiest 40 %% of the timesteps (default 0: uniform)",
    )
    t.add_argument(
        "--text-steps",
        type=int,
        default=0,
        help="SD's text encoder: a copy of the CLIP trained this many steps on hard negatives (default 0: the "
        "CLIP's text tower, or the continued stand-in's own encoder)",
    )
    t.add_argument("--text-lr", type=float, default=3e-4, help="its peak learning rate (default 3e-4)")
    t.add_argument(
        "--continue-from",
        default=None,
        metavar="DIR",
        help="keep this stand-in's CLIP, VAE and SD text encoder and train its UNet --unet-steps more",
    )
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    t.set_defaults(func=cmd_train_base)

    t = stages.add_parser("emo-classifier", help="the Emo-A classifier: a head on CLIP image embeddings (METHOD §7)")
    t.add_argument("data", help="dataset directory; the head trains on its training split")
    t.add_argument("--clip", required=True, help="pretrained CLIP: hub id, directory, or uniemo-standin")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--format", default="auto", help="dataset layout (default: detected)")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--hidden", type=int, default=512, help="hidden width of the two-layer head (default 512)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--cache", default=None, help="feature cache directory (default: <out>-feature-cache)")
    t.add_argument("--device", default="cpu")
    t.set_defaults(func=cmd_train_emo_classifier)

    p = sub.add_parser("generate", help="generate emotion-evoking images from a joint checkpoint")
    p.add_argument("--checkpoint", required=True, help="joint run or checkpoint directory")
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
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's, else 25)")
    p.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance (default: the checkpoint's, else 7.5)"
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="dpm++ (default; the shipped stand-in's own DDPM for it), unipc, ddim, ddpm, pndm, euler, euler-a, or "
        "'model' (the diffusion model's own; the paper's setting is --scheduler model --steps 50)",
    )
    p.add_argument("--negative-prompt", default="")
    p.add_argument(
        "--diversity", type=float, default=1.0, help="scale of the emotion space's spread (1: as trained; 0: its mean)"
    )
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    p.add_argument("--diffusion", default=None, help="use this diffusion model instead of the stored one")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu … (default: cuda when available)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="the diffusion model's precision (default: float16 on a GPU, float32 on the CPU)",
    )
    p.add_argument("--out", required=True, help="output directory for the PNGs and settings.json")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("classify", help="predict the emotion of images")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--top-k", type=int, default=None, help="emotions to list per image (default 3; all with --json)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--workers", type=int, default=None, help="image-decoding processes (default: CPU cores beyond two, at most 4)"
    )
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("evaluate", help="evaluate a model")
    kinds = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    e = kinds.add_parser("understanding", help="accuracy, per-class and 2-class accuracy, confusion matrix")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True, help="dataset directory (EmoSet, FI, EmotionROI, Twitter, folders)")
    e.add_argument("--split", default="test")
    e.add_argument("--format", default="auto", help="dataset layout (default: detected)")
    e.add_argument("--fold", type=int, default=0, help="cross-validation fold (Twitter)")
    e.add_argument("--out", default=None, help="where report.json and confusion.png go")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (default 0)")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object")
    e.set_defaults(func=cmd_evaluate_understanding)
    e = kinds.add_parser("generation", help="FID, LPIPS, Emo-A, Sem-C, Sem-D of generated images (METHOD §7)")
    e.add_argument("--images", required=True, help="generated images in <emotion>/ sub-folders")
    e.add_argument("--reference", required=True, help="the real dataset (FID reference, Sem-C class names)")
    e.add_argument("--split", default="test", help="FID reference split (default test)")
    e.add_argument("--emo-classifier", default=None, help="Emo-A classifier (`uniemo train emo-classifier`)")
    e.add_argument("--clip", default=None, help="CLIP for Sem-C/Sem-D (default: the Emo-A classifier's)")
    e.add_argument("--fid-network", default="inception", choices=["inception", "clip"])
    e.add_argument("--inception-weights", default=None, help="torch-fidelity's Inception-V3 weight file")
    e.add_argument("--lpips-alexnet", default=None, help="torchvision's AlexNet weight file for LPIPS")
    e.add_argument("--lpips-linear", default=None, help="LPIPS' linear-layer file (v0.1 alex.pth)")
    e.add_argument("--sem-classes", default="dataset", help="'dataset' or SCENES.txt,OBJECTS.txt (class names)")
    e.add_argument("--pairs", type=int, default=1000, help="image pairs per emotion for LPIPS/Sem-D (default 1000)")
    e.add_argument("--seed", type=int, default=0, help="seed of the pairs")
    e.add_argument("--legacy", action="store_true", help="EmoGen's protocol (whole-dataset FID reference, …)")
    e.add_argument(
        "--skip", action="append", default=[], metavar="METRIC", help="leave out fid, lpips, emo-a, sem-c or sem-d"
    )
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", default=None, help="also write the report to this JSON file")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object")
    e.set_defaults(func=cmd_evaluate_generation)
    e = kinds.add_parser("conditioning", help="does the UNet use c? L(θ) with own, shuffled, mean c, empty prompt")
    e.add_argument("--checkpoint", required=True, help="a finished joint run or checkpoint")
    e.add_argument("--data", required=True, help="the dataset it was trained on")
    e.add_argument("--split", default="val", help="held-out images to probe with (default val)")
    e.add_argument("--images", type=int, default=128, help="probe images, taken evenly across emotions")
    e.add_argument("--draws", type=int, default=6, help="fixed noise/timestep draws per image")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object")
    e.set_defaults(func=cmd_evaluate_conditioning)

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
    p.add_argument("--checkpoint", required=True)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--out", required=True, help="PNG to write")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("serve", help="a web app: read the emotion of images, create emotion-evoking images")
    p.add_argument("--checkpoint", required=True, help="a joint checkpoint (both tabs) or a stage-1 one (Understand)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cuda, cpu … (default: cuda when available)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("architectures", help="list the built-in (random-init) CLIP architectures")
    p.set_defaults(func=cmd_architectures)
    return parser


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
