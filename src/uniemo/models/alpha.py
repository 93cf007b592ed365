"""The emotional correlation coefficient α and the attribute–emotion priors behind it (METHOD §3).

α_S = Σ_a π_S(a)·P(e* | a): how strongly the scene the expert queries hold speaks for the target emotion e*
(α_O alike for objects). π is read from the queries' attribute embeddings against the vocabulary's text
embeddings; the prior P(e | a) is counted from annotations (:func:`cooccurrence_prior`) or read by a small head
trained on CLIP image features (:func:`classifier_prior`).

Shape legend:
    B    batch size
    d_t  attribute text-embedding width
    V    attribute vocabulary size (scenes or objects)
    K    emotions
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def cooccurrence_prior(
    attribute_ids: Sequence[Sequence[int]], labels: Sequence[int], vocab_size: int, num_classes: int
) -> torch.Tensor:
    """P(e | a) = (count(a, e) + 1) / (count(a) + K) from training annotations (the released code's table).

    Args:
        attribute_ids: per training image, the vocabulary indices of its attributes (a scene: one; objects: all).
        labels: per training image, its emotion index.
        vocab_size: V.
        num_classes: K.

    Returns:
        (V, K) rows that sum to 1.
    """
    counts = torch.ones(vocab_size, num_classes, dtype=torch.float64)  # Laplace smoothing: the +1
    for ids, label in zip(attribute_ids, labels):
        for a in ids:
            if a >= 0:
                counts[a, label] += 1
    return (counts / counts.sum(dim=1, keepdim=True)).float()


def attribute_distribution(
    embeds: torch.Tensor, vocab_embeds: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """π: which attribute each query set holds, softmax(g(q)·Zᵀ / τ).

    Args:
        embeds: (B, d_t) L2-normalised g_S(s) or g_O(o).
        vocab_embeds: (V, d_t) L2-normalised text embeddings of the vocabulary.

    Returns:
        (B, V) probabilities.
    """
    return (embeds @ vocab_embeds.to(embeds.dtype).T / temperature).float().softmax(dim=-1)


def correlation_coefficient(
    distribution: torch.Tensor, prior: torch.Tensor, emotions: torch.Tensor, mode: str = "soft"
) -> torch.Tensor:
    """α = Σ_a π(a)·P(e* | a) (``soft``) or P(e* | argmax π) (``hard``); detached, it weights and does not train.

    Args:
        distribution: (B, V) π.
        prior: (V, K) P(e | a).
        emotions: (B,) the target emotion e* of each sample.

    Returns:
        (B,) α.
    """
    with torch.no_grad():
        emotion_columns = prior[:, emotions].T.to(distribution.dtype)  # (B, V): P(e*_b | a)
        if mode == "soft":
            return (distribution * emotion_columns).sum(dim=-1)
        if mode == "hard":
            return emotion_columns.gather(1, distribution.argmax(dim=-1, keepdim=True)).squeeze(1)
        raise ValueError(f"alpha mode must be 'soft' or 'hard', got {mode!r}")


class PriorHead(nn.Sequential):
    """The paper's attribute–emotion prior network h: two fully connected layers on frozen CLIP features."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def train_prior_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 256,
    hidden: int = 512,
    seed: int = 0,
) -> PriorHead:
    """Trains h on L2-normalised CLIP image embeddings (N, d) of the training images with cross-entropy."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = PriorHead(features.shape[1], num_classes, hidden)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    x = F.normalize(features.float(), dim=-1)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = F.cross_entropy(head(x[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


def classifier_prior(head: PriorHead, text_embeds: torch.Tensor) -> torch.Tensor:
    """P(· | a) = softmax(h(t_a)) for each attribute name's L2-normalised CLIP text embedding (V, d) → (V, K).

    CLIP puts images and texts in one space, so h, trained on images, reads the emotion a name evokes.
    """
    with torch.no_grad():
        return head(F.normalize(text_embeds.float(), dim=-1)).softmax(dim=-1)
