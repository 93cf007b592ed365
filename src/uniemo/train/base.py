"""`uniemo train base`: pre-trains the stand-in CLIP and Stable Diffusion on the built-in dataset.

No pretrained CLIP or Stable Diffusion can be downloaded here, so the project trains tiny models **of the real
architectures** and saves them in the real layouts, so that every later stage loads them exactly as it would
load ``openai/clip-vit-base-patch32`` or ``stable-diffusion-v1-5/stable-diffusion-v1-5``:

* ``clip/``: a ``CLIPModel`` (vision tower of the ``tiny-clip`` architecture, a narrow text tower, CLIP's real
  BPE tokenizer) trained contrastively on image–caption pairs, so images, scene names and object names share one
  space (METHOD §3's prior needs it);
* ``sd/``: a ``StableDiffusionPipeline`` directory: an ``AutoencoderKL`` trained on reconstruction, a text
  encoder — the stand-in CLIP's text tower, or with ``text_steps`` the text tower of a copy of that CLIP trained
  further on hard negatives (:func:`train_text_encoder`) — frozen while the UNet trains, as in Stable Diffusion,
  a ``UNet2DConditionModel`` trained on latents with the captions as context (10 % empty captions for
  classifier-free guidance), a DDPM scheduler.

Captions name the scene, the object(s) and the colour palette (``"a stormy beach with a balloon"``), **never the
emotion**: in generated images the emotion can only come from UniEmo's placeholder, which is what the stand-in
exists to test. (The palette words describe light and colour as real captions do; without them the UNet would
learn colour as unconditional noise that no text could steer.)

Weights are stored in float16 (so that the shipped copy stays under 20 MB); the loaders read them as float32.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from uniemo.checkpoint import atomic_directory
from uniemo.config import BaseConfig
from uniemo.constants import CLIP_SPECIAL_TOKEN_IDS, CLIP_VOCAB_SIZE, PREFERRED_SCHEDULER
from uniemo.data.datasets import open_dataset
from uniemo.data.images import load_image
from uniemo.data.synth import caption_of
from uniemo.data.transforms import ClipTransform
from uniemo.errors import CheckpointError, ConfigError, DataError
from uniemo.models.diffusion import sd_pipeline, tiny_unet, tiny_vae
from uniemo.models.factory import architecture_config, clip_tokenizer, save_clip_tokenizer

logger = logging.getLogger(__name__)


def _read_captions(root: Path, split: str) -> tuple[list[Path], list[str], list[tuple[str | None, tuple, str | None]]]:
    dataset = open_dataset(root, "emoset")
    samples = dataset.split(split)
    paths, captions, parts = [], [], []
    entries = json.loads((root / f"{split}.json").read_text())
    if len(entries) != len(samples):
        raise DataError(f"{root}/{split}.json has entries without images; `train base` needs the built-in dataset")
    for entry, sample in zip(entries, samples):
        palette = None
        ann_path = next((root / x for x in entry[1:] if str(x).endswith(".json")), None)
        if ann_path is not None and ann_path.is_file():
            palette = json.loads(ann_path.read_text()).get("palette")
        paths.append(sample.path)
        parts.append((sample.scene, sample.objects, palette))
        captions.append(caption_of(sample.scene, sample.objects, palette))
    if not any(p[0] or p[1] for p in parts):
        raise DataError(f"{root}: no scene or object annotations to caption; `train base` needs EmoSet-style ones")
    return paths, captions, parts


def _partial_caption(parts: tuple, rng: np.random.Generator) -> str:
    """The caption with each of palette / scene / objects dropped with probability ¼ (one always kept)."""
    scene, objects, palette = parts
    keep = rng.random(3) >= 0.25
    if not keep.any():
        keep[rng.integers(3)] = True
    return caption_of(scene if keep[1] else None, objects if keep[2] else (), palette if keep[0] else None)


def stand_in_clip(cfg: BaseConfig) -> Any:
    """A random ``CLIPModel``: the ``tiny-clip`` vision tower and a text tower of width ``cfg.text_width``."""
    from transformers import CLIPConfig, CLIPModel

    vision = architecture_config("tiny-clip").vision_config.to_dict()
    w = cfg.text_width
    text = dict(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=w,
        intermediate_size=4 * w,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=77,
        **CLIP_SPECIAL_TOKEN_IDS,
    )
    vision["projection_dim"] = text["projection_dim"] = 64
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return CLIPModel(config)


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _adamw(params: Any, lr: float, total: int, warmup: int = 100) -> tuple[Any, Any]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, total, min(warmup, total // 10 + 1)))
    return opt, sched


def _log(what: str, step: int, total: int, loss: float, start: float) -> None:
    if step % 100 == 0 or step == total:
        logger.info("%s step %d/%d loss %.4f (%.0f s)", what, step, total, loss, time.perf_counter() - start)


def _clip_step(
    model: Any, tokenizer: Any, texts: list[str], pixels: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE of a batch of (image, text) pairs; ``target``: class indices (pair i matches i) or a
    row-stochastic matrix of positives."""
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)
    return 0.5 * (F.cross_entropy(out.logits_per_image, target) + F.cross_entropy(out.logits_per_text, target))


