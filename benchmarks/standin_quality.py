"""How good is a stand-in text-to-image model? Does a classifier find the captioned palette, scene and object in
its samples?

    python benchmarks/standin_quality.py [--standin DIR] [--data DATA] [--per-caption 2] [--steps 25]

A small CNN with three heads (palette, scene, main object) is trained on the real training images at the
diffusion resolution (downsampled to 32 px, as generated images are). Its accuracy on each attribute is
measured on real test images and on images generated from every caption "a {palette} {scene} with a {object}"
(144 captions). Generated accuracy close to real accuracy means the model draws what it is told;
chance is 25 % (palette) and 16.7 % (scene, object). Prints a table and one JSON line (the numbers in the
stand-in's model card).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standin", default=None, help="stand-in directory (default: the shipped one)")
    parser.add_argument("--data", default="runs/bench-generation/data", help="the built-in dataset (made if absent)")
    parser.add_argument("--per-caption", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--probe-steps", type=int, default=1500, help="training steps of the pixel classifier")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from PIL import Image

    from uniemo.data.datasets import to_signed_tensor
    from uniemo.data.images import load_image
    from uniemo.data.synth import OBJECTS, PALETTES, SCENES, SynthConfig, caption_of, write_synthetic_dataset
    from uniemo.models.diffusion import load_stable_diffusion
    from uniemo.models.factory import standin_path

    root = Path(args.standin) if args.standin else standin_path()
    data = Path(args.data)
    if not (data / "info.json").is_file():
        write_synthetic_dataset(data, SynthConfig(seed=args.seed), overwrite=True)

    def annotations(split: str) -> tuple[list, dict[str, list[int]]]:
        entries = json.loads((data / f"{split}.json").read_text())
        images, labels = [], {"palette": [], "scene": [], "object": []}
        for entry in entries:
            ann = json.loads((data / entry[2]).read_text())
            images.append(load_image(data / entry[1]).resize((32, 32), Image.Resampling.BOX))
            labels["palette"].append(PALETTES.index(ann["palette"]))
            labels["scene"].append(SCENES.index(ann["scene"]))
            labels["object"].append(OBJECTS.index(ann["object"][0]))
        return images, labels

    def pixels(images: list) -> torch.Tensor:
        return torch.stack([to_signed_tensor(im) for im in images])

    train_images, train_labels = annotations("train")
    test_images, test_labels = annotations("test")
    x_train, x_test = pixels(train_images), pixels(test_images)
    heads = {"palette": len(PALETTES), "scene": len(SCENES), "object": len(OBJECTS)}
    torch.manual_seed(args.seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(128 * 16, sum(heads.values())),
    )  # fmt: skip
    y_train = {k: torch.tensor(v) for k, v in train_labels.items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.probe_steps):
        idx = torch.randint(0, len(x_train), (128,), generator=gen)
        logits = net(x_train[idx]).split(list(heads.values()), dim=1)
        loss = sum(F.cross_entropy(lg, y_train[k][idx]) for lg, k in zip(logits, heads))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    @torch.no_grad()
    def predict(x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = torch.cat([net(x[i : i + 256]) for i in range(0, len(x), 256)]).split(list(heads.values()), dim=1)
        return {k: lg.argmax(1) for lg, k in zip(logits, heads)}

    pipe = load_stable_diffusion(str(root / "sd"))
    pipe.set_progress_bar_config(disable=True)
    captions, truth = [], {"palette": [], "scene": [], "object": []}
    for p in PALETTES:
        for s in SCENES:
            for o in OBJECTS:
                for _ in range(args.per_caption):
                    captions.append(caption_of(s, (o,), p))
                    truth["palette"].append(PALETTES.index(p))
                    truth["scene"].append(SCENES.index(s))
                    truth["object"].append(OBJECTS.index(o))
    start = time.perf_counter()
    generated = []
    for i in range(0, len(captions), 16):
        batch = captions[i : i + 16]
        gens = [torch.Generator().manual_seed(args.seed + i + k) for k in range(len(batch))]
        generated += pipe(
            batch, num_inference_steps=args.steps, guidance_scale=args.guidance, height=32, width=32, generator=gens
        ).images
    seconds = time.perf_counter() - start
    real_pred, gen_pred = predict(x_test), predict(pixels(generated))
    result = {"n_generated": len(generated), "n_real_test": len(test_images), "generation_seconds": seconds}
    print(f"{'probe':<8} {'real test':>10} {'generated':>10}")
    for name in heads:
        real = float((real_pred[name] == torch.tensor(test_labels[name])).float().mean())
        gen_acc = float((gen_pred[name] == torch.tensor(truth[name])).float().mean())
        result[name] = {"real_test": real, "generated": gen_acc}
        print(f"{name:<8} {real:>10.1%} {gen_acc:>10.1%}")
    sheet_rows = [generated[k : k + 12] for k in range(0, min(len(generated), 96), 12)]
    from uniemo.plotting import image_grid

    image_grid(
        sheet_rows,
        [captions[k][:18] for k in range(0, min(len(generated), 96), 12)],
        data.parent / "standin-samples.png",
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
