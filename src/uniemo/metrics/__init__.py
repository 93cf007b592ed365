"""Metrics: classification accuracy here; generation metrics (FID, LPIPS, Emo-A, Sem-C, Sem-D) join later."""

from uniemo.metrics.classification import ClassificationReport, classification_report, save_confusion_matrix

__all__ = ["ClassificationReport", "classification_report", "save_confusion_matrix"]
