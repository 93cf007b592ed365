"""Cost of the expert queries: ExpertQueryCLIP (multi_stage) vs transformers' plain CLIPVisionModel.

    python benchmarks/understanding_throughput.py [--reps 7] [--sizes tiny-clip clip-vit-base-patch32-arch]

Same weights, shapes and threads, one process; the two models are timed in alternation and the median of
``--reps`` repetitions is kept (these machines are noisy). For each size it prints forward (inference) and
train-step (forward + backward + AdamW) images/s of both, the time ratio, and the ratio of their forward FLOPs
(counted by ``torch.utils.flop_counter``): the extra query tokens and Interactive Blocks. Ratios are per
repetition (min / median / max). Goal (issue 6): time ratio ≤ 1.1 × FLOP ratio. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: (architecture, batch size, queries per set): the demo's tiny model and ViT-B/32 at 224 px with the paper's 32.
SIZES = {"tiny-clip": (64, 8), "clip-vit-base-patch32-arch": (8, 32), "micro-clip": (32, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--sizes", nargs="+", default=["tiny-clip", "clip-vit-base-patch32-arch"], choices=SIZES)
    args = parser.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from timing import alternate, fmt, ratio_spread, setup, spread

    env = setup()

    from uniemo.models.architecture import ExpertQueryConfig
    from uniemo.models.factory import load_clip_vision
    from uniemo.models.understanding import ExpertQueryCLIP

    class PlainClassifier(torch.nn.Module):
        """The baseline: CLIPVisionModel's pooled output and a linear head, nothing else."""

        def __init__(self, vision):
            super().__init__()
            self.vision, self.head = vision, torch.nn.Linear(vision.config.hidden_size, 8)

        def forward(self, x):
            return self.head(self.vision(pixel_values=x).pooler_output)

    def logits(model, x):
        out = model(x)
        return out if isinstance(out, torch.Tensor) else out.logits

    rows = []
    for name in args.sizes:
        batch, queries = SIZES[name]
        vision = load_clip_vision(name, seed=0)
        size = vision.config.image_size
        models = {
            "plain": PlainClassifier(vision),
            "queries": ExpertQueryCLIP(
                load_clip_vision(name, seed=0),
                ExpertQueryConfig(8, 64, num_scene_queries=queries, num_object_queries=queries),
            ),
        }
        x = torch.randn(batch, 3, size, size)
        y = torch.randint(0, 8, (batch,))
        flops = {}
        for key, model in models.items():
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                logits(model, x)
            flops[key] = counter.get_total_flops()
        optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}

        def infer(key, models=models, x=x):
            models[key].eval()
            with torch.no_grad():
                logits(models[key], x)

        def train(key, models=models, optimizers=optimizers, x=x, y=y):
            models[key].train()
            loss = torch.nn.functional.cross_entropy(logits(models[key], x), y)
            loss.backward()
            optimizers[key].step()
            optimizers[key].zero_grad(set_to_none=True)

        flop_ratio = flops["queries"] / flops["plain"]
        for work, fn in (("forward", infer), ("train", train)):
            times = alternate({key: (lambda key=key, fn=fn: fn(key)) for key in models}, args.reps)
            ratio = ratio_spread(times["queries"], times["plain"])
            rows.append(
                {
                    "size": name,
                    "work": work,
                    "batch": batch,
                    "image_size": size,
                    "queries_per_set": queries,
                    "plain_images_per_s": batch / spread(times["plain"])["median"],
                    "queries_images_per_s": batch / spread(times["queries"])["median"],
                    "plain_seconds": spread(times["plain"]),
                    "queries_seconds": spread(times["queries"]),
                    "time_ratio": ratio,
                    "flop_ratio": flop_ratio,
                    "time_over_flop_ratio": {k: v / flop_ratio for k, v in ratio.items()},
                }
            )
    print(f"\n{'size':<28} {'work':<8} {'plain img/s':>11} {'query img/s':>11} {'time ×':>18} {'FLOP ×':>7} {'÷':>18}")
    for r in rows:
        print(
            f"{r['size']:<28} {r['work']:<8} {r['plain_images_per_s']:>11.1f} {r['queries_images_per_s']:>11.1f} "
            f"{fmt(r['time_ratio']):>18} {r['flop_ratio']:>7.2f} {fmt(r['time_over_flop_ratio']):>18}"
        )
    print(f"(torch threads: {torch.get_num_threads()}, median (min–max) of {args.reps} repetitions; goal: ÷ ≤ 1.10)")
    print(json.dumps({"benchmark": "understanding_throughput", "reps": args.reps, **env, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