def _optimise(model: Any, loss: torch.Tensor, opt: Any, sched: Any) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()


def train_clip(cfg: BaseConfig, images: torch.Tensor, parts: list[tuple], tokenizer: Any) -> tuple[Any, dict]:
    """Contrastive training of the stand-in CLIP on (image, partial caption) pairs."""
    model = stand_in_clip(cfg)
    model.train()
    rng = np.random.default_rng(cfg.seed)
    opt, sched = _adamw(model.parameters(), cfg.clip_lr, cfg.clip_steps)
    start, loss = time.perf_counter(), torch.tensor(0.0)
    for step in range(1, cfg.clip_steps + 1):
        idx = rng.choice(len(images), size=min(cfg.clip_batch, len(images)), replace=False)
        texts = [_partial_caption(parts[i], rng) for i in idx]
        pixels = images[torch.from_numpy(idx)]
        if rng.random() < 0.5:
            pixels = pixels.flip(-1)
        loss = _clip_step(model, tokenizer, texts, pixels, torch.arange(len(idx)))
        _optimise(model, loss, opt, sched)
        _log("clip", step, cfg.clip_steps, loss.item(), start)
    model.eval()
    return model, {
        "steps": cfg.clip_steps,
        "final_loss": round(loss.item(), 4),
        "seconds": time.perf_counter() - start,
    }


CUES = ("palette", "scene", "object")


def hard_negative_groups(parts: list[tuple], vary: str) -> dict[tuple, list[int]]:
    """Image indices grouped by the two cues other than ``vary``: within a group only ``vary`` tells images apart."""
    groups: dict[tuple, list[int]] = {}
    for i, (scene, objects, palette) in enumerate(parts):
        key = {"palette": (scene, objects), "scene": (palette, objects), "object": (palette, scene)}[vary]
        groups.setdefault(key, []).append(i)
    return groups


