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


def test_paired_difference_by_the_discordant_pairs():
    from uniemo.metrics.classification import paired_difference_interval

    rng = np.random.default_rng(0)
    a, b = rng.random(500) < 0.8, rng.random(500) < 0.7
    diff, (low, high) = paired_difference_interval(a, b)
    only_a, only_b, n = int((a & ~b).sum()), int((b & ~a).sum()), 500
    mean = (only_a - only_b) / n
    variance = ((only_a + only_b) / n - mean**2) * n / (n - 1)  # of the per-image difference in {-1, 0, 1}
    assert diff == pytest.approx(mean) and diff == pytest.approx(a.mean() - b.mean())
    assert (high - low) / 2 == pytest.approx(1.96 * (variance / n) ** 0.5)
    assert paired_difference_interval(a, a) == (0.0, (0.0, 0.0))  # the same model: nothing to tell apart
    with pytest.raises(ValueError, match="two equal 1-D arrays"):
        paired_difference_interval(a, b[:-1])


def test_two_models_compared_on_the_same_images(trained_run, joint_run, synth_dir):
    from uniemo.evaluate import compare_understanding, evaluate_understanding, read_predictions

    comparison = compare_understanding(trained_run, joint_run, synth_dir)
    own = evaluate_understanding(trained_run, synth_dir, split="test", progress=False)
    other = evaluate_understanding(joint_run, synth_dir, split="test", progress=False)
    assert comparison["accuracy"] == pytest.approx(own["accuracy"])
    assert comparison["control_accuracy"] == pytest.approx(other["accuracy"])
    assert comparison["n"] == own["num_samples"] == len(read_predictions(trained_run / "eval-synth-test"))
    assert comparison["difference"] == pytest.approx(own["accuracy"] - other["accuracy"])
    a, b = read_predictions(trained_run / "eval-synth-test"), read_predictions(joint_run / "eval-synth-test")
    assert comparison["discordant"] == sum((a[i][0] == a[i][1]) != (b[i][0] == b[i][1]) for i in a)
    same = compare_understanding(trained_run, trained_run, synth_dir)
    assert same["difference"] == 0 and same["interval"] == [0.0, 0.0] and not same["resolved"]
    assert same["discordant"] == 0


def test_t_quantiles_match_the_table_and_the_seed_interval_uses_them():
    from uniemo.metrics.classification import seed_level_interval, t_quantile

    table = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 30: 2.042}  # Student's t, 0.975, from any statistics table
    assert {df: round(t_quantile(0.975, df), 3) for df in table} == table
    mean, (low, high) = seed_level_interval([0.1, 0.3])
    assert mean == pytest.approx(0.2) and high - mean == pytest.approx(12.706 * 0.1414214 / 2**0.5, rel=1e-4)
    with pytest.raises(ValueError, match="two seeds"):
        seed_level_interval([0.1])
