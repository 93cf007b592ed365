"""The stand-in pretrained models: `uniemo train base` and the shipped copy (the demo's embedded default)."""

import json

import numpy as np
import pytest
import torch

from uniemo.models.factory import STANDIN, standin_path
from uniemo.train.base import BaseConfig, caption_of, train_base


def test_captions_name_scene_objects_and_palette_never_the_emotion():
    assert caption_of("beach", ("balloon",), "stormy") == "a stormy beach with a balloon"
    assert caption_of("forest", ("tent", "car"), None) == "a forest with a tent and a car"
    assert caption_of(None, ("boat",), "pastel") == "a pastel with a boat"  # what a partial caption looks like
    from uniemo.constants import EMOSET_EMOTIONS
    from uniemo.data.synth import OBJECTS, PALETTES, SCENES

    words = " ".join(caption_of(s, (o,), p) for s in SCENES for o in OBJECTS for p in PALETTES).split()
    assert not set(words) & set(EMOSET_EMOTIONS)


def test_train_base_writes_directories_that_load_like_real_ones(synth_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPTokenizer

    cfg = BaseConfig(clip_steps=2, clip_batch=8, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4)
    info = train_base(synth_dir, tmp_path / "base", cfg)
    assert info["unet"]["steps"] == 2 and info["captions"] > 1
    clip = CLIPModel.from_pretrained(tmp_path / "base" / "clip", dtype=torch.float32)
    assert clip.config.vision_config.image_size == 64 and clip.config.projection_dim == 64
    assert len(CLIPTokenizer.from_pretrained(tmp_path / "base" / "clip")) == 49408
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "base" / "sd", dtype=torch.float32)
    assert pipe.vae.config.scaling_factor == pytest.approx(info["vae_scaling_factor"])
    # the diffusion model's text encoder is the CLIP's text tower
    torch.testing.assert_close(
        pipe.text_encoder.get_input_embeddings().weight, clip.text_model.get_input_embeddings().weight
    )


def test_the_shipped_stand_in_loads_and_generates():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    from uniemo.models.diffusion import load_stable_diffusion
    from uniemo.models.factory import load_clip_text, load_clip_vision

    root = standin_path()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size <= 20 * 2**20, f"the shipped stand-in is {size / 2**20:.1f} MB"
    assert (root / "README.md").is_file()
    CLIPModel.from_pretrained(root / "clip")
    StableDiffusionPipeline.from_pretrained(root / "sd")
    vision = load_clip_vision(STANDIN)
    text, tokenizer = load_clip_text(STANDIN)
    assert vision.dtype == torch.float32 and len(tokenizer) == 49408
    pipe = load_stable_diffusion(STANDIN)
    out = pipe(
        "a sunny beach with a balloon",
        num_inference_steps=4,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all() and out.std() > 0.02
    training = json.loads((root / "training.json").read_text())
    assert training["unet"]["steps"] >= 1000
