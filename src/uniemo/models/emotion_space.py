"""The emotion space (METHOD §5): per emotion, the distribution of (cls, s, o) features that generation samples a
condition from; and emotion fusion, a weighted sum of conditions (paper Fig. 10b).

Shape legend:
    N    training images
    B    requested samples
    D    vision width of the understanding model
    K    emotions
    M    real feature sets kept per emotion (``bank``)
    E    emotions in a fusion
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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


def agreeing(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) mask of the images whose predicted emotion is their label, plus every image of an emotion none of whose
    images agrees (so that each emotion keeps a space)."""
    keep = predictions == labels
    agreed = torch.bincount(labels[keep], minlength=num_classes)  # (K,)
    return keep | (agreed[labels] == 0)


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
