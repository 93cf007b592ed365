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

from uniemo.constants import CLIP_SPECIAL_TOKEN_IDS, CLIP_VOCAB_SIZE
from uniemo.errors import CheckpointError
from uniemo.models.factory import (
    STANDIN,
    architecture_config,
    check_tokenizer,
    clip_tokenizer,
    from_pretrained_or_explain,
    resolve_spec,
)

TINY_SD = "tiny-sd"
TINY_SDXL = "tiny-sdxl"
SD15_ARCH = "sd15-arch"


def _tiny_text_encoder(width: int, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=width,
        **CLIP_SPECIAL_TOKEN_IDS,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def tiny_vae(image_size: int = 32, norm_num_groups: int = 8) -> Any:
    """An ``AutoencoderKL`` with channels (32, 64): RGB images ↔ 4-channel latents at half the side (random init;
    the stand-in trains one)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        norm_num_groups=norm_num_groups,
        sample_size=image_size,
    )


def tiny_unet(
    image_size: int,
    cross_attention_dim: int,
    channels: tuple[int, int] = (32, 64),
    norm_num_groups: int = 8,
    **extra: Any,
) -> Any:
    """A ``UNet2DConditionModel`` of two levels, one cross-attention block down and up, for latents at half the image
    side (random init; the tests' toy models and, wider, the stand-in's UNet)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=norm_num_groups,
        **extra,
    )


def tiny_stable_diffusion_xl(seed: int = 0, image_size: int = 32) -> Any:
    """A ``StableDiffusionXLPipeline`` of the real classes at toy size, randomly initialised (tests): two text
    encoders of different widths (32 and 48, like SDXL's 768 and 1280), pooled embeddings and time ids."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_unet(
            image_size,
            cross_attention_dim=32 + 48,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 48,
        )
        vae = tiny_vae(image_size)
        text_encoder, text_encoder_2 = _tiny_text_encoder(32), _tiny_text_encoder(48, projection=True)
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )


def sd_pipeline(vae: Any, text_encoder: Any, unet: Any, scheduler: Any) -> Any:
    """A ``StableDiffusionPipeline`` of these parts with CLIP's real tokenizer and no safety checker."""
    from diffusers import StableDiffusionPipeline

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


def tiny_stable_diffusion(seed: int = 0, image_size: int = 32) -> Any:
    """A ``StableDiffusionPipeline`` of the real classes at toy size, randomly initialised (tests, benchmarks).

    UNet2DConditionModel and AutoencoderKL with channels (32, 64) (latents at half the image side), a 2-layer
    CLIPTextModel with CLIP's real tokenizer, and a DDPM scheduler.
    """
    from diffusers import DDPMScheduler

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_unet(image_size, cross_attention_dim=32, attention_head_dim=8)
        vae = tiny_vae(image_size)
        text_encoder = _tiny_text_encoder(32)
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
    )
    return sd_pipeline(vae, text_encoder, unet, scheduler)


def stable_diffusion_15_architecture(seed: int = 0) -> Any:
    """Stable Diffusion 1.5's architecture with random weights (benchmarks and GPU checks without its weights):
    the 860 M-parameter UNet (320/640/1280/1280 channels, cross-attention width 768), the 84 M-parameter VAE
    (128/256/512/512, latents at 1/8 of the side, scaling 0.18215), CLIP ViT-L/14's 12-layer text encoder with
    the real tokenizer, and SD 1.5's own PNDM scheduler settings."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD 1.x's
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(architecture_config("clip-vit-large-patch14-arch").text_config)
    scheduler = PNDMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return sd_pipeline(vae, text_encoder, unet, scheduler)


def load_stable_diffusion(spec: str, seed: int = 0) -> Any:
    """A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` from a hub id
    (``stable-diffusion-v1-5/stable-diffusion-v1-5``, ``stabilityai/stable-diffusion-xl-base-1.0``), a local
    directory in diffusers' layout, ``uniemo-standin`` (the shipped stand-in), ``tiny-sd`` / ``tiny-sdxl``
    (random init, toy size) or ``sd15-arch`` (random init, SD 1.5's size). Weights are read as float32 (cast
    later for mixed precision).

    Raises:
        CheckpointError: nothing loadable there, or a pipeline that is not Stable Diffusion.
    """
    if spec == TINY_SD:
        return tiny_stable_diffusion(seed)
    if spec == TINY_SDXL:
        return tiny_stable_diffusion_xl(seed)
    if spec == SD15_ARCH:
        return stable_diffusion_15_architecture(seed)
    from diffusers import DiffusionPipeline

    path = resolve_spec(spec, "sd")
    instead = (
        "a local directory in diffusers' layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
        f"scheduler/), a hub id in the local Hugging Face cache, '{STANDIN}', '{TINY_SD}', '{TINY_SDXL}' or "
        f"'{SD15_ARCH}'"
    )
    pipe = from_pretrained_or_explain(
        DiffusionPipeline, path, "a Stable Diffusion pipeline", instead, dtype=torch.float32
    )
    name = type(pipe).__name__
    if name not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise CheckpointError(f"'{spec}' is a {name}; uniemo conditions StableDiffusionPipeline or SDXL only")
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # generated images are checked by the user's own policy
    check_tokenizer(pipe.tokenizer, spec)
    if getattr(pipe, "tokenizer_2", None) is not None:
        check_tokenizer(pipe.tokenizer_2, spec)
    return pipe
