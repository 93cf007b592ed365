"""Every loss of the method: L_U = L_CE + L_S + L_O of the understanding stage (METHOD §2), and the terms of
L_Joint = w_U·L_U + w_cond·L_cond + w_θ·L(θ) of the joint stage (METHOD §4, eq. 10): L_cond and L(θ).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def understanding_loss(
    out: Any, batch: dict[str, Any], vocab_embeds: dict[str, torch.Tensor], weights: Any, temperature: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_U = ce·L_CE + scene·L_S + object·L_O (METHOD §2) and its detached parts for logging.

    Args:
        out: the model's :class:`UnderstandingOutput` for the batch.
        batch: ``label``, ``scene_id``, ``object_id``.
        vocab_embeds: ``scene`` / ``object`` → (V, d_t) attribute text embeddings (empty: that loss is off).
        weights: the :class:`LossConfig`.
    """
    loss_ce = F.cross_entropy(out.logits.float(), batch["label"], label_smoothing=weights.label_smoothing)
    loss = weights.ce_weight * loss_ce
    parts = {"loss/ce": loss_ce.detach()}
    for which, embeds, weight in (
        ("scene", out.scene_embeds, weights.scene_weight),
        ("object", out.object_embeds, weights.object_weight),
    ):
        vocab = vocab_embeds[which]
        if embeds is None or not len(vocab):
            continue
        term = attribute_infonce(embeds, batch[f"{which}_id"], vocab, temperature)
        if term is not None:
            loss = loss + weight * term
            parts[f"loss/{which}"] = term.detach()
    return loss, parts


def attribute_infonce(
    embeds: torch.Tensor, target_ids: torch.Tensor, vocab_embeds: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor | None:
    """L_S / L_O (paper eq. 4): InfoNCE between query embeddings and the batch's attribute-name embeddings.

    The candidates are the distinct names present in the batch, each once, so two images of the same scene
    are never each other's negatives. Samples without the attribute (id -1) are left out.

    Args:
        embeds: (B, d_t) L2-normalised g(q) of each image.
        target_ids: (B,) index of each image's name in the vocabulary, -1 where the attribute is missing.
        vocab_embeds: (V, d_t) L2-normalised text embeddings of the vocabulary.
        temperature: τ.

    Returns:
        The mean loss over the samples that have the attribute, or None when none has it.
    """
    valid = target_ids >= 0
    if not bool(valid.any()):
        return None
    ids = target_ids[valid]
    names, target = torch.unique(ids, return_inverse=True)  # candidates (C,), target (B',)
    logits = embeds[valid] @ vocab_embeds[names].to(embeds.dtype).T / temperature  # (B', C)
    return F.cross_entropy(logits.float(), target)


def supervised_contrastive(
    embeds: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor | None:
    """L_cond (METHOD §4): supervised contrastive loss over the batch, positives = other samples of the same emotion.

    For each anchor i with at least one positive: −mean_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) );
    the loss is the mean over those anchors.

    Args:
        embeds: (B, d) conditions (normalised here).
        labels: (B,) emotions.

    Returns:
        The loss, or None when no sample has a positive in the batch.
    """
    z = F.normalize(embeds.float(), dim=-1)
    sim = z @ z.T / temperature  # (B, B)
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask  # (B, B)
    anchors = positives.any(dim=1)
    if not bool(anchors.any()):
        return None
    log_prob = sim - torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)  # (B, B)
    per_anchor = -(log_prob * positives).sum(dim=1)[anchors] / positives.sum(dim=1)[anchors]
    return per_anchor.mean()


def condition_loss(
    kind: str, condition: torch.Tensor, labels: torch.Tensor, temperature: float, logits: torch.Tensor | None = None
) -> torch.Tensor | None:
    """L_cond (METHOD §4) of conditions c (B, Σ d_c) with emotions ``labels`` (B,): ``supcon``
    (:func:`supervised_contrastive` on c), ``ce`` (cross-entropy of the condition head's ``logits`` (B, K)), or
    ``none`` (None: the default, measured best on the stand-in; docs/findings.md)."""
    if kind == "supcon":
        return supervised_contrastive(condition, labels, temperature)
    if kind == "ce":
        if logits is None:
            raise ValueError("condition_loss='ce' needs the condition head's logits")
        return F.cross_entropy(logits.float(), labels)
    return None


def diffusion_loss(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator | None = None,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """L(θ): MSE between the UNet's prediction and its target, at uniformly drawn timesteps.

    The target is the noise for ``prediction_type="epsilon"`` and the velocity for ``"v_prediction"``.

    Args:
        unet: a ``UNet2DConditionModel`` (frozen by the caller; gradients still reach ``context``).
        scheduler: a diffusers noise scheduler (its ``config.prediction_type`` decides the target).
        latents: (B, C, h, h) scaled VAE latents of the training images.
        context: (B, L, d_c) the text encoder's output, the UNet's cross-attention context.
        generator: draws the noise and the timesteps (reproducible when seeded).
        added_cond_kwargs: SDXL's ``text_embeds`` (pooled) and ``time_ids``.
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
    extra = {"added_cond_kwargs": added_cond_kwargs} if added_cond_kwargs is not None else {}
    prediction = unet(noisy, timesteps, encoder_hidden_states=context, **extra).sample  # (B, C, h, h)
    return F.mse_loss(prediction.float(), target.float())
