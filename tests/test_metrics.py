import json

import numpy as np
import pytest

from uniemo.constants import EMOSET_EMOTIONS
from uniemo.metrics.classification import classification_report, save_confusion_matrix


def test_classification_report_by_hand(tmp_path):
    classes = list(EMOSET_EMOTIONS)
    labels = np.array([0, 0, 1, 4, 4, 7, 3])
    preds = np.array([0, 1, 1, 5, 2, 7, 3])  # 4 of 7 right; 2-class: the 4 → 2 is a valence error
    report = classification_report(preds, labels, classes)
    assert report.num_samples == 7 and report.accuracy == 4 / 7
    assert report.per_class_accuracy["amusement"] == 0.5 and report.per_class_accuracy["anger"] == 0.0
    assert report.per_class_accuracy["sadness"] == 1.0
    assert report.per_class_accuracy["awe"] == 1.0
    assert abs(report.sentiment_accuracy - 6 / 7) < 1e-12
    assert report.confusion[4][5] == 1 and report.confusion[4][2] == 1 and sum(map(sum, report.confusion)) == 7
    plain = report.to_dict()
    assert plain["per_class_accuracy"]["fear"] is None  # no fear image: None, not NaN, in JSON
    json.dumps(plain, allow_nan=False)
    assert save_confusion_matrix(report, tmp_path / "c.png").stat().st_size > 1000


def test_no_sentiment_for_other_label_sets():
    report = classification_report(np.array([0, 1]), np.array([0, 0]), ["calm", "tense"])
    assert report.sentiment_accuracy is None and report.accuracy == 0.5
    assert classification_report(np.array([1, 1, 0]), np.array([1, 1, 1]), ["calm", "tense"]).accuracy == 2 / 3
    empty = classification_report(np.zeros(0, int), np.zeros(0, int), ["calm", "tense"])  # no image: NaN, no crash
    assert empty.num_samples == 0 and np.isnan(empty.accuracy) and empty.confusion == [[0, 0], [0, 0]]
    assert all(type(v) is int for row in empty.confusion for v in row)  # counts, written to JSON as 0, not 0.0


def test_label_mapping_reorders_by_name_and_sums_valence():
    from uniemo.errors import UniEmoError
    from uniemo.evaluate import label_mapping

    probs = np.array([[0.1, 0.2, 0.3, 0.05, 0.05, 0.1, 0.15, 0.05]])  # EmoSet order
    same, mode = label_mapping(list(EMOSET_EMOTIONS), list(reversed(EMOSET_EMOTIONS)))
    assert mode == "same label set" and same(probs).tolist() == [list(reversed(probs[0].tolist()))]
    sub, mode = label_mapping(list(EMOSET_EMOTIONS), ["fear", "awe"])
    assert mode == "subset of the model's classes" and sub(probs).tolist() == [[0.15, 0.2]]
    two, mode = label_mapping(list(EMOSET_EMOTIONS), ["negative", "positive"])
    assert mode == "emotions mapped to 2-class sentiment"
    np.testing.assert_allclose(two(probs), [[0.35, 0.65]])  # positive: amusement, awe, contentment, excitement
    with pytest.raises(UniEmoError, match="do not cover the dataset's"):
        label_mapping(list(EMOSET_EMOTIONS), ["joy", "anger"])
    with pytest.raises(UniEmoError, match="do not cover"):
        label_mapping(["calm", "tense"], ["negative", "positive"])  # no valence to sum
