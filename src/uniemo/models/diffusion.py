"""The frozen diffusion model: loading it (hub id, local directory, or a tiny random one) and its loss (METHOD §4).

Shape legend:
    B  batch size
    C  latent channels (4 for Stable Diffusion)
    h  latent side (image side / 8 for SD's VAE; / 2 for the tiny one)
    L  prompt tokens (77), d_c the text encoder's width
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from uniemo.constants import CLIP_SPECIAL_TOKEN_IDS, CLIP_VOCAB_SIZE
from uniemo.models.factory import check_tokenizer, clip_tokenizer, from_pretrained_or_explain

TINY_SD = "tiny-sd"


def tiny_stable_diffusion(seed: int = 0, image_size: int = 32) -> Any:
    """A ``StableDiffusionPipeline`` of the real classes at toy size, randomly initialised (tests, benchmarks).

    UNet2DConditionModel and AutoencoderKL with channels (32, 64) (latents at half the image side), a 2-layer
    CLIPTextModel with CLIP's real tokenizer, and a DDPM scheduler.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=image_size // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=image_size,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=CLIP_VOCAB_SIZE,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                **CLIP_SPECIAL_TOKEN_IDS,
            )
        )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_stable_diffusion(spec: str, seed: int = 0) -> Any:
    """A ``StableDiffusionPipeline`` from a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``), a local
    directory in diffusers' layout, or ``tiny-sd`` (random init).

    Raises:
        CheckpointError: nothing loadable there, with what to do instead.
    """
    if spec == TINY_SD:
        return tiny_stable_diffusion(seed)
    from diffusers import StableDiffusionPipeline

    instead = (
        "a local directory in diffusers' layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
        f"scheduler/), a hub id in the local Hugging Face cache, or '{TINY_SD}'"
    )
    pipe = from_pretrained_or_explain(
        StableDiffusionPipeline,
        spec,
        "a Stable Diffusion pipeline",
        instead,
        safety_checker=None,
        requires_safety_checker=False,
    )
    check_tokenizer(pipe.tokenizer, spec)
    return pipe


def diffusion_loss(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L(θ): MSE between the UNet's prediction and its target, at uniformly drawn timesteps.

    The target is the noise for ``prediction_type="epsilon"`` and the velocity for ``"v_prediction"``.

    Args:
        unet: a ``UNet2DConditionModel`` (frozen by the caller; gradients still reach ``context``).
        scheduler: a diffusers noise scheduler (its ``config.prediction_type`` decides the target).
        latents: (B, C, h, h) scaled VAE latents of the training images.
        context: (B, L, d_c) the text encoder's output, the UNet's cross-attention context.
        generator: draws the noise and the timesteps (reproducible when seeded).
    """
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    steps = scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)  # (B, C, h, h)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} (epsilon or v_prediction)")
    prediction = unet(noisy, timesteps, encoder_hidden_states=context).sample  # (B, C, h, h)
    return F.mse_loss(prediction.float(), target.float())
