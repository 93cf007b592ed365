"""What does α weigh? The emotional correlation coefficients of a joint run, for the true emotion and the others.

    python benchmarks/alpha_weights.py RUN --data DATA [--split test] [--limit 512]

α_S = Σ_a π_S(a)·P(e* | a) (METHOD §3) says how strongly the scene held by an image's scene queries speaks for
the target emotion e* (α_O alike for objects). If α carries information, it is larger for an image's true
emotion than for the others, and above all larger than for the emotions of the other valence. For each test
image of the run's dataset this prints the mean α_S and α_O for e* = the image's emotion, = the other emotions
of its valence, = the emotions of the other valence, and the priors' mean row maxima (uniform: 1 / K). A
stand-in whose text tower tells the names apart gives α something to weigh; one whose names are alike gives
α_S ≈ α_O ≈ 1 / K for every e*. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a joint run (or a checkpoint directory of one)")
    parser.add_argument("--data", required=True, help="the dataset the run was trained on")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=512, help="at most this many images of the split")
    args = parser.parse_args()

    import torch

    from uniemo.constants import positive_mask
    from uniemo.data.datasets import open_dataset
    from uniemo.data.images import load_image
    from uniemo.pipelines.generation import UniEmoPipeline

    pipe = UniEmoPipeline.from_pretrained(args.run)
    model, classes = pipe.model, pipe.classes
    sign = positive_mask(classes)
    if sign is None:
        raise SystemExit("the run's classes have no valence (EmoSet's emotion names): nothing to compare against")
    samples = open_dataset(args.data).split(args.split)[: args.limit]
    k = len(classes)
    sums = {which: torch.zeros(2) for which in ("true", "same valence", "other valence")}
    with torch.no_grad():
        for start in range(0, len(samples), 64):
            batch = samples[start : start + 64]
            pixels = torch.stack([pipe.transform(load_image(s.path)) for s in batch])
            out = model.understanding(pixels)
            embeds = model.understanding.attribute_embeds(out.scene, out.object)
            for e in range(k):
                a_s, a_o = model.alphas(*embeds, torch.full((len(batch),), e, dtype=torch.long))
                for i, sample in enumerate(batch):
                    truth = sample.label
                    which = "true" if e == truth else "same valence" if sign[e] == sign[truth] else "other valence"
                    same = sum(sign[j] == sign[truth] for j in range(k))  # the true emotion included
                    count = 1 if which == "true" else same - 1 if which == "same valence" else k - same
                    sums[which] += torch.stack([a_s[i], a_o[i]]) / count
    n = len(samples)
    rows = {which: (v / n).tolist() for which, v in sums.items()}
    priors = {
        "scene": float(model.prior_scene.max(1).values.mean()),
        "object": float(model.prior_object.max(1).values.mean()),
    }
    print(f"{args.run}: α on {n} {args.split} images (uniform prior: {1 / k:.3f}; alpha mode {model.alpha_mode})")
    print(f"{'e*':<14} {'α_S':>7} {'α_O':>7}")
    for which, (a_s, a_o) in rows.items():
        print(f"{which:<14} {a_s:>7.3f} {a_o:>7.3f}")
    print(f"prior row maxima: scene {priors['scene']:.3f}, object {priors['object']:.3f}")
    print(json.dumps({"run": str(args.run), "n": n, "alpha": rows, "prior_row_max": priors}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
