"""Evaluation of a trained understanding model on any dataset whose labels it can name (METHOD §7)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import constants as hub_constants

from uniemo.checkpoint import resolve_checkpoint, write_atomic
from uniemo.config import UnderstandingEvalConfig
from uniemo.constants import SENTIMENTS, positive_mask
from uniemo.data.datasets import EmotionImageDataset, open_dataset
from uniemo.errors import UniEmoError
from uniemo.metrics.classification import classification_report, save_confusion_matrix
from uniemo.pipelines.classifier import EmotionClassifier, predict_dataset


def label_mapping(model_classes: list[str], data_classes: list[str]) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """How (N, K_model) probabilities become (N, K_data) ones for cross-dataset evaluation, and its name.

    * same names, or the dataset's a subset: the dataset's columns, by name (``same label set`` / ``subset``);
    * a 2-class sentiment dataset and an emotion model: summed over positive and negative emotions.

    Raises:
        UniEmoError: the label sets cannot be matched.
    """
    if set(data_classes) <= set(model_classes):
        columns = [model_classes.index(c) for c in data_classes]
        mode = "same label set" if set(data_classes) == set(model_classes) else "subset of the model's classes"
        return (lambda probs: probs[:, columns]), mode
    mask = positive_mask(model_classes)
    if tuple(data_classes) == SENTIMENTS and mask is not None:

        def to_sentiment(probs: np.ndarray) -> np.ndarray:
            positive = probs[:, np.array(mask)].sum(1)
            return np.stack([1 - positive, positive], axis=1)  # SENTIMENTS order: negative, positive

        return to_sentiment, "emotions mapped to 2-class sentiment"
    raise UniEmoError(
        f"the model's classes ({', '.join(model_classes)}) do not cover the dataset's ({', '.join(data_classes)}); "
        "cross-dataset evaluation needs the same label names (or a 2-class positive/negative dataset)"
    )


_EVAL = UnderstandingEvalConfig()


def evaluate_understanding(
    checkpoint: str | Path,
    data: str | Path,
    split: str = _EVAL.split,
    data_format: str = _EVAL.data_format,
    fold: int = _EVAL.fold,
    out_dir: str | Path | None = None,
    batch_size: int = _EVAL.batch_size,
    num_workers: int = _EVAL.num_workers,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-1, per-class and 2-class accuracy and the confusion matrix of a checkpoint on a dataset split.

    Writes ``report.json``, ``confusion.png`` and ``predictions.csv`` (each image's true and predicted emotion, for
    reading the errors or pairing two models on the same images: :func:`read_predictions`) to ``out_dir`` (default:
    ``eval-<dataset>-<split>`` beside the model, or in the working directory for a model from the hub cache).
    """
    clf = EmotionClassifier.from_pretrained(checkpoint)
    dataset = open_dataset(data, data_format, fold)
    samples = dataset.split(split)
    mapping, mode = label_mapping(clf.classes, list(dataset.classes))  # before the pass: refuse early
    eval_set = EmotionImageDataset(samples, clf.transform, on_bad_image="skip")
    probs, labels, indices, skipped = predict_dataset(
        clf.model, eval_set, batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    if len(labels) == 0:
        raise UniEmoError(f"no readable image in split '{split}' of {dataset.root} ({len(skipped)} skipped)")
    predicted = mapping(probs).argmax(1)
    report = classification_report(predicted, labels, list(dataset.classes))
    beside = resolve_checkpoint(checkpoint).parent
    if beside.is_relative_to(Path(hub_constants.HF_HUB_CACHE).resolve()):  # never write into the hub cache
        beside = Path.cwd()
    out = Path(out_dir) if out_dir else beside / f"eval-{dataset.root.name}-{split}"
    png = save_confusion_matrix(
        report, out / "confusion.png", f"{dataset.root.name} [{split}]: {report.accuracy:.1%} (N={report.num_samples})"
    )
    result = {
        "dataset": str(dataset.root),
        "format": dataset.format,
        "split": split,
        "mode": mode,
        **report.to_dict(),
        "skipped": skipped,
        "confusion_png": str(png),
    }
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["image", "true", "predicted"])
    names = dataset.classes
    writer.writerows([str(samples[i].path), names[t], names[p]] for i, t, p in zip(indices, labels, predicted))
    write_atomic(out / "predictions.csv", table.getvalue())
    write_atomic(out / "report.json", json.dumps(result, indent=1))
    return result


def read_predictions(path: str | Path) -> dict[str, tuple[str, str]]:
    """``predictions.csv`` of :func:`evaluate_understanding` (the file or its folder): image → (true, predicted)."""
    path = Path(path)
    rows = csv.reader(io.StringIO((path / "predictions.csv" if path.is_dir() else path).read_text()))
    next(rows)
    return {image: (true, predicted) for image, true, predicted in rows}


def paired_comparison(pairs: list[tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]]) -> dict[str, Any]:
    """Models against their controls on the same images: ``pairs`` of :func:`read_predictions` results (one pair per
    seed, pooled), matched by image → both accuracies, the difference with its 95 % interval paired by image, N, the
    images only one side gets right (``discordant``) and whether the interval decides it (excludes 0)."""
    from uniemo.metrics.classification import paired_difference_interval

    correct: tuple[list, list] = ([], [])
    for a, b in pairs:
        images = sorted(set(a) & set(b))
        for side, predictions in zip(correct, (a, b)):
            side.append(np.array([predictions[i][0] == predictions[i][1] for i in images], dtype=bool))
    ours, control = np.concatenate(correct[0]), np.concatenate(correct[1])
    difference, (low, high) = paired_difference_interval(ours, control)
    return {
        "accuracy": float(ours.mean()),
        "control_accuracy": float(control.mean()),
        "difference": difference,
        "interval": [low, high],
        "n": len(ours),
        "discordant": int((ours != control).sum()),
        "resolved": low > 0 or high < 0,
    }


def comparison_words(comparison: dict[str, Any]) -> str:
    """:func:`paired_comparison`'s difference in words: points, interval, how many images differ, the verdict."""
    low, high = (100 * x for x in comparison["interval"])
    verdict = "resolved" if comparison["resolved"] else "not resolvable at this N"
    return (
        f"{100 * comparison['difference']:+.1f} points [{low:+.1f}, {high:+.1f}] paired on N={comparison['n']} "
        f"test images, {comparison['discordant']} of them right by one model only ({verdict})"
    )


def compare_understanding(
    checkpoint: str | Path, control: str | Path, data: str | Path, split: str = "test", progress: bool = False
) -> dict[str, Any]:
    """Two models on the same images (:func:`paired_comparison`); each model's evaluation is written beside it
    (:func:`evaluate_understanding`'s default ``out_dir``)."""
    reports = [evaluate_understanding(c, data, split=split, progress=progress) for c in (checkpoint, control)]
    a, b = (read_predictions(Path(r["confusion_png"]).parent) for r in reports)
    return paired_comparison([(a, b)])
