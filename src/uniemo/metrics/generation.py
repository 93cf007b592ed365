"""Generation metrics as pure functions (METHOD §7): FID, the pairs for LPIPS and Sem-D, Emo-A, Sem-C and Sem-D.

Nothing here runs a network: the functions take features, probabilities or embeddings that a caller computed
(Inception pool features for FID, classifier probabilities for Emo-A and Sem-C, projected CLIP image embeddings
for Sem-D). The LPIPS network is in :mod:`uniemo.metrics.lpips`; :func:`to_signed_pixels` prepares its input.

Symbols: N images, d feature dimensions, K classes, P pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from uniemo.errors import UniEmoError

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]


def _as_float64(values: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """Returns ``values`` as a float64 array of ``ndim`` dimensions, or raises a UniEmoError naming it."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise UniEmoError(f"{name} must have {ndim} dimensions, got shape {tuple(array.shape)}")
    return array


def _as_indices(values: ArrayLike, name: str) -> np.ndarray:
    """Returns ``values`` as a 1-D int64 array, or raises a UniEmoError naming it."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise UniEmoError(f"{name} must be a 1-D array of integer class indices, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------- FID
def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a set of features, in float64.

    Args:
        features: (N, d) features, a tensor or an array; N ≥ 2.

    Returns:
        The mean (d,) and the covariance (d, d) with the N − 1 denominator.

    Raises:
        UniEmoError: for fewer than two samples or a shape other than (N, d).
    """
    x = _as_float64(features, "features", 2)
    if x.shape[0] < 2:
        raise UniEmoError(f"FID statistics need at least 2 samples, got {x.shape[0]}: generate or load more images")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix through its eigendecomposition."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between two Gaussians: ||mu1 − mu2||² + tr(S1) + tr(S2) − 2 tr((S1 S2)^½).

    The trace of (S1 S2)^½ is the sum of the square roots of the eigenvalues of S1^½ S2 S1^½, a symmetric PSD
    matrix with the same eigenvalues as S1 S2; computed that way there is no complex round-off (as sqrtm gives)
    to discard. Eigenvalues below 0 from round-off are clipped to 0, and so is a tiny negative result.

    Args:
        mu1: (d,) mean of the first set.
        sigma1: (d, d) covariance of the first set.
        mu2: (d,) mean of the second set.
        sigma2: (d, d) covariance of the second set.

    Returns:
        The distance (float64 arithmetic), ≥ 0.
    """
    m1, m2 = _as_float64(mu1, "mu1", 1), _as_float64(mu2, "mu2", 1)
    s1, s2 = _as_float64(sigma1, "sigma1", 2), _as_float64(sigma2, "sigma2", 2)
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise UniEmoError(
            f"Fréchet distance needs means (d,) and covariances (d, d) of one d, got {m1.shape}, {s1.shape}, "
            f"{m2.shape}, {s2.shape}"
        )
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def fid_from_features(real: ArrayLike, fake: ArrayLike) -> float:
    """FID between two sets of features (Inception-V3 pool features for the standard FID).

    Args:
        real: (N_real, d) features of the reference images.
        fake: (N_fake, d) features of the generated images.

    Returns:
        The Fréchet distance between the two sets' Gaussians.
    """
    mu_real, sigma_real = feature_statistics(real)
    mu_fake, sigma_fake = feature_statistics(fake)
    if mu_real.shape != mu_fake.shape:
        raise UniEmoError(f"real and fake features differ in dimension: {mu_real.shape[0]} vs {mu_fake.shape[0]}")
    return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake)


# --------------------------------------------------------------------------------------------------------- pairs
def sample_pairs(n: int, num_pairs: int, seed: int = 0) -> np.ndarray:
    """Distinct unordered pairs of image indices, drawn without replacement with a fixed seed.

    Pairs are drawn as ranks in the row-major list of all pairs (0, 1), (0, 2), …, (n − 2, n − 1) with
    ``numpy.random.default_rng(seed)``, so the same (n, num_pairs, seed) always gives the same pairs, and no
    list of all n(n − 1)/2 pairs is built for large n.

    Args:
        n: number of images.
        num_pairs: number of pairs wanted.
        seed: seed of the generator.

    Returns:
        (P, 2) int64 pairs (i, j) with i < j, sorted; all n(n − 1)/2 pairs when there are at most
        ``num_pairs`` of them, and an empty (0, 2) array when n < 2.
    """
    if n < 2 or num_pairs <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    total = n * (n - 1) // 2
    if total <= num_pairs:
        rows, cols = np.triu_indices(n, k=1)
        return np.stack([rows, cols], axis=1).astype(np.int64)
    ranks = np.sort(np.random.default_rng(seed).choice(total, size=num_pairs, replace=False))
    starts = np.arange(n, dtype=np.int64)
    starts = starts * n - starts * (starts + 1) // 2  # rank of pair (i, i + 1)
    first = np.searchsorted(starts, ranks, side="right") - 1
    second = first + 1 + (ranks - starts[first])
    return np.stack([first, second], axis=1).astype(np.int64)


def _check_pairs(pairs: ArrayLike, n: int) -> np.ndarray:
    array = np.asarray(pairs.cpu().numpy() if isinstance(pairs, torch.Tensor) else pairs, dtype=np.int64)
    array = array.reshape(-1, 2) if array.size == 0 else array
    if array.ndim != 2 or array.shape[1] != 2:
        raise UniEmoError(f"pairs must have shape (P, 2), got {tuple(array.shape)}")
    if len(array) == 0:
        raise UniEmoError("no pairs to average over: a set needs at least 2 images for a diversity metric")
    if array.min() < 0 or array.max() >= n:
        raise UniEmoError(f"pairs index images 0..{n - 1} only, got indices {array.min()}..{array.max()}")
    return array


# ------------------------------------------------------------------------------------------------------- Emo-A
def _check_probs(probs: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = _as_float64(probs, "probs", 2)
    t = _as_indices(targets, "targets")
    if len(p) != len(t):
        raise UniEmoError(f"probs has {len(p)} rows but targets has {len(t)} entries")
    if len(t) == 0:
        raise UniEmoError("no images to score: probs and targets are empty")
    if t.min() < 0 or t.max() >= p.shape[1]:
        raise UniEmoError(f"targets must be class indices in 0..{p.shape[1] - 1}, got {t.min()}..{t.max()}")
    return p, t


def emo_a(probs: ArrayLike, targets: ArrayLike) -> float:
    """Emo-A: the fraction of generated images whose predicted emotion is their target emotion.

    Args:
        probs: (N, K) emotion probabilities (or logits: only the argmax matters) of the generated images.
        targets: (N,) target emotion index of each image.

    Returns:
        Accuracy in [0, 1].
    """
    p, t = _check_probs(probs, targets)
    return float(np.mean(p.argmax(axis=1) == t))


def target_probabilities(probs: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """The Emo-A score of Alg. 1: each image's probability of its target emotion.

    Args:
        probs: (N, K) emotion probabilities of the generated images.
        targets: (N,) target emotion index of each image.

    Returns:
        (N,) float64 probabilities p[i, targets[i]].
    """
    p, t = _check_probs(probs, targets)
    return p[np.arange(len(t)), t]


# ------------------------------------------------------------------------------------------------ Sem-C, Sem-D
def semantic_clarity_scores(scene_probs: ArrayLike, object_probs: ArrayLike) -> np.ndarray:
    """Per-image semantic clarity: the larger of the top scene probability and the top object probability.

    Args:
        scene_probs: (N, K_scene) softmax probabilities of a scene classifier (Places365 classes).
        object_probs: (N, K_object) softmax probabilities of an object classifier (ImageNet classes).

    Returns:
        (N,) float64 scores max(max_j p_scene[i, j], max_j p_object[i, j]).
    """
    scene = _as_float64(scene_probs, "scene_probs", 2)
    objects = _as_float64(object_probs, "object_probs", 2)
    if len(scene) != len(objects):
        raise UniEmoError(f"scene_probs has {len(scene)} rows but object_probs has {len(objects)}")
    if len(scene) == 0 or scene.shape[1] == 0 or objects.shape[1] == 0:
        raise UniEmoError("no probabilities to score: scene_probs or object_probs is empty")
    return np.maximum(scene.max(axis=1), objects.max(axis=1))


def semantic_clarity(scene_probs: ArrayLike, object_probs: ArrayLike) -> float:
    """Sem-C: the mean over images of :func:`semantic_clarity_scores`."""
    return float(semantic_clarity_scores(scene_probs, object_probs).mean())


def pair_distances_mse(embeddings: ArrayLike, pairs: ArrayLike) -> np.ndarray:
    """Mean squared difference between the embeddings of each pair.

    Args:
        embeddings: (N, d) embeddings, used as given (no normalisation).
        pairs: (P, 2) image indices, e.g. from :func:`sample_pairs`.

    Returns:
        (P,) float64 values mean_k (e[i, k] − e[j, k])².
    """
    e = _as_float64(embeddings, "embeddings", 2)
    p = _check_pairs(pairs, len(e))
    return np.mean((e[p[:, 0]] - e[p[:, 1]]) ** 2, axis=1)


def semantic_diversity(embeddings: ArrayLike, pairs: ArrayLike) -> float:
    """Sem-D: the mean over pairs of the MSE between the pair's CLIP image embeddings.

    Args:
        embeddings: (N, d) projected CLIP image embeddings, NOT normalised (the metric is defined on the raw
            projection; normalising would change its scale).
        pairs: (P, 2) image indices, the same pairs as for LPIPS.

    Returns:
        Sem-D.
    """
    return float(pair_distances_mse(embeddings, pairs).mean())


# ----------------------------------------------------------------------------------------------------- helpers
def summary(values: ArrayLike) -> dict[str, float | int]:
    """Mean and spread of a set of values (e.g. a metric per emotion).

    Args:
        values: 1-D values.

    Returns:
        ``{"mean", "std", "min", "max", "n"}``; std is the population standard deviation (ddof 0). The
        statistics are NaN when there are no values.
    """
    v = _as_float64(values, "values", 1)
    if v.size == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()), "n": v.size}


def to_signed_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Images as LPIPS expects them: RGB, resized (bicubic) to size × size, scaled to [-1, 1].

    Args:
        images: N PIL images of any mode and size.
        size: side of the output images in pixels.

    Returns:
        (N, 3, size, size) float32 tensor in [-1, 1].
    """
    if size <= 0:
        raise UniEmoError(f"size must be positive, got {size}")
    if len(images) == 0:
        return torch.zeros(0, 3, size, size)
    arrays = [
        np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        for image in images
    ]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, 3, size, size) in [0, 255]
    return pixels / 127.5 - 1.0
