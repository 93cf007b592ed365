"""Cost of a joint-training step: its parts, and the ratio to a plain textual-inversion step on the same parts.

    python benchmarks/joint_step.py [--reps 5] [--sizes demo sd15-vitb32-256 sd15-vitb32-512] [--checkpointing]

For each size it builds, in one process and with random weights of the real classes, the understanding model
(expert queries, Interactive Blocks, mappers), the frozen diffusion model and one batch, then times:

- ``joint``: the training step itself (``uniemo.train.objective.JointObjective``, the code ``uniemo train joint``
  runs: understanding forward, L_U, L_cond, VAE latents, c through the text encoder, L(θ), backward, AdamW);
- ``textual inversion``: the same VAE, text encoder and UNet trained the way diffusers' textual-inversion script
  does it (the placeholder's row of the token-embedding matrix is the only trained value; the others are put
  back after each step);
- the parts of the joint step, each run alone with its own backward: vision branch (understanding forward, L_U,
  L_cond), VAE encoding (no gradient), text encoder (c in, gradient back to c), UNet forward and backward.

Contenders alternate within each repetition; ratios are per repetition (min / median / max). Goal (issue 6):
joint ÷ textual inversion ≤ 1.2 at the real size (SD 1.5 with the paper's ViT-B/32 understanding model). The last
line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: name → (understanding CLIP, diffusion model, diffusion resolution, batch, queries per set, mapper width)
SIZES = {
    "demo": ("uniemo-standin", "uniemo-standin", 32, 32, 8, 256),
    "tiny": ("tiny-clip", "tiny-sd", 64, 8, 8, 256),
    "sd15-vitb32-256": ("clip-vit-base-patch32-arch", "sd15-arch", 256, 2, 32, 1024),
    "sd15-vitb32-512": ("clip-vit-base-patch32-arch", "sd15-arch", 512, 2, 32, 1024),
}
NUM_CLASSES, NUM_SCENES, NUM_OBJECTS = 8, 254, 409  # EmoSet's emotions and attribute vocabularies


def build(size: str):
    import torch
    from diffusers import DDPMScheduler

    from uniemo.config import JointConfig, LossConfig
    from uniemo.models.architecture import ExpertQueryConfig, UniEmoConfig
    from uniemo.models.diffusion import load_stable_diffusion
    from uniemo.models.factory import architecture_config, is_architecture_name, load_clip_vision
    from uniemo.models.placeholder import PromptEncoder
    from uniemo.models.understanding import ExpertQueryCLIP
    from uniemo.models.uniemo import UniEmoModel
    from uniemo.train.objective import JointObjective

    clip, diffusion, resolution, batch, queries, hidden = SIZES[size]
    torch.manual_seed(0)
    pipe = load_stable_diffusion(diffusion)
    encoder = PromptEncoder(pipe)
    if is_architecture_name(clip):
        attribute_dim = architecture_config(clip).projection_dim
    else:  # the stand-in's text tower width
        from uniemo.models.factory import load_clip_text

        attribute_dim = load_clip_text(clip)[0].config.projection_dim
    vision = load_clip_vision(clip)
    sizes = {"num_scene_queries": queries, "num_object_queries": queries}
    sizes |= {"num_scene_names": NUM_SCENES, "num_object_names": NUM_OBJECTS}
    arch = ExpertQueryConfig(NUM_CLASSES, attribute_dim, **sizes)
    understanding = ExpertQueryCLIP(vision, arch)
    for buffer in (understanding.scene_vocab_embeds, understanding.object_vocab_embeds):
        buffer.copy_(torch.nn.functional.normalize(torch.randn_like(buffer), dim=-1))
    model = UniEmoModel(understanding, UniEmoConfig(encoder.condition_dims, mapper_hidden=hidden))
    understanding.vision.requires_grad_(False)  # stage 2's default: backbone_lr_scale 0
    for part in (pipe.vae, pipe.unet, pipe.text_encoder):
        part.requires_grad_(False).eval()
    side = understanding.image_size
    data = {
        "pixel_values": torch.randn(batch, 3, side, side),
        "diffusion_pixels": torch.rand(batch, 3, resolution, resolution) * 2 - 1,
        "label": torch.arange(batch) // 2 % NUM_CLASSES,  # pairs: L_cond (supervised contrastive) has positives
        "scene_id": torch.arange(batch) % NUM_SCENES,
        "object_id": torch.arange(batch) % NUM_OBJECTS,
    }
    joint = JointConfig(resolution=resolution)
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    objective = JointObjective(encoder, pipe.vae, pipe.unet, noise, joint, LossConfig())
    return model, pipe, encoder, objective, data, noise


def measure(size: str, reps: int, checkpointing: bool = False) -> dict:
    """Times every contender at ``size``; prints the table and returns the JSON row."""
    import torch

    from timing import alternate, fmt, ratio_spread, spread
    from uniemo.losses import diffusion_loss, supervised_contrastive, understanding_loss

    model, pipe, encoder, objective, data, noise = build(size)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    gen = torch.Generator()
    batch = len(data["label"])
    injector = encoder.injectors[0]
    prompt = objective.joint.template.format(objective.joint.placeholder)

    def joint_step():
        loss, _ = objective(model, model, data, gen.manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Textual inversion as diffusers' script trains it: the embedding matrix is the trained tensor.
    embeddings = pipe.text_encoder.get_input_embeddings()
    original_rows = embeddings.weight.detach().clone()
    keep = torch.ones(len(original_rows), dtype=torch.bool)
    keep[injector.token_id] = False
    ti_optimizer = torch.optim.AdamW([embeddings.weight], lr=1e-5)
    scaling = float(pipe.vae.config.scaling_factor)

    def ti_step():
        embeddings.weight.requires_grad_(True)
        ids = injector.tokenize([prompt] * batch)
        with torch.no_grad():
            latents = pipe.vae.encode(data["diffusion_pixels"]).latent_dist.sample(gen.manual_seed(0)) * scaling
        context = pipe.text_encoder(input_ids=ids)[0]
        diffusion_loss(pipe.unet, noise, latents, context, gen).backward()
        ti_optimizer.step()
        ti_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            embeddings.weight[keep] = original_rows[keep]
        embeddings.weight.requires_grad_(False)

    # The joint step's parts, each alone.
    base = model.understanding
    vocab = {"scene": base.scene_vocab_embeds, "object": base.object_vocab_embeds}
    condition = torch.randn(batch, sum(encoder.condition_dims), requires_grad=True)
    with torch.no_grad():
        latents = pipe.vae.encode(data["diffusion_pixels"]).latent_dist.sample(gen.manual_seed(0)) * scaling
        context = encoder.encode([prompt] * batch, condition)["prompt_embeds"]
    context.requires_grad_(True)

    def vision_branch():
        forward = model(data["pixel_values"], data["label"])
        out, c = forward.understanding, forward.condition
        loss, _ = understanding_loss(out, data, vocab, objective.weights, 0.07)
        (loss + supervised_contrastive(c, data["label"], 0.07)).backward()
        model.zero_grad(set_to_none=True)

    def vae_encode():
        with torch.no_grad():
            pipe.vae.encode(data["diffusion_pixels"]).latent_dist.sample(gen.manual_seed(0))

    def text_encoder():
        encoder.encode([prompt] * batch, condition)["prompt_embeds"].sum().backward()
        condition.grad = None

    def unet():
        diffusion_loss(pipe.unet, noise, latents, context, gen.manual_seed(0)).backward()
        context.grad = None

    contenders = {
        "joint": joint_step,
        "textual_inversion": ti_step,
        "vision_branch": vision_branch,
        "vae_encode": vae_encode,
        "text_encoder": text_encoder,
        "unet_fwd_bwd": unet,
    }
    if checkpointing:

        def checkpointed():
            pipe.unet.enable_gradient_checkpointing()
            model.understanding.gradient_checkpointing = True
            try:
                joint_step()
            finally:
                pipe.unet.disable_gradient_checkpointing()
                model.understanding.gradient_checkpointing = False

        contenders["joint_checkpointed"] = checkpointed
    times = alternate(contenders, reps)
    med = {k: spread(v)["median"] for k, v in times.items()}
    row = {
        "size": size,
        "batch": batch,
        "resolution": SIZES[size][2],
        "seconds": {k: spread(v) for k, v in times.items()},
        "joint_over_ti": ratio_spread(times["joint"], times["textual_inversion"]),
        "relative_to_joint": {k: med[k] / med["joint"] for k in contenders if k not in ("joint", "textual_inversion")},
    }
    print(f"\n{size}: batch {batch}, diffusion at {SIZES[size][2]} px, {reps} repetitions")
    print(f"  {'part':<20} {'s/step: median (min–max)':>30} {'÷ joint':>15}")
    for key in contenders:
        share = f"{med[key] / med['joint']:.1%}" if key not in ("joint", "textual_inversion") else ""
        print(f"  {key:<20} {fmt(spread(times[key]), 3):>30} {share:>15}")
    print(f"  joint ÷ textual inversion: {fmt(row['joint_over_ti'])}   (goal ≤ 1.20 at the real size)")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["demo", "sd15-vitb32-256"], choices=SIZES)
    parser.add_argument(
        "--checkpointing", action="store_true", help="also time the step with joint.gradient_checkpointing"
    )
    args = parser.parse_args()

    import torch

    from timing import setup

    env = setup()
    rows = [measure(size, args.reps, args.checkpointing) for size in args.sizes]
    print(f"(torch threads: {torch.get_num_threads()})")
    print(json.dumps({"benchmark": "joint_step", "reps": args.reps, **env, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