def hard_negative_batch(groups: dict[tuple, list[int]], size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``size / 4`` distinct groups with up to 4 distinct images each, group after group."""
    keys = sorted(groups, key=str)
    chosen = rng.choice(len(keys), size=min(len(keys), max(1, size // 4)), replace=False)
    return np.concatenate([rng.choice(groups[keys[k]], min(4, len(groups[keys[k]])), replace=False) for k in chosen])


def train_hard_negatives(
    model: Any,
    images: torch.Tensor,
    parts: list[tuple],
    tokenizer: Any,
    *,
    cues: tuple[str, ...],
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    name_share: float = 0.0,
    what: str = "hard negatives",
) -> dict[str, Any]:
    """Trains the ``CLIPModel`` ``model`` in place on hard negatives: each batch is ``batch / 4`` groups of 4 images
    that share all cues but one (the cues of ``cues`` in turn, step after step), so only that cue tells them apart;
    half the texts are full captions, the rest partial ones, except a ``name_share`` of them that is the name of the
    cue that varies alone ("balloon", as the classifier prior reads names); every text equal to an image's own is
    its positive.

    Plain contrastive training lets the cues that are easiest to see decide, so a cue that no batch has to tell
    apart stays blurred in both towers (the stand-in's model card has the figures)."""
    groups = {cue: hard_negative_groups(parts, cue) for cue in cues}
    model.train()
    rng = np.random.default_rng(seed)
    opt, sched = _adamw(model.parameters(), lr, steps)
    start, loss = time.perf_counter(), torch.tensor(0.0)
    for step in range(1, steps + 1):
        vary = cues[(step - 1) % len(cues)]
        idx = hard_negative_batch(groups[vary], batch, rng)
        texts = [_hard_negative_text(parts[i], vary, name_share, rng) for i in idx]
        pixels = images[torch.from_numpy(idx)]
        if rng.random() < 0.5:
            pixels = pixels.flip(-1)
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
        loss = _clip_step(model, tokenizer, texts, pixels, same / same.sum(1, keepdim=True))
        _optimise(model, loss, opt, sched)
        _log(what, step, steps, loss.item(), start)
    model.eval()
    seconds = time.perf_counter() - start
    record = {"steps": steps, "cues": list(cues), "lr": lr, "name_share": name_share}
    return {**record, "final_loss": round(loss.item(), 4), "seconds": seconds}


def _hard_negative_text(part: tuple, vary: str, name_share: float, rng: np.random.Generator) -> str:
    """An image's text in a hard-negative batch: its full caption, a partial one, or the name of ``vary`` alone."""
    r = rng.random()
    if r < 0.5:
        return caption_of(*part)
    scene, objects, palette = part
    name = {"palette": palette, "scene": scene, "object": objects[0] if objects else None}[vary]
    if name and r >= 1.0 - name_share:
        return name
    return _partial_caption(part, rng)


def train_text_encoder(
    cfg: BaseConfig, clip: Any, images: torch.Tensor, parts: list[tuple], tokenizer: Any
) -> tuple[Any, dict]:
    """SD's text encoder: the text tower of a copy of ``clip`` trained ``cfg.text_steps`` more on hard negatives
    (:func:`train_hard_negatives`, the cues of ``cfg.text_cues``). ``clip`` itself is left as it is."""
    from transformers import CLIPTextModel

    model = copy.deepcopy(clip)
    info = train_hard_negatives(
        model, images, parts, tokenizer, cues=_cues(cfg.text_cues), steps=cfg.text_steps, lr=cfg.text_lr,
        batch=cfg.clip_batch, seed=cfg.seed + 3, what="text encoder",
    )  # fmt: skip
    text_encoder = CLIPTextModel(model.config.text_config)
    text_encoder.load_state_dict(model.text_model.state_dict())
    return text_encoder.eval(), info


def _cues(spec: str) -> tuple[str, ...]:
    cues = tuple(c.strip() for c in spec.split(",") if c.strip())
    if not cues or any(c not in CUES for c in cues):
        raise ConfigError(f"hard-negative cues {spec!r}: a comma-separated list of {', '.join(CUES)}")
    return cues


def stand_in_vae(cfg: BaseConfig) -> Any:

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        return tiny_vae(cfg.image_size, norm_num_groups=16)


def train_vae(cfg: BaseConfig, images: torch.Tensor) -> tuple[Any, dict]:
    """Reconstruction (MSE + ½ L1) with a small KL term, images in [-1, 1]."""
    vae = stand_in_vae(cfg)
    vae.train()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt, sched = _adamw(vae.parameters(), cfg.vae_lr, cfg.vae_steps)
    start, loss = time.perf_counter(), torch.tensor(0.0)
    for step in range(1, cfg.vae_steps + 1):
        idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=gen)
        x = images[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-4 * kl
        _optimise(vae, loss, opt, sched)
        _log("vae", step, cfg.vae_steps, loss.item(), start)
    vae.eval()
    return vae, {"steps": cfg.vae_steps, "final_loss": round(loss.item(), 4), "seconds": time.perf_counter() - start}


def stand_in_unet(cfg: BaseConfig) -> Any:

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 2)
        return tiny_unet(cfg.image_size, cfg.text_width, channels=(48, 96), norm_num_groups=16, attention_head_dim=8)


def stand_in_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
    )


