"""The stand-in pretrained models: `uniemo train base` and the shipped copy (the demo's embedded default)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from uniemo.data.synth import caption_of
from uniemo.errors import ConfigError
from uniemo.models.factory import STANDIN, standin_path
from uniemo.pipelines.generation import default_scheduler
from uniemo.train.base import (
    BaseConfig,
    draw_timesteps,
    hard_negative_batch,
    hard_negative_groups,
    train_base,
)


def test_captions_name_scene_objects_and_palette_never_the_emotion():
    assert caption_of("beach", ("balloon",), "stormy") == "a stormy beach with a balloon"
    assert caption_of("forest", ("tent", "car"), None) == "a forest with a tent and a car"
    assert caption_of(None, ("boat",), "pastel") == "a pastel with a boat"  # what a partial caption looks like
    from uniemo.constants import EMOSET_EMOTIONS
    from uniemo.data.synth import OBJECTS, PALETTES, SCENES

    words = " ".join(caption_of(s, (o,), p) for s in SCENES for o in OBJECTS for p in PALETTES).split()
    assert not set(words) & set(EMOSET_EMOTIONS)


def test_high_noise_share_draws_that_share_from_the_noisiest_timesteps():
    def share_high(share):
        t = draw_timesteps(20_000, 1000, share, torch.Generator().manual_seed(0))
        assert t.min() >= 0 and t.max() <= 999
        return (t >= 600).float().mean().item()

    assert share_high(0.0) == pytest.approx(0.4, abs=0.015)  # uniform
    assert share_high(0.5) == pytest.approx(0.5 + 0.5 * 0.4, abs=0.015)
    assert share_high(1.0) == 1.0


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_unet_flip_mirrors_that_share_of_the_unets_training_images(share, monkeypatch):
    """``--unet-flip 0`` trains on the layouts as drawn (a mirrored built-in mountain is one the dataset never has)."""
    import uniemo.train.base as base
    from uniemo.models.diffusion import tiny_unet

    scheduler, seen = base.stand_in_scheduler(), []
    add_noise = scheduler.add_noise
    scheduler.add_noise = lambda x0, noise, t: seen.append(x0.clone()) or add_noise(x0, noise, t)
    monkeypatch.setattr(base, "stand_in_scheduler", lambda: scheduler)
    latents = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = BaseConfig(unet_steps=20, unet_batch=8, unet_flip=share)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = tiny_unet(16, 32)
    base.train_unet(cfg, latents, torch.randn(2, 3, 32), torch.zeros(6, dtype=torch.long), 1, unet)

    def mirrored(x):
        if any(torch.equal(x, latent) for latent in latents):
            return False
        assert any(torch.equal(x, latent.flip(-1)) for latent in latents)
        return True

    drawn = [mirrored(x) for batch in seen for x in batch]
    assert len(drawn) == 160
    assert sum(drawn) / len(drawn) == pytest.approx(share, abs=0.1)


@pytest.mark.parametrize("vary", ["palette", "scene", "object"])
def test_hard_negative_batches_are_groups_that_only_one_cue_tells_apart(vary):
    rng = np.random.default_rng(0)
    parts = [
        (s, (o,), p) for s in ("beach", "lake", "city") for p in ("sunny", "stormy", "pastel") for o in ("tent", "car")
    ] * 3
    cue = {"scene": 0, "object": 1, "palette": 2}
    idx = hard_negative_batch(hard_negative_groups(parts, vary), 16, rng)
    assert len(idx) == 16 and len(set(idx.tolist())) == 16
    quads = [idx[k : k + 4] for k in range(0, 16, 4)]

    def shared(i):
        return tuple(parts[i][c] for name, c in cue.items() if name != vary)

    assert len({shared(q[0]) for q in quads}) == 4  # four different groups
    for quad in quads:  # the other two cues shared within a group, so only ``vary`` differs
        assert len({shared(i) for i in quad}) == 1
        assert len({parts[i][cue[vary]] for i in quad}) > 1


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
    assert default_scheduler(str(tmp_path / "base" / "sd")) == "model"  # a stand-in names its own DDPM
    # the diffusion model's text encoder is the CLIP's text tower
    torch.testing.assert_close(
        pipe.text_encoder.get_input_embeddings().weight, clip.text_model.get_input_embeddings().weight
    )

    # --text-steps gives SD a text encoder of its own (the CLIP stays); a continuation keeps SD's own encoder
    def q_weight(directory):
        from transformers import CLIPTextModel

        state = CLIPTextModel.from_pretrained(directory, dtype=torch.float32).state_dict()
        return next(v for k, v in state.items() if k.endswith("layers.0.self_attn.q_proj.weight"))

    clip_q = clip.text_model.encoder.layers[0].self_attn.q_proj.weight
    tuned = BaseConfig(
        clip_batch=8, text_steps=2, text_lr=1e-2, unet_steps=1, unet_batch=4, init=str(tmp_path / "base")
    )
    info = train_base(synth_dir, tmp_path / "tuned", tuned)
    assert info["text_encoder"]["steps"] == 2
    own = q_weight(tmp_path / "tuned" / "sd" / "text_encoder")
    assert (own - clip_q).abs().max() > 1e-3
    clip_after = CLIPModel.from_pretrained(tmp_path / "tuned" / "clip", dtype=torch.float32)
    torch.testing.assert_close(clip_after.text_model.encoder.layers[0].self_attn.q_proj.weight, clip_q)
    info = train_base(
        synth_dir, tmp_path / "again", BaseConfig(unet_steps=1, unet_batch=4, init=str(tmp_path / "tuned"))
    )
    assert info["text_encoder"]["steps"] == 2 and info["unet"]["steps"] == 4
    for part in ("unet", "vae"):  # the machine's paths stay out of a stand-in's files
        assert str(tmp_path) not in (tmp_path / "again" / "sd" / part / "config.json").read_text()
    torch.testing.assert_close(q_weight(tmp_path / "again" / "sd" / "text_encoder"), own)

    # --clip-hard-steps trains the CLIP itself, both towers, and keeps SD's encoder; the record keeps each phase
    hard = BaseConfig(clip_batch=8, clip_hard_steps=3, clip_hard_lr=1e-2, unet_steps=0, init=str(tmp_path / "again"))
    info = train_base(synth_dir, tmp_path / "hard", hard)
    info = train_base(synth_dir, tmp_path / "harder", replace(hard, init=str(tmp_path / "hard")))
    assert [p["steps"] for p in info["clip"]["hard_negatives"]] == [3, 3] and info["clip"]["steps"] == 2
    assert info["clip"]["hard_negatives"][0]["cues"] == ["palette", "scene", "object"]
    again = json.loads((tmp_path / "again" / "training.json").read_text())["unet"]
    assert info["unet"] == again  # no UNet step: the UNet and its record as they were
    weights = Path("sd") / "unet" / "diffusion_pytorch_model.safetensors"
    before, after = (load_file(tmp_path / run / weights) for run in ("again", "harder"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    hardened = CLIPModel.from_pretrained(tmp_path / "hard" / "clip", dtype=torch.float32)
    assert (hardened.text_model.encoder.layers[0].self_attn.q_proj.weight - clip_q).abs().max() > 1e-3
    vision_q = hardened.vision_model.encoder.layers[0].self_attn.q_proj.weight
    assert (vision_q - clip.vision_model.encoder.layers[0].self_attn.q_proj.weight).abs().max() > 1e-3
    torch.testing.assert_close(q_weight(tmp_path / "hard" / "sd" / "text_encoder"), own)
    with pytest.raises(ConfigError, match="hard-negative cues 'object,colour'"):
        train_base(synth_dir, tmp_path / "bad", replace(hard, clip_cues="object,colour"))
    with pytest.raises(ConfigError, match="--clip-name-share must lie in"):
        train_base(synth_dir, tmp_path / "bad", replace(hard, clip_name_share=0.6))
    with pytest.raises(ConfigError, match="--unet-flip is a share"):
        train_base(synth_dir, tmp_path / "bad", replace(hard, unet_flip=50.0))


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5])
def test_hard_negative_texts_are_half_full_captions_and_the_name_share_names(share):
    from uniemo.train.base import _hard_negative_text

    rng, part = np.random.default_rng(0), ("beach", ("tent",), "stormy")
    texts = [_hard_negative_text(part, "object", share, rng) for _ in range(4000)]
    # full captions: half the texts, and the partial ones that happened to keep all three cues (0.75³ of them)
    full = 0.5 + (0.5 - share) * 0.75**3
    assert texts.count(caption_of(*part)) / 4000 == pytest.approx(full, abs=0.03)
    assert texts.count("tent") / 4000 == pytest.approx(share, abs=0.03)


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


def test_the_shipped_stand_in_draws_the_object_and_the_scene_it_is_told():
    """The attribute judge reads the main object and the scene of 48 samples of "a {palette} {scene} with a {object}"
    (every object and every scene 8 times): SD's own text encoder tells the objects apart, so the named object comes
    out, and the UNet, trained on the layouts as drawn, draws the mountain unmirrored. The stand-in before step 4 of
    its recipe fails the object's floor, the one before step 9 the scene's (its figures: the model card)."""
    from uniemo.data.synth import OBJECTS, PALETTES, SCENES
    from uniemo.metrics.judge import BUILTIN_JUDGE, AttributeJudge
    from uniemo.models.diffusion import load_stable_diffusion

    judge = AttributeJudge.from_pretrained(BUILTIN_JUDGE)
    pipe = load_stable_diffusion(STANDIN)
    pipe.set_progress_bar_config(disable=True)
    asked = [(PALETTES[k % 4], SCENES[(k + o) % 6], obj) for o, obj in enumerate(OBJECTS) for k in range(8)]
    captions = [caption_of(scene, (obj,), palette) for palette, scene, obj in asked]
    generators = [torch.Generator().manual_seed(i) for i in range(len(captions))]
    images = pipe(captions, num_inference_steps=25, guidance_scale=3.0, height=32, width=32, generator=generators)
    seen = judge.read(images.images)
    hits = sum(s == obj for s, (_, _, obj) in zip(seen["object"], asked))
    assert hits / len(asked) >= 0.85, f"the named object in {hits} of {len(asked)} samples"
    scenes = sum(s == scene for s, (_, scene, _) in zip(seen["scene"], asked))
    assert scenes / len(asked) >= 0.93, f"the named scene in {scenes} of {len(asked)} samples"
    assert seen["palette"] == [palette for palette, _, _ in asked]


def standin_cue_reading(root, n_per_object=8, seed=0):
    """Zero-shot by the names alone (as the classifier prior reads them) and the names' mean pairwise cosine,
    per cue, of the stand-in CLIP at ``root`` on freshly drawn 64 px images (every object ``n_per_object`` times)."""
    import torch.nn.functional as F
    from transformers import CLIPModel

    from uniemo.data.synth import OBJECTS, PALETTES, SCENES, render
    from uniemo.data.transforms import ClipTransform
    from uniemo.models.factory import encode_texts, load_clip_text

    rng = np.random.default_rng(seed)
    truth = [(PALETTES[rng.integers(4)], SCENES[rng.integers(6)], obj) for obj in OBJECTS for _ in range(n_per_object)]
    clip = CLIPModel.from_pretrained(root / "clip", dtype=torch.float32).eval()
    transform = ClipTransform(clip.config.vision_config.image_size)
    pixels = torch.stack([transform(render(s, [o], p, 64, rng)) for p, s, o in truth])
    text_model, tokenizer = load_clip_text(str(root / "clip"))
    reading = {}
    with torch.no_grad():
        image = F.normalize(clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output), dim=-1)
    for k, names in enumerate((PALETTES, SCENES, OBJECTS)):
        text = encode_texts(text_model.float(), tokenizer, list(names))  # as stage 1 and α's prior read names
        hits = [names[j] == t[k] for j, t in zip((image @ text.T).argmax(1).tolist(), truth)]
        off_diagonal = (text @ text.T)[~torch.eye(len(names), dtype=torch.bool)]
        reading[("palette", "scene", "object")[k]] = (sum(hits) / len(hits), off_diagonal.mean().item())
    return reading


def test_the_shipped_stand_in_clip_tells_every_cue_apart():
    """Zero-shot by the names alone on 48 freshly drawn images, and the names' mean pairwise cosine, per cue. The
    stand-in before its CLIP's hard negatives read the object in 9 of 48 (names' cosine 0.87), the shipped one in
    47 (0.70): α, which reads the names, had nothing to weigh before."""
    reading = standin_cue_reading(standin_path())
    floors = {"palette": (0.95, 0.7), "scene": (0.85, 0.7), "object": (0.8, 0.8)}  # shipped: 1.0, 0.96, 0.98
    for cue, (accuracy, cosine) in reading.items():
        assert accuracy >= floors[cue][0], f"{cue}: {accuracy:.1%} zero-shot"
        assert cosine <= floors[cue][1], f"{cue}: names' mean cosine {cosine:.2f}"
