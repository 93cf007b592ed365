"""Losses of the understanding stage (METHOD §2)."""

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
