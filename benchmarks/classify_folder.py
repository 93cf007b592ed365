"""Classifying a folder from disk: end-to-end images/s vs the model alone (decoding overlapped with compute).

    python benchmarks/classify_folder.py [--images 1000] [--size 375] [--arch tiny-clip] [--workers 0 1 2] [--reps 3]

Writes ``--images`` JPEGs of ``--size`` px (photo-like sizes by default) once, builds a random-init model of
``--arch``, then measures, in one process: the model alone on pre-processed tensors (the ceiling), and
``EmotionClassifier.predict_files`` (read, decode, resize, classify) with each worker count. Goal (issue 6):
end-to-end ≥ 0.8 × model-only. The contenders alternate within each repetition; ratios are per repetition
(min / median / max). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=375, help="shorter side of the JPEGs on disk")
    parser.add_argument("--arch", default="tiny-clip")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the JPEGs go (default: a temporary directory)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from timing import fmt, setup, spread

    env = setup()

    from uniemo.models.architecture import ExpertQueryConfig
    from uniemo.models.factory import load_clip_vision
    from uniemo.models.understanding import ExpertQueryCLIP
    from uniemo.pipelines.classifier import EmotionClassifier

    folder = Path(args.dir or tempfile.mkdtemp(prefix="uniemo-classify-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.images):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # smooth, photo-like content
            Image.fromarray(base).resize((args.size * 4 // 3, args.size), Image.Resampling.BICUBIC).save(
                path, quality=90
            )
        paths.append(path)

    model = ExpertQueryCLIP(
        load_clip_vision(args.arch), ExpertQueryConfig(8, 64, num_scene_queries=8, num_object_queries=8)
    )
    from uniemo.constants import EMOSET_EMOTIONS

    clf = EmotionClassifier(model, list(EMOSET_EMOTIONS))
    with Image.open(paths[0]) as im:
        pixels = clf.transform(im.convert("RGB")).unsqueeze(0).repeat(args.batch_size, 1, 1, 1)

    def model_only() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(0, len(paths), args.batch_size):
                clf.model(pixels)
        return len(paths) / (time.perf_counter() - start)

    def end_to_end(workers: int) -> float:
        start = time.perf_counter()
        n = sum(1 for _ in clf.predict_files(paths, batch_size=args.batch_size, num_workers=workers))
        assert n == len(paths)
        return len(paths) / (time.perf_counter() - start)

    contenders = {"model_only": model_only, **{f"workers_{w}": (lambda w=w: end_to_end(w)) for w in args.workers}}
    # Each contender returns images/s; the time of one pass is images / rate.
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    model_only()  # warm-up
    for _ in range(args.reps):
        for key, fn in contenders.items():
            rates[key].append(fn())
    rows = []
    for w in args.workers:
        key = f"workers_{w}"
        rows.append(
            {
                "workers": w,
                "end_to_end_images_per_s": spread(rates[key]),
                "ratio_to_model_only": spread([a / b for a, b in zip(rates[key], rates["model_only"], strict=True)]),
            }
        )
    ceiling = spread(rates["model_only"])
    print(f"\nmodel only ({args.arch}, batch {args.batch_size}): {fmt(ceiling, 1)} images/s")
    print(f"{'workers':>7} {'end-to-end img/s':>24} {'÷ model-only':>20}")
    for row in rows:
        print(
            f"{row['workers']:>7} {fmt(row['end_to_end_images_per_s'], 1):>24} {fmt(row['ratio_to_model_only']):>20}"
        )
    print(
        f"({args.images} JPEGs of {args.size * 4 // 3}×{args.size} px; torch threads {torch.get_num_threads()}; "
        f"{args.reps} repetitions, median (min–max); goal ≥ 0.80)"
    )
    print(
        json.dumps(
            {
                "benchmark": "classify_folder",
                "arch": args.arch,
                "images": args.images,
                "reps": args.reps,
                **env,
                "model_only_images_per_s": ceiling,
                "rows": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
