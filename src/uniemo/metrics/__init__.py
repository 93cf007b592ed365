"""Metrics (METHOD §7): classification accuracy; generation metrics (FID, LPIPS, Emo-A, Sem-C, Sem-D) as pure
functions in :mod:`~uniemo.metrics.generation`, their networks in :mod:`~uniemo.metrics.networks` and
:mod:`~uniemo.metrics.lpips`, and the suite that reads a folder of generated images in :mod:`~uniemo.metrics.suite`.
"""

from uniemo.metrics.classification import ClassificationReport, classification_report, save_confusion_matrix

__all__ = ["ClassificationReport", "classification_report", "save_confusion_matrix"]
