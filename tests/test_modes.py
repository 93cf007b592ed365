"""The four generation modes as a judge scores them (uniemo.metrics.modes), on a stand-in pipeline and judge whose
answers are known, so every figure can be computed by hand."""

import pytest
from PIL import Image

from uniemo.constants import EMOSET_EMOTIONS
from uniemo.metrics.judge import wilson_interval
from uniemo.metrics.modes import judge_emotions, judge_fusion, judge_reference, judge_transfer


def _image(emotion: str, content: str = "boat") -> Image.Image:
    """An image that 'shows' an emotion and an object: the judge below reads them back from its colour."""
    return Image.new("RGB", (4, 4), (EMOSET_EMOTIONS.index(emotion), ("boat", "house").index(content), 0))


class Judge:
    def read(self, images):
        objects = [("boat", "house")[im.getpixel((0, 0))[1]] for im in images]
        return {"object": objects}

    def emotions(self, images):
        return [EMOSET_EMOTIONS[im.getpixel((0, 0))[0]] for im in images]


class Pipe:
    """Draws the requested emotion, except that fusion draws the heavier emotion of the mix, every reference
    yields ``reference_answer`` and a content prompt draws its content half of the time."""

    classes = list(EMOSET_EMOTIONS)
    reference_answer = "anger"

    def __init__(self):
        self.settings = []  # the sampling settings of every call

    def __call__(self, emotion=None, prompt=None, reference=None, num_images=1, **settings):
        class Out:
            pass

        self.settings.append(settings)
        out = Out()
        if reference is not None:
            out.images = [_image(self.reference_answer) for _ in reference for _ in range(num_images)]
        elif isinstance(emotion, dict):
            out.images = [_image(max(emotion, key=emotion.get))] * num_images
        else:
            content = (prompt or "a boat").split()[-1]
            out.images = [_image(emotion, content if i % 2 else "boat") for i in range(num_images)]
        return out


def test_fusion_shares_follow_the_weights_and_monotonic_is_checked():
    result, images = judge_fusion(Pipe(), Judge(), 4, weights=(1.0, 0.75, 0.25, 0.0))
    assert [r["amusement"] for r in result["rows"]] == [1.0, 1.0, 0.0, 0.0]
    assert [r["positive"] for r in result["rows"]] == [1.0, 1.0, 0.0, 0.0]
    assert result["monotonic"] and [r["n"] for r in result["rows"]] == [4] * 4 and len(images) == 4
    rising, _ = judge_fusion(Pipe(), Judge(), 2, weights=(0.25, 1.0))  # amusement 0 % then 100 %: rises
    assert not rising["monotonic"]


def test_reference_agreement_and_its_shuffled_control_by_hand():
    references = [("a.jpg", "anger")] * 3 + [("b.jpg", "awe")] * 5  # the pipe always draws anger
    result, images = judge_reference(Pipe(), Judge(), references)
    assert len(images) == 8 and result["agreement"] == 3 / 8
    # random pairing: every image is read as anger, 3 of the 8 references are anger → 3/8, the same as measured:
    # a generator that ignores its reference scores exactly its control
    assert result["shuffled"] == pytest.approx(3 / 8)
    assert result["valence"] == 3 / 8 and result["valence_shuffled"] == pytest.approx(3 / 8)


def test_transfer_content_share_against_images_without_the_prompt():
    pipe, judge = Pipe(), Judge()
    without = {e: pipe(e, num_images=4).images for e in pipe.classes}
    result, _ = judge_transfer(pipe, judge, 4, "house", without=without)
    assert result["emo_a"] == 1.0 and result["content_share"] == 0.5 and result["content_share_without"] == 0.0
    assert result["n"] == 32


def test_every_mode_reports_its_figures_with_intervals_and_passes_the_sampling_settings_on():
    pipe, judge = Pipe(), Judge()
    fusion, _ = judge_fusion(pipe, judge, 4, weights=(1.0, 0.25), steps=7)
    assert fusion["first"] == "amusement" and fusion["second"] == "sadness"
    assert [(r["weight"], r["sadness"]) for r in fusion["rows"]] == [(1.0, 0.0), (0.25, 1.0)]
    assert fusion["rows"][0]["amusement_interval"] == wilson_interval(4, 4)
    references = [("a.jpg", "anger")] * 3 + [("b.jpg", "awe")] * 5
    reference, _ = judge_reference(pipe, judge, references, steps=7)
    assert reference["n"] == 8 and reference["interval"] == wilson_interval(3, 8) and reference["chance"] == 1 / 8
    control = Pipe()  # the images without the prompt, where awe happens to draw its house half of the time
    without = {e: control(e, prompt="a house" if e == "awe" else None, num_images=4).images for e in pipe.classes}
    transfer, _ = judge_transfer(pipe, judge, 4, "house", without=without, steps=7)
    assert transfer["content"] == "house" and transfer["content_interval"] == wilson_interval(16, 32)
    assert transfer["content_share_without"] == 2 / 32  # the control's houses, counted as houses
    assert transfer["content_interval_without"] == wilson_interval(2, 32)
    emotions, _ = judge_emotions(pipe, judge, 2, steps=7)
    assert emotions["emo_a"] == 1.0 and emotions["n"] == 16
    # fusion 2 calls, reference 1, transfer 8, emotions 8: every one with the sampling settings given
    assert pipe.settings == [{"steps": 7}] * (2 + 1 + 8 + 8)
