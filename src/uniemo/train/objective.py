"""L_Joint, the objective of joint training (METHOD §4), of one batch: w_U·L_U + w_cond·L_cond + w_θ·L(θ).

The understanding forward gives L_U (:func:`uniemo.losses.understanding_loss`) and the condition c; c takes the
placeholder's place in the training prompt, and L(θ) (:func:`uniemo.losses.diffusion_loss`) is the frozen UNet's
noise-prediction loss on the images' VAE latents under that prompt; L_cond (:func:`uniemo.losses.condition_loss`)
aligns c with the emotion labels. Used by joint training, the conditioning diagnostic and
``benchmarks/joint_step.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from uniemo.losses import condition_loss, diffusion_loss, understanding_loss
from uniemo.models.placeholder import PromptEncoder, sdxl_time_ids
from uniemo.models.uniemo import UniEmoModel


def model_temperature(model: UniEmoModel) -> float:
    return model.config.temperature


@dataclass
class JointObjective:
    """L_Joint of one batch (METHOD §4), used by training and by ``benchmarks/joint_step.py``:
    understanding forward → L_U and L_cond; the images' VAE latents (no gradient) → c in the placeholder's place
    → L(θ) through the frozen text encoder and UNet; L_Joint = w_U·L_U + w_cond·L_cond + w_θ·L(θ).

    Attributes:
        encoder / vae / unet: the frozen diffusion model's parts (already in ``weight_dtype``).
        noise_scheduler: the DDPM scheduler that draws the training noise.
        joint / weights: the run's ``joint`` and ``loss`` settings.
        weight_dtype: the frozen parts' dtype (float16/bfloat16 under mixed precision).
    """

    encoder: PromptEncoder
    vae: Any
    unet: Any
    noise_scheduler: Any
    joint: Any
    weights: Any
    weight_dtype: torch.dtype = torch.float32
    scene_vocab: list[str] = field(default_factory=list)
    object_vocab: list[str] = field(default_factory=list)

    def __call__(
        self, model: Any, base: UniEmoModel, batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(L_Joint, its detached parts) for ``batch``; ``model`` is ``base`` or its distributed wrapper.

        ``batch`` holds ``pixel_values`` (B, 3, S, S) for CLIP, ``diffusion_pixels`` (B, 3, R, R) in [-1, 1],
        ``label`` (B,) and ``scene_id`` / ``object_id`` (B,) (-1: no annotation); ``gen`` draws the latents'
        sample, the noise and the timesteps."""
        j = self.joint
        labels = batch["label"]
        forward = model(batch["pixel_values"], labels)
        out, condition = forward.understanding, forward.condition
        vocab = {"scene": base.understanding.scene_vocab_embeds, "object": base.understanding.object_vocab_embeds}
        loss_u, parts = understanding_loss(out, batch, vocab, self.weights, model_temperature(base))
        loss_cond = self.condition_term(base, condition, labels)
        if j.diffusion_weight == 0:  # L_U (and L_cond) alone: the implicit-feedback control, without the UNet's cost
            loss_theta = loss_u.new_zeros(())
        else:
            latents = self.latents(batch["diffusion_pixels"], gen)
            contents = self.contents(batch, gen) if j.content_prompt > 0 else None
            loss_theta = self.diffusion_term(latents, self.context(condition, len(labels), contents), gen)
        loss = j.understanding_weight * loss_u + j.diffusion_weight * loss_theta
        if loss_cond is not None:
            loss = loss + j.condition_weight * loss_cond
            parts["loss/cond"] = loss_cond.detach()
        parts.update({"loss/understanding": loss_u.detach(), "loss/diffusion": loss_theta.detach()})
        return loss, parts

    def latents(self, pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Scaled VAE latents (B, C, h, h) of diffusion-view pixels (B, 3, R, R) in [-1, 1], sampled from ``gen``."""
        with torch.no_grad():
            device = next(self.vae.parameters()).device
            dist = self.vae.encode(pixels.to(device, dtype=self.weight_dtype)).latent_dist
            return dist.sample(generator=gen) * float(self.vae.config.scaling_factor)

    def contents(self, batch: dict[str, Any], gen: torch.Generator) -> list[str | None]:
        """Per image, with probability ``joint.content_prompt``, the words naming its annotated scene and object
        ("a forest with a tent"; None otherwise, or when it has neither), drawn from ``gen``."""
        draws = torch.rand(len(batch["label"]), generator=gen).tolist()
        out: list[str | None] = []
        for draw, s, o in zip(draws, batch["scene_id"].tolist(), batch["object_id"].tolist()):
            scene = self.scene_vocab[s] if 0 <= s < len(self.scene_vocab) else None
            obj = self.object_vocab[o] if 0 <= o < len(self.object_vocab) else None
            out.append(content_words(scene, obj) if draw < self.joint.content_prompt else None)
        return out

    def context(
        self, condition: torch.Tensor | None, n: int, contents: list[str | None] | None = None
    ) -> dict[str, Any]:
        """The UNet's conditioning for ``n`` images: the training prompt with c (N, Σ d_c) in the placeholder's
        place — content and placeholder joined by ``joint.transfer_template`` where ``contents`` names content (as
        the pipeline's emotion transfer joins them), else the template — or, with ``condition=None``, the empty
        prompt (the diagnostic's control)."""
        j = self.joint
        if condition is None:
            text = self.encoder.encode([""] * n)
        else:
            plain = j.template.format(j.placeholder)
            joined = j.transfer_template
            prompts = [
                joined.format(content=c, placeholder=j.placeholder) if c else plain for c in contents or [None] * n
            ]
            text = self.encoder.encode(prompts, condition.to(self.weight_dtype))
        context: dict[str, Any] = {"prompt_embeds": text["prompt_embeds"], "added": None}
        if self.encoder.is_xl:
            device = text["prompt_embeds"].device
            context["added"] = {
                "text_embeds": text["pooled_prompt_embeds"],
                "time_ids": sdxl_time_ids(n, j.resolution, device, self.weight_dtype),
            }
        return context

    def diffusion_term(self, latents: torch.Tensor, context: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
        """L(θ) of ``latents`` (N, C, h, h) under ``context`` (:meth:`context`), noise and timesteps from ``gen``."""
        return diffusion_loss(
            self.unet, self.noise_scheduler, latents, context["prompt_embeds"], gen, context["added"]
        )

    def condition_term(self, model: UniEmoModel, condition: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """L_cond of c (B, Σ d_c) with emotion labels (B,), or None when ``joint.condition_loss`` is ``none``."""
        j = self.joint
        logits = model.condition_logits(condition) if j.condition_loss == "ce" else None
        return condition_loss(j.condition_loss, condition, labels, j.condition_temperature, logits)


def content_words(scene: str | None, obj: str | None) -> str | None:
    """Content as a caption names it, without palette or emotion: "a forest with a tent", "a beach", "a boat"."""
    if not scene and not obj:
        return None
    head = scene or obj
    text = f"{'an' if head[0] in 'aeiou' else 'a'} {head}"
    if scene and obj:
        text += f" with {'an' if obj[0] in 'aeiou' else 'a'} {obj}"
    return text
