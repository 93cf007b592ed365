import json

import numpy as np

from uniemo.constants import EMOSET_EMOTIONS
from uniemo.metrics.classification import classification_report, save_confusion_matrix


def test_classification_report_by_hand(tmp_path):
    classes = list(EMOSET_EMOTIONS)
    labels = np.array([0, 0, 1, 4, 4, 7])
    preds = np.array([0, 1, 1, 5, 2, 7])  # 3 of 6 right; 2-class: the 4 → 2 is a valence error
    report = classification_report(preds, labels, classes)
    assert report.num_samples == 6 and report.accuracy == 0.5
    assert report.per_class_accuracy["amusement"] == 0.5 and report.per_class_accuracy["anger"] == 0.0
    assert report.per_class_accuracy["sadness"] == 1.0
    assert report.per_class_accuracy["awe"] == 1.0
    assert abs(report.sentiment_accuracy - 5 / 6) < 1e-12
    assert report.confusion[4][5] == 1 and report.confusion[4][2] == 1 and sum(map(sum, report.confusion)) == 6
    plain = report.to_dict()
    assert plain["per_class_accuracy"]["fear"] is None  # no fear image: None, not NaN, in JSON
    json.dumps(plain, allow_nan=False)
    assert save_confusion_matrix(report, tmp_path / "c.png").stat().st_size > 1000


def test_no_sentiment_for_other_label_sets():
    report = classification_report(np.array([0, 1]), np.array([0, 0]), ["calm", "tense"])
    assert report.sentiment_accuracy is None and report.accuracy == 0.5
