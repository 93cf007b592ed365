"""Building blocks of the generation half (METHOD §3–§4): α, the mappers, the fused condition, its injection.

Shape legend:
    B    batch size
    D    vision width of the understanding model
    d_t  attribute text-embedding width (the CLIP text tower that L_S / L_O align to)
    V    attribute vocabulary size (scenes or objects)
    K    emotions
    d_c  token-embedding width of a diffusion model's text encoder (768 for SD 1.5; SDXL: 768 and 1280)
    L    prompt length in tokens (77)

The joint trainer and the generation pipeline (issue 3) are built on these; each piece here is tested alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------------------------
# The emotional correlation coefficient α (METHOD §3)


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


@torch.no_grad()
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
    emotion_columns = prior[:, emotions].T.to(distribution.dtype)  # (B, V): P(e*_b | a)
    if mode == "soft":
        return (distribution * emotion_columns).sum(dim=-1)
    if mode == "hard":
        return emotion_columns.gather(1, distribution.argmax(dim=-1, keepdim=True)).squeeze(1)
    raise ValueError(f"alpha mode must be 'soft' or 'hard', got {mode!r}")


# --------------------------------------------------------------------------------------------------------------
# Mappers and the fused condition c (METHOD §4)


class Mapper(nn.Sequential):
    """The paper's two-layer MLP: Linear(D, hidden) → ReLU → Linear(hidden, d_c)."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 1024) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class EmotionFusion(nn.Module):
    """M_E, M_S, M_O and c = M_E(cls) + α_S·M_S(s) + α_O·M_O(o).

    Args:
        dim: D.
        condition_dims: d_c of each text encoder the condition enters (SD 1.5: ``(768,)``; SDXL:
            ``(768, 1280)``); each mapper produces all of them at once, :meth:`split` separates them.
        hidden: the mappers' hidden width.
    """

    def __init__(self, dim: int, condition_dims: Sequence[int] = (768,), hidden: int = 1024) -> None:
        super().__init__()
        self.condition_dims = tuple(condition_dims)
        total = sum(self.condition_dims)
        self.map_cls, self.map_scene, self.map_object = (Mapper(dim, total, hidden) for _ in range(3))

    def forward(
        self,
        cls: torch.Tensor,
        scene: torch.Tensor,
        obj: torch.Tensor,
        alpha_scene: torch.Tensor,
        alpha_object: torch.Tensor,
    ) -> torch.Tensor:
        """cls, scene, obj (B, D); alpha_* (B,) → c (B, Σ d_c)."""
        c = self.map_cls(cls)
        c = c + alpha_scene[:, None].to(c.dtype) * self.map_scene(scene)
        return c + alpha_object[:, None].to(c.dtype) * self.map_object(obj)

    def split(self, condition: torch.Tensor) -> list[torch.Tensor]:
        """(B, Σ d_c) → one (B, d_c) per text encoder."""
        return list(condition.split(self.condition_dims, dim=-1))


def fuse_conditions(conditions: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Emotion fusion (Fig. 10b): Σ_k w_k c_k with weights ≥ 0 normalised to sum to 1.

    Args:
        conditions: (E, Σ d_c), one condition per emotion.
        weights: E non-negative weights with a positive sum.
    """
    w = torch.as_tensor(list(weights), dtype=conditions.dtype, device=conditions.device)
    if w.shape != conditions.shape[:1] or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"need {conditions.shape[0]} non-negative weights with a positive sum, got {list(weights)}")
    return (w / w.sum()) @ conditions


# --------------------------------------------------------------------------------------------------------------
# Injection: c becomes the placeholder token's input embedding (METHOD §4)


class PlaceholderInjector:
    """Replaces a placeholder token's input embedding by a condition vector, in any CLIP text encoder.

    A placeholder token (e.g. ``<emotion>``) is added to the tokenizer; inside :meth:`inject`, a forward hook on
    the encoder's token-embedding module puts each prompt's condition in the placeholder's row. Everything
    after the embedding (positions, causal attention, final norm, pooling) is the encoder's own, and gradients
    reach the condition by ordinary autograd, whatever the batch size.

    Args:
        text_encoder: a ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` (kept frozen by the caller).
        tokenizer: its tokenizer.
        placeholder: the placeholder's text.
    """

    def __init__(self, text_encoder: Any, tokenizer: Any, placeholder: str = "<emotion>") -> None:
        self.text_encoder, self.tokenizer, self.placeholder = text_encoder, tokenizer, placeholder
        if placeholder not in tokenizer.get_vocab():
            tokenizer.add_tokens([placeholder])
        self.token_id = tokenizer.convert_tokens_to_ids(placeholder)
        embeddings = text_encoder.get_input_embeddings()
        if embeddings.num_embeddings <= self.token_id:
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, L) token ids, padded to the tokenizer's maximum length; each prompt holds the placeholder once.

        Raises:
            ValueError: a prompt without the placeholder, or with it more than once.
        """
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True, return_tensors="pt").input_ids
        counts = (ids == self.token_id).sum(dim=1)
        if bool((counts != 1).any()):
            bad = prompts[int((counts != 1).nonzero()[0])]
            raise ValueError(f"each prompt must hold '{self.placeholder}' exactly once: {bad!r}")
        return ids

    @contextlib.contextmanager
    def inject(self, input_ids: torch.Tensor, condition: torch.Tensor) -> Iterator[None]:
        """Within the block, the text encoder sees ``condition`` (B, d_c) in the placeholder rows of ``input_ids``."""
        mask = (input_ids == self.token_id).unsqueeze(-1)  # (B, L, 1)

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            cond = condition[:, None, :].to(device=output.device, dtype=output.dtype)  # (B, 1, d_c)
            return torch.where(mask.to(output.device), cond, output)  # (B, L, d_c)

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def encode(self, prompts: Sequence[str], condition: torch.Tensor) -> Any:
        """The text encoder's output for ``prompts`` with ``condition`` (B, d_c) as the placeholder's embedding."""
        ids = self.tokenize(prompts).to(condition.device)
        with self.inject(ids, condition):
            return self.text_encoder(input_ids=ids)


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