def draw_timesteps(n: int, total: int, high_noise_share: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` training timesteps, uniform over ``[0, total)``, except that each is drawn from the noisiest 40 %
    (``[0.6·total, total)``, where the object is decided) with probability ``high_noise_share``."""
    t = torch.randint(0, total, (n,), generator=generator)
    if high_noise_share > 0:
        high = torch.rand(n, generator=generator) < high_noise_share
        t = torch.where(high, torch.randint(int(0.6 * total), total, (n,), generator=generator), t)
    return t


def train_unet(
    cfg: BaseConfig,
    latents: torch.Tensor,
    contexts: torch.Tensor,
    caption_index: torch.Tensor,
    empty: int,
    unet: Any = None,
) -> tuple[Any, dict]:
    """Latent denoising (ε) with the frozen text encoder's outputs as context; captions dropped at random.
    ``unet`` continues an earlier UNet instead of a new one."""
    unet = unet if unet is not None else stand_in_unet(cfg)
    unet.train()
    scheduler = stand_in_scheduler()
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    opt, sched = _adamw(unet.parameters(), cfg.unet_lr, cfg.unet_steps, warmup=200)
    start, loss = time.perf_counter(), torch.tensor(0.0)
    for step in range(1, cfg.unet_steps + 1):
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=gen)
        x0 = latents[idx]
        flip = torch.rand(len(idx), generator=gen) < cfg.unet_flip
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        which = caption_index[idx].clone()
        which[torch.rand(len(idx), generator=gen) < cfg.caption_dropout] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = draw_timesteps(len(idx), scheduler.config.num_train_timesteps, cfg.high_noise_share, gen)
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=contexts[which]).sample
        loss = F.mse_loss(pred, noise)
        _optimise(unet, loss, opt, sched)
        _log("unet", step, cfg.unet_steps, loss.item(), start)
    unet.eval()
    return unet, {"steps": cfg.unet_steps, "final_loss": round(loss.item(), 4), "seconds": time.perf_counter() - start}


def _load_images(paths: list[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size) images in [-1, 1] (box-downsampled)."""
    out = torch.empty(len(paths), 3, size, size)
    for i, path in enumerate(paths):
        image = load_image(path).resize((size, size), Image.Resampling.BOX)
        out[i] = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return out


def _clip_images(paths: list[Path]) -> torch.Tensor:
    """The training images as the stand-in CLIP's vision tower reads them."""
    transform = ClipTransform(architecture_config("tiny-clip").vision_config.image_size)
    return torch.stack([transform(load_image(p)) for p in paths])


def _sd_text_encoder(
    cfg: BaseConfig, clip: Any, clip_images: torch.Tensor | None, parts: list[tuple], tokenizer: Any, earlier: dict
) -> tuple[Any, dict]:
    """SD's text encoder and its record: trained on hard negatives (``cfg.text_steps`` > 0), else the continued
    stand-in's own, else the CLIP's text tower."""
    from transformers import CLIPTextModel

    if cfg.text_steps:
        return train_text_encoder(cfg, clip, clip_images, parts, tokenizer)
    if cfg.init:
        directory = Path(cfg.init) / "sd" / "text_encoder"
        encoder = CLIPTextModel.from_pretrained(directory, dtype=torch.float32, use_safetensors=True)
        return encoder, earlier.get("text_encoder", {"steps": 0, "from": "the CLIP's text tower"})
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder, {"steps": 0, "from": "the CLIP's text tower"}


def _save_half(model: Any, directory: Path) -> None:
    model.to(torch.float16).save_pretrained(directory)
    model.to(torch.float32)


def train_base(data: str | Path, out: str | Path, cfg: BaseConfig | None = None) -> dict[str, Any]:
    """Trains and saves the stand-in CLIP (``out/clip``) and Stable Diffusion (``out/sd``); returns the recipe
    and timings (also written to ``out/training.json``)."""

    cfg = cfg or BaseConfig()
    _cues(cfg.clip_cues), _cues(cfg.text_cues)  # a misspelt cue fails before any training
    if not 0 <= cfg.clip_name_share <= 0.5:  # names replace partial captions, which are half the texts
        raise ConfigError(f"--clip-name-share must lie in [0, 0.5], got {cfg.clip_name_share}")
    if not 0 <= cfg.unet_flip <= 1:
        raise ConfigError(f"--unet-flip is a share and must lie in [0, 1], got {cfg.unet_flip}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = Path(data)
    torch.manual_seed(cfg.seed)
    paths, captions, parts = _read_captions(root, "train")
    logger.info("%d training images from %s", len(paths), root)
    tokenizer = clip_tokenizer()
    images = _load_images(paths, cfg.image_size)
    unet_init, earlier = None, {}
    # the CLIP's view of the images, for the CLIP and the hard-negative text encoder (read once, only if needed)
    clip_images = _clip_images(paths) if not cfg.init or cfg.text_steps or cfg.clip_hard_steps else None
    if cfg.init:
        clip, vae, unet_init, earlier = _continuation(Path(cfg.init))
        clip_info, vae_info = earlier["clip"], earlier["vae"]
        scaling = float(vae.config.scaling_factor)
        raw = None
        if cfg.unet_steps:
            with torch.no_grad():
                raw = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    else:
        clip, clip_info = train_clip(cfg, clip_images, parts, tokenizer)
        vae, vae_info = train_vae(cfg, images)
        with torch.no_grad():
            raw = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
        scaling = float(1.0 / raw.std())
        vae.register_to_config(scaling_factor=scaling)
    if cfg.clip_hard_steps:
        hard = train_hard_negatives(
            clip, clip_images, parts, tokenizer, cues=_cues(cfg.clip_cues), steps=cfg.clip_hard_steps,
            lr=cfg.clip_hard_lr, batch=cfg.clip_batch, seed=cfg.seed + 4, name_share=cfg.clip_name_share,
            what="clip hard negatives",
        )  # fmt: skip
        clip_info = {**clip_info, "hard_negatives": [*clip_info.get("hard_negatives", []), hard]}

    text_encoder, text_info = _sd_text_encoder(cfg, clip, clip_images, parts, tokenizer, earlier)
    del clip_images
    text_encoder.eval().requires_grad_(False)
    unique = sorted(set(captions)) + [""]
    if raw is None:  # a continuation without UNet steps: the UNet as it was
        unet, unet_info = unet_init, earlier["unet"]
    else:
        lookup = {c: i for i, c in enumerate(unique)}
        with torch.no_grad():
            ids = tokenizer(unique, padding="max_length", max_length=77, return_tensors="pt").input_ids
            contexts = torch.cat([text_encoder(input_ids=ids[i : i + 64])[0] for i in range(0, len(ids), 64)])
        caption_index = torch.tensor([lookup[c] for c in captions])
        unet, unet_info = train_unet(cfg, raw * scaling, contexts, caption_index, lookup[""], unet_init)
    if cfg.init and cfg.unet_steps:  # the whole history: earlier UNet phases first
        unet_info = {
            "steps": earlier["unet"]["steps"] + unet_info["steps"],
            "final_loss": unet_info["final_loss"],
            "seconds": earlier["unet"]["seconds"] + unet_info["seconds"],
            "phases": [*earlier["unet"].get("phases", [earlier["recipe"]]), asdict(cfg)],
        }

    pipe = sd_pipeline(vae, text_encoder, unet, stand_in_scheduler())
    info = {
        "recipe": asdict(cfg),
        "data": str(root),
        "train_images": len(paths),
        "captions": len(unique) - 1,
        "vae_scaling_factor": scaling,
        "clip": clip_info,
        "vae": vae_info,
        "text_encoder": text_info,
        "unet": unet_info,
        "torch_threads": torch.get_num_threads(),
    }
    _save_standin(Path(out), clip, pipe, info)
    return info


def training_seconds(info: dict[str, Any]) -> float:
    """The training time of every phase a stand-in went through (its ``training.json``)."""
    clip = info["clip"]["seconds"] + sum(p["seconds"] for p in info["clip"].get("hard_negatives", []))
    return clip + sum(info[k].get("seconds", 0.0) for k in ("vae", "text_encoder", "unet"))


def _continuation(init: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The CLIP, VAE and UNet of a stand-in that training continues (``--init``), and its ``training.json``.

    Raises:
        CheckpointError: ``init`` is not a stand-in written by ``uniemo train base``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel

    if not all((init / part).exists() for part in ("training.json", "clip", "sd/vae", "sd/unet", "sd/text_encoder")):
        raise CheckpointError(f"{init} is not a stand-in written by `uniemo train base` (training.json, clip/, sd/)")
    earlier = json.loads((init / "training.json").read_text())
    clip = CLIPModel.from_pretrained(init / "clip", dtype=torch.float32, use_safetensors=True).eval()
    vae = AutoencoderKL.from_pretrained(init / "sd" / "vae", torch_dtype=torch.float32, use_safetensors=True)
    unet = UNet2DConditionModel.from_pretrained(init / "sd" / "unet", torch_dtype=torch.float32, use_safetensors=True)
    return clip, vae.eval(), unet, earlier


def _save_standin(out: Path, clip: Any, pipe: Any, info: dict[str, Any]) -> None:
    """Writes ``out/clip``, ``out/sd`` (float16, with the CLIP tokenizer) and ``out/training.json`` atomically."""
    with atomic_directory(out) as tmp:
        _save_half(clip, tmp / "clip")
        save_clip_tokenizer(tmp / "clip")
        for name in ("vae", "unet"):  # a continuation's parts were loaded from a path: keep it out of the files
            getattr(pipe, name).register_to_config(_name_or_path=f"uniemo-standin/sd/{name}")
        pipe.to(torch.float16)
        pipe.save_pretrained(tmp / "sd")
        pipe.to(torch.float32)
        index = json.loads((tmp / "sd" / "model_index.json").read_text())  # its own DDPM samples it best
        (tmp / "sd" / "model_index.json").write_text(
            json.dumps({**index, PREFERRED_SCHEDULER: "model"}, indent=2) + "\n"
        )
        save_clip_tokenizer(tmp / "sd" / "tokenizer")
        (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("stand-in saved to %s", out)
