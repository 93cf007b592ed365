"""Losses: L_S / L_O of the understanding stage (METHOD §2) and L_cond of the joint stage (METHOD §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
