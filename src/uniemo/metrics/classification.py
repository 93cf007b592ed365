"""Understanding metrics (METHOD §7): top-1, per-class and 2-class accuracy, and the confusion matrix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uniemo.constants import positive_mask
from uniemo.plotting import pyplot, save_figure


@dataclass
class ClassificationReport:
    """Accuracy figures of one evaluation.

    Attributes:
        num_samples: N, the images evaluated.
        accuracy: top-1 accuracy in [0, 1].
        per_class_accuracy: class name → accuracy (recall) of that class (NaN where the class has no image).
        sentiment_accuracy: 2-class accuracy through the positive/negative mapping, or None when the classes
            are not EmoSet's emotions.
        confusion: (K, K) counts, rows true class, columns predicted class.
        classes: class names in index order.
    """

    num_samples: int
    accuracy: float
    per_class_accuracy: dict[str, float]
    sentiment_accuracy: float | None
    confusion: list[list[int]]
    classes: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON (NaN, for a class without images, becomes None)."""
        out = asdict(self)
        out["per_class_accuracy"] = {k: None if v != v else v for k, v in self.per_class_accuracy.items()}
        return out


def paired_difference_interval(
    correct_a: np.ndarray, correct_b: np.ndarray, z: float = 1.96
) -> tuple[float, tuple[float, float]]:
    """The difference of two models' accuracies on the same images, (acc_a − acc_b, its 95 % interval): the normal
    interval of the mean per-image difference, narrower than the unpaired one because the images both models get
    right (or wrong) cancel.

    >>> diff, (low, high) = paired_difference_interval(np.array([1, 1, 1, 0]), np.array([1, 0, 1, 0]))
    >>> diff, round(low, 3), round(high, 3)
    (0.25, -0.24, 0.74)
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"two equal 1-D arrays of at least 2 images are needed, got {a.shape} and {b.shape}")
    d = a - b
    mean, half = float(d.mean()), z * float(d.std(ddof=1)) / len(d) ** 0.5
    return mean, (mean - half, mean + half)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom, by bisection of its CDF
    (Simpson's rule over the density: no SciPy needed for one number).

    >>> round(t_quantile(0.975, 2), 3), round(t_quantile(0.975, 30), 3)
    (4.303, 2.042)
    """
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, steps: int = 2000) -> float:  # P(T ≤ x) for x ≥ 0
        h = x / steps
        ys = [math.exp(log_norm - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(steps + 1)]
        return 0.5 + h / 3 * (ys[0] + ys[-1] + 4 * sum(ys[1:-1:2]) + 2 * sum(ys[2:-1:2]))

    low, high = 0.0, 1000.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def seed_level_interval(differences: Sequence[float], confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
    """The mean of per-seed differences (method − control, one per seed) and its Student-t interval with the seed
    as the unit: the spread between seeds, not the number of images, sets its width. Needs two seeds or more.

    >>> mean, (low, high) = seed_level_interval([-0.025, -0.135, -0.065])
    >>> round(mean, 3), round(low, 3), round(high, 3)
    (-0.075, -0.213, 0.063)
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"a seed-level interval needs the differences of two seeds or more, got {len(d)}")
    mean = float(d.mean())
    half = t_quantile(0.5 + confidence / 2, len(d) - 1) * float(d.std(ddof=1)) / len(d) ** 0.5
    return mean, (mean - half, mean + half)


def classification_report(predictions: np.ndarray, labels: np.ndarray, classes: list[str]) -> ClassificationReport:
    """Computes a :class:`ClassificationReport` from predicted and true class indices (both (N,))."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    totals = confusion.sum(axis=1)
    per_class = {c: float(confusion[i, i] / totals[i]) if totals[i] else float("nan") for i, c in enumerate(classes)}
    mask = positive_mask(classes)
    sentiment_acc = None
    if mask is not None and len(labels):
        sent = np.array(mask)
        sentiment_acc = float(np.mean(sent[labels] == sent[predictions]))
    return ClassificationReport(
        num_samples=int(len(labels)),
        accuracy=float(np.mean(predictions == labels)) if len(labels) else float("nan"),
        per_class_accuracy=per_class,
        sentiment_accuracy=sentiment_acc,
        confusion=confusion.tolist(),
        classes=list(classes),
    )


def save_confusion_matrix(report: ClassificationReport, path: str | Path, title: str = "") -> Path:
    """Draws the row-normalised confusion matrix with counts as a PNG."""
    plt = pyplot()

    counts = np.asarray(report.confusion, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(report.classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * k, 0.8 + 0.7 * k), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), report.classes, rotation=45, ha="right")
    ax.set_yticks(range(k), report.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_title(title or f"accuracy {report.accuracy:.1%} (N={report.num_samples})")
    return save_figure(fig, path)
