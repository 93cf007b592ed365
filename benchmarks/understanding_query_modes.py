"""Compares the query modes of stage 1 on the built-in dataset: same data, seed, model size and step budget.

    python benchmarks/understanding_query_modes.py [--steps 600] [--backbone tiny-clip] [--out runs/bench-query-modes]

``--backbone tiny-clip`` (the default) trains the tiny CLIP from scratch (backbone at the full lr), as the
numbers in issue 2's note were measured; ``--backbone uniemo-standin`` starts from the shipped stand-in CLIP.

Prints a table and one JSON line: test accuracy of `none` (plain CLIP fine-tuning), `single_step` and
`multi_stage` (the method), the time per training step, and each mode's step time relative to `none` (run in
the same process, one after another). The numbers are on the built-in synthetic dataset, not on EmoSet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default="runs/bench-query-modes")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--backbone", default="tiny-clip", help="tiny-clip (from scratch) or uniemo-standin")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from uniemo.config import load_config, resolve_config_path
    from uniemo.data.synth import SynthConfig, write_synthetic_dataset
    from uniemo.evaluate import evaluate_understanding
    from uniemo.train.understanding import train_understanding

    out = Path(args.out)
    data = out / "data"
    if not (data / "info.json").is_file():
        write_synthetic_dataset(data, SynthConfig(seed=args.seed), overwrite=True)
    rows = []
    for mode in ("none", "single_step", "multi_stage"):
        run = out / mode
        if (run / "summary.json").is_file():
            summary = json.loads((run / "summary.json").read_text())
        else:
            overrides = [
                f"data.root={data}",
                f"output_dir={run}",
                f"model.query_mode={mode}",
                f"optim.max_steps={args.steps}",
                f"seed={args.seed}",
                "eval_every=100",
                f"model.backbone={args.backbone}",
                f"optim.backbone_lr_scale={1.0 if args.backbone == 'tiny-clip' else 0.1}",
            ]
            summary = train_understanding(load_config(resolve_config_path(args.config), overrides)).__dict__
        result = evaluate_understanding(run, data, split="test", progress=False)
        rows.append(
            {
                "mode": mode,
                "test_accuracy": result["accuracy"],
                "test_2class": result["sentiment_accuracy"],
                "best_val_accuracy": summary["best_val_accuracy"],
                "ms_per_step": summary["seconds_per_step"] * 1e3,
                "steps": summary["steps"],
            }
        )
    base = rows[0]["ms_per_step"]
    print(f"\n{'mode':<12} {'test acc':>9} {'2-class':>8} {'val acc':>8} {'ms/step':>8} {'× none':>7}")
    for r in rows:
        r["step_time_vs_none"] = r["ms_per_step"] / base
        print(
            f"{r['mode']:<12} {r['test_accuracy']:>9.2%} {r['test_2class']:>8.2%} {r['best_val_accuracy']:>8.2%} "
            f"{r['ms_per_step']:>8.0f} {r['step_time_vs_none']:>7.2f}"
        )
    print("(built-in synthetic dataset, not EmoSet; chance is 12.5 %)")
    print(json.dumps({"benchmark": "understanding_query_modes", "steps": args.steps, "seed": args.seed, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
