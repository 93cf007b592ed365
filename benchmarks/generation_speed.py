"""Seconds per image of ``uniemo generate``'s pipeline vs a plain diffusers ``StableDiffusionPipeline``.

    python benchmarks/generation_speed.py [--reps 5] [--sizes demo sd15-256]

Both use the same components (UNet, VAE, text encoder, tokenizer), the same scheduler (DPM-Solver++, uniemo's
default), steps, guidance, seeds and ``prompt_embeds``: the plain pipeline is handed the embeddings uniemo's
encoder made for the same emotion sample, so the two must draw the same images (checked, pixel for pixel). What
uniemo adds is the emotion-space sample, the mappers and the prompt's encoding with c injected (the negative
prompt's embedding is kept between calls); the plain pipeline gets its embeddings for free. Contenders alternate
within each repetition; the ratio is per repetition (min / median / max). Goal (issue 6): ≤ 1.03. The last line
is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: name → (understanding CLIP, diffusion model, image side, steps, images per call)
SIZES = {
    "demo": ("uniemo-standin", "uniemo-standin", 32, 25, 4),
    "tiny": ("tiny-clip", "tiny-sd", 32, 25, 4),
    "sd15-256": ("clip-vit-base-patch32-arch", "sd15-arch", 256, 5, 1),
    "sd15-512": ("clip-vit-base-patch32-arch", "sd15-arch", 512, 3, 1),
}
CLASSES = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]


def build(size: str):
    """A UniEmoPipeline of random weights (real classes) with a random emotion space."""
    import torch

    from uniemo.models.architecture import ExpertQueryConfig, UniEmoConfig
    from uniemo.models.diffusion import load_stable_diffusion
    from uniemo.models.factory import load_clip_vision
    from uniemo.models.placeholder import PromptEncoder
    from uniemo.models.understanding import ExpertQueryCLIP
    from uniemo.models.uniemo import UniEmoModel
    from uniemo.pipelines.generation import UniEmoPipeline

    clip, diffusion, side, _, _ = SIZES[size]
    torch.manual_seed(0)
    pipe = load_stable_diffusion(diffusion)
    dims = PromptEncoder(pipe).condition_dims
    arch = ExpertQueryConfig(len(CLASSES), 64, num_scene_names=6, num_object_names=6)
    understanding = ExpertQueryCLIP(load_clip_vision(clip), arch)
    model = UniEmoModel(understanding, UniEmoConfig(dims, mapper_hidden=256)).eval()
    d, k = understanding.vision.config.hidden_size, len(CLASSES)
    model.set_emotion_space(
        {f"{n}_{s}": torch.randn(k, d) if s == "mean" else torch.ones(k, d) for n in ("cls", "scene", "object")
         for s in ("mean", "std")}
    )  # fmt: skip
    meta = {"classes": CLASSES, "placeholder": "<emotion>", "template": "{}", "resolution": side}
    return UniEmoPipeline(model, pipe, meta)


def measure(size: str, reps: int) -> dict:
    """Times both pipelines at ``size``; prints the result and returns the JSON row."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from timing import alternate, fmt, ratio_spread, spread
    from uniemo.pipelines.generation import DEFAULT_SCHEDULER

    _, _, side, steps, n = SIZES[size]
    upipe = build(size)
    guidance, seed = 7.5, 0
    # What uniemo hands the diffusion model for this call, made once, outside the timing.
    with torch.no_grad():
        conditions = upipe.emotion_conditions({"awe": 1.0}, n, seed)
        positive = upipe.encoder.encode([upipe.prompt_for(None)] * n, conditions)["prompt_embeds"]
        negative = upipe._negative("")["prompt_embeds"].expand(n, -1, -1)
    plain = StableDiffusionPipeline(**upipe.diffusion.components)
    plain.set_progress_bar_config(disable=True)
    with upipe._scheduler(DEFAULT_SCHEDULER):  # the very scheduler uniemo builds, kept for the plain one
        plain.scheduler = upipe.diffusion.scheduler
    outputs = {}

    def ours():
        outputs["uniemo"] = upipe("awe", num_images=n, steps=steps, guidance=guidance, seed=seed).images

    def theirs():
        generators = [torch.Generator().manual_seed(seed + i + 1_000_000) for i in range(n)]
        outputs["plain"] = plain(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            height=side,
            width=side,
            output_type="pil",
        ).images

    times = alternate({"plain": theirs, "uniemo": ours}, reps)
    diff = max(
        int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
        for a, b in zip(outputs["uniemo"], outputs["plain"], strict=True)
    )
    row = {
        "size": size,
        "image_size": side,
        "steps": steps,
        "images_per_call": n,
        "scheduler": DEFAULT_SCHEDULER,
        "seconds_per_image": {k: {s: v / n for s, v in spread(t).items()} for k, t in times.items()},
        "ratio": ratio_spread(times["uniemo"], times["plain"]),
        "max_pixel_difference": diff,
    }
    print(f"\n{size}: {side} px, {steps} steps ({DEFAULT_SCHEDULER}), guidance {guidance}, {n} image(s) per call")
    for key in ("plain", "uniemo"):
        print(f"  {key:<8} s/image {fmt(row['seconds_per_image'][key], 3)}")
    print(f"  uniemo ÷ plain: {fmt(row['ratio'], 3)} (goal ≤ 1.03); largest pixel difference {diff}")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["demo", "sd15-256"], choices=SIZES)
    args = parser.parse_args()

    import torch

    from timing import setup

    env = setup()
    rows = [measure(size, args.reps) for size in args.sizes]
    print(f"(torch threads: {torch.get_num_threads()}, {args.reps} repetitions)")
    print(json.dumps({"benchmark": "generation_speed", "reps": args.reps, **env, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
