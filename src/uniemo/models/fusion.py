"""Building blocks of the generation half (METHOD §3–§5): the priors and α, the mappers and the fused condition,
the emotion space, and the injection of the condition into a text encoder.

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


def emotion_space(
    features: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int, bank: int = 0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Per-emotion mean and standard deviation of each feature (METHOD §5: the emotion space), and optionally a
    bank of real feature sets per emotion.

    Args:
        features: name → (N, D) features of the training images (``cls``, ``scene``, ``object``).
        labels: (N,) emotions.
        bank: M, how many images' features to keep per emotion (0: none); drawn without replacement with a fixed
            ``seed`` (with repeats when an emotion has fewer than M images). Row m of every feature's bank comes
            from the same image, so a bank entry is a real (cls, s, o) triple.

    Returns:
        ``{name}_mean`` and ``{name}_std``, each (K, D) (an emotion with fewer than two images has std 0), and with
        ``bank`` also ``{name}_bank`` (K, M, D).

    Raises:
        ValueError: an emotion has no image.
    """
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = [int(k) for k in (counts == 0).nonzero().flatten()]
        raise ValueError(f"no training image of emotion index {missing}: its emotion space would be empty")
    space = {}
    generator = torch.Generator().manual_seed(seed)
    members = []
    for k in range(num_classes):
        own = (labels == k).nonzero().flatten()  # (n_k,)
        order = own[torch.randperm(len(own), generator=generator)]
        members.append(order.repeat((bank + len(own) - 1) // len(own))[:bank] if bank else order[:0])
    for name, x in features.items():
        x = x.float()
        space[f"{name}_mean"] = torch.stack([x[labels == k].mean(0) for k in range(num_classes)])
        space[f"{name}_std"] = torch.stack(
            [x[labels == k].std(0) if counts[k] > 1 else torch.zeros(x.shape[1]) for k in range(num_classes)]
        )
        if bank:
            space[f"{name}_bank"] = torch.stack([x[m] for m in members])  # (K, M, D)
    return space


def sample_emotion_space(
    space: dict[str, torch.Tensor], emotions: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """One feature set per requested emotion e (B,) → name → (B, D): from a bank (``{name}_bank`` (K, M, D)), a
    uniformly drawn real image's features, the same row for every feature name; otherwise each feature
    ~ N(μ_e, σ_e²), the paper's diagonal Gaussian."""
    names = [k[: -len("_mean")] for k in space if k.endswith("_mean")]
    out = {}
    if all(f"{name}_bank" in space for name in names):
        size = space[f"{names[0]}_bank"].shape[1]
        rows = torch.randint(0, size, (len(emotions),), generator=generator).to(emotions.device)
        return {name: space[f"{name}_bank"][emotions, rows] for name in names}
    for name in names:
        mean, std = space[f"{name}_mean"][emotions], space[f"{name}_std"][emotions]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        out[name] = mean + std * noise.to(mean.device)
    return out


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
        # Checkpoints with the legacy eos_token_id 2 (SDXL's second encoder, older CLIP configs) pool at the
        # highest token id, which is now the placeholder: pool at the real end-of-text token instead.
        for module in text_encoder.modules():
            if getattr(module, "eos_token_id", None) == 2:
                module.eos_token_id = tokenizer.eos_token_id

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
