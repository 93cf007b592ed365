"""Emo-A of generated images on the built-in dataset with the stand-in Stable Diffusion: the full method against
the Table V ablations (L_cond = ``ce`` / ``none``) and without α, same stage-1 model, data, seed and budget.
"Emo-A" here is the issue's definition: the fixed stage-1 model (trained before, and not changed by, any joint
run) reads the generated images; METHOD §7's Emo-A (a head on CLIP image features) comes with the metrics suite.

    python benchmarks/generation_emotion_accuracy.py [--steps 400] [--per-emotion 25] [--out runs/bench-generation]

Each variant is a joint training run (configs/tiny-joint.yaml) from one stage-1 model trained on the stand-in
CLIP; its images (``--per-emotion`` per emotion, seeds 0…) are classified by that same, fixed stage-1 model
(the judge), and Emo-A is the fraction classified as the requested emotion (chance 12.5 %). For scale, the
judge's accuracy on real test images seen at the generation resolution (downsampled to 32 px, as the generated
images are) is printed too: no generator can be read better than the real images it imitates. Also printed:
the time per joint training step and the understanding accuracy before and after joint training.
The numbers are on the built-in synthetic dataset with a tiny stand-in model, not on EmoSet with SD 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {
    "full": [],
    "ce": ["joint.condition_loss=ce"],
    "none": ["joint.condition_loss=none"],
    "no-alpha": ["joint.alpha=none"],
}


def judge_on_real(judge, data: Path, size: int) -> float:
    """The judge's accuracy on the real test images seen at ``size`` px (the generated images' resolution)."""
    from PIL import Image

    from uniemo.data.datasets import open_dataset
    from uniemo.data.images import load_image

    samples = open_dataset(data).split("test")
    images = [load_image(s.path).resize((size, size), Image.Resampling.BOX) for s in samples]
    probs = judge.probabilities(images)
    return float((probs.argmax(1).numpy() == [s.label for s in samples]).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="joint training steps per variant")
    parser.add_argument("--stage1-steps", type=int, default=600)
    parser.add_argument("--per-emotion", type=int, default=25, help="generated images per emotion")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--scheduler", default=None, help="a name of SCHEDULERS (default: the pipeline's default)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="runs/bench-generation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from uniemo.config import JointRunConfig, load_config, resolve_config_path
    from uniemo.data.synth import SynthConfig, write_synthetic_dataset
    from uniemo.pipelines.classifier import EmotionClassifier
    from uniemo.pipelines.generation import UniEmoPipeline, emotion_accuracy
    from uniemo.plotting import image_grid
    from uniemo.train.joint import train_joint
    from uniemo.train.understanding import train_understanding

    out = Path(args.out)
    data = out / "data"
    if not (data / "info.json").is_file():
        write_synthetic_dataset(data, SynthConfig(seed=args.seed), overwrite=True)
    stage1 = out / "stage1"
    if not (stage1 / "summary.json").is_file():
        cfg = load_config(
            resolve_config_path("tiny"),
            [f"data.root={data}", f"output_dir={stage1}", f"optim.max_steps={args.stage1_steps}", f"seed={args.seed}"],
        )
        train_understanding(cfg)
    judge = EmotionClassifier.from_pretrained(stage1)
    classes = judge.classes
    ceiling = judge_on_real(judge, data, 32)
    rows = []
    for name in args.variants:
        run = out / name
        fresh = (run / "summary.json").is_file() and json.loads((run / "summary.json").read_text())[
            "steps"
        ] == args.steps
        if not fresh:
            import shutil

            shutil.rmtree(run, ignore_errors=True)
            overrides = [
                f"data.root={data}",
                f"output_dir={run}",
                f"joint.understanding={stage1}",
                f"optim.max_steps={args.steps}",
                f"seed={args.seed}",
                *VARIANTS[name],
            ]
            train_joint(load_config(resolve_config_path("tiny-joint"), overrides, JointRunConfig))
        summary = json.loads((run / "summary.json").read_text())
        pipe = UniEmoPipeline.from_pretrained(run)
        start = time.perf_counter()
        sampling = {
            "steps": args.sample_steps,
            "guidance": args.guidance,
            "scheduler": args.scheduler,
            "seed": args.seed,
        }
        result, images = emotion_accuracy(pipe, judge, args.per_emotion, **sampling)
        image_grid([row[:8] for row in images], classes, out / f"samples-{name}.png")
        rows.append(
            {
                "variant": name,
                "emo_a": result["emo_a"],
                "per_emotion": result["per_emotion"],
                "joint_ms_per_step": 1000 * summary["seconds_per_step"],
                "accuracy_before": summary["accuracy_before"],
                "accuracy_after": summary["accuracy_after"],
                "generation_seconds": time.perf_counter() - start,
            }
        )
    print(f"judge (stage-1 model) on real test images at 32 px: {ceiling:.1%}; chance {1 / len(classes):.1%}")
    print(f"{'variant':<10} {'Emo-A':>7} {'ms/step':>8} {'acc before':>11} {'acc after':>10}")
    for r in rows:
        print(
            f"{r['variant']:<10} {r['emo_a']:>7.1%} {r['joint_ms_per_step']:>8.0f} "
            f"{r['accuracy_before']:>11.1%} {r['accuracy_after']:>10.1%}"
        )
    print(json.dumps({"judge_on_real_32px": ceiling, "n_per_emotion": args.per_emotion, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
