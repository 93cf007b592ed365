"""The attribute judge of the built-in dataset: it reads palette, scene and object, and the dataset's rule names
the emotion; the oracle captions are each emotion's own cues."""

import json

import pytest
from PIL import Image

from uniemo.constants import EMOSET_EMOTIONS
from uniemo.data.synth import emotion_of
from uniemo.errors import CheckpointError, DataError
from uniemo.metrics.judge import (
    AttributeJudge,
    emotion_triples,
    judge_images,
    judge_real_accuracy,
    oracle_captions,
    train_attribute_judge,
    wilson_interval,
)


@pytest.fixture(scope="module")
def judge(synth_dir):
    return train_attribute_judge(synth_dir, steps=300)


def test_judge_reads_real_images_and_names_their_emotion(judge, synth_dir, tmp_path):
    real = judge_real_accuracy(judge, synth_dir, "test")
    assert real["n"] == 96
    # 320 training images, 300 steps: the colour palette is read almost always, the emotion far above chance
    assert real["palette"] > 0.9 and real["valence"] > 0.9 and real["emotion"] > 0.4
    judge.save_pretrained(tmp_path / "judge")
    again = AttributeJudge.from_pretrained(tmp_path / "judge")
    assert judge_real_accuracy(again, synth_dir, "test") == real


def test_judge_scores_targets_per_emotion_with_intervals(judge, synth_dir):
    from uniemo.data.datasets import open_dataset
    from uniemo.data.images import load_image

    samples = open_dataset(synth_dir).split("test")
    images = {e: [] for e in EMOSET_EMOTIONS}
    for s in samples:
        images[EMOSET_EMOTIONS[s.label]].append(load_image(s.path))
    right = judge_images(judge, images, EMOSET_EMOTIONS)
    # the same images asked for the opposite valence: the judge must disagree (valence is the palette)
    flipped = {EMOSET_EMOTIONS[(i + 4) % 8]: images[e] for i, e in enumerate(EMOSET_EMOTIONS)}
    wrong = judge_images(judge, flipped, EMOSET_EMOTIONS)
    assert right["n"] == wrong["n"] == 96
    assert right["valence"] > 0.9 and wrong["valence"] < 0.1 and wrong["emo_a"] < 0.1 < 0.4 < right["emo_a"]
    low, high = right["interval"]
    assert low < right["emo_a"] < high


def test_wilson_interval_by_hand():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_oracle_captions_are_the_emotions_own_cues():
    # awe has no emotional object: only neutral objects in mountains, deserts and lakes, in a positive palette
    assert sorted({(s, o) for _, s, o in emotion_triples("awe")}) == sorted(
        (s, o) for s in ("desert", "lake", "mountain") for o in ("boat", "flower", "house")
    )
    assert {p for p, _, _ in emotion_triples("sadness")} == {"stormy", "fiery"}
    captions = oracle_captions("amusement", 40)
    assert "a sunny beach with a balloon" in captions and "a pastel forest with a house" in captions
    assert not any("stormy" in c or "fiery" in c or "tent" in c for c in captions)
    assert sum(len(emotion_triples(e)) for e in EMOSET_EMOTIONS) == 4 * 6 * 6
    assert all(emotion_of(s, o, p) == "fear" for p, s, o in emotion_triples("fear"))


def test_judge_refuses_other_data_and_other_checkpoints(tmp_path, trained_run):
    with pytest.raises(CheckpointError, match="not an attribute judge"):
        AttributeJudge.from_pretrained(trained_run / "best")
    folder = tmp_path / "FI"
    for split in ("train", "val", "test"):
        (folder / split / "awe").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / split / "awe" / "a.jpg")
    with pytest.raises(DataError, match="not the built-in dataset"):
        train_attribute_judge(folder, steps=1)


def test_shipped_judge_reads_a_dataset_it_never_saw_and_is_used_only_on_its_own(synth_dir, tmp_path):
    from uniemo.data.synth import SynthConfig, generator_info
    from uniemo.metrics.judge import BUILTIN_JUDGE, judge_for

    shipped = AttributeJudge.from_pretrained(BUILTIN_JUDGE)
    # trained on `uniemo synth`'s default dataset (seed 0): a change to the generator or its defaults shows here
    assert shipped.trained_on == {**generator_info(SynthConfig()), "judge_steps": 1000}
    # synth_dir is another seed at another resolution: the shipped weights still read it
    real = judge_real_accuracy(shipped, synth_dir, "test")
    assert real["palette"] == 1.0 and real["emotion"] > 0.8
    # on the default dataset's record the shipped judge is used; on any other one a judge is trained
    default = tmp_path / "default"
    default.mkdir()
    (default / "info.json").write_text(json.dumps({"generator": generator_info(SynthConfig())}))
    judge, origin = judge_for(default)
    assert origin == "shipped" and judge.state_dict()["net.0.weight"].equal(shipped.state_dict()["net.0.weight"])
    judge, origin = judge_for(synth_dir, steps=5)
    assert origin == "trained" and not judge.state_dict()["net.0.weight"].equal(shipped.state_dict()["net.0.weight"])
    assert judge.trained_on["seed"] == 1
