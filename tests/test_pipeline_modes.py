"""The generation pipeline's four modes (METHOD §5) against the same steps done by hand, on a micro UniEmo model
and a toy Stable Diffusion built in a second (no training: the pipeline's job is to route c, not to learn it).

Each image is recomputed from its parts: the emotion space's draw for seed + i, c = M_E + α_S·M_S + α_O·M_O, the
fused Σ w_k·c_k, the prompt the text encoder sees, the negative prompt and the diffusers call with the initial
noise of seed + i. An image that the pipeline makes from anything else (another emotion's sample, a reference
image's features ignored, a prompt dropped, a scheduler left swapped) differs from the one made here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_mechanisms import micro_understanding
from uniemo.constants import EMOSET_EMOTIONS
from uniemo.errors import ConfigError
from uniemo.models.architecture import UniEmoConfig
from uniemo.models.diffusion import tiny_stable_diffusion
from uniemo.models.emotion_space import emotion_space
from uniemo.models.factory import STANDIN, standin_path
from uniemo.models.placeholder import PromptEncoder
from uniemo.models.uniemo import UniEmoModel
from uniemo.pipelines.generation import (
    UniEmoPipeline,
    default_scheduler,
    emotion_accuracy,
    parse_emotion_weights,
    save_generation,
)

CLASSES = list(EMOSET_EMOTIONS)


@pytest.fixture(scope="module")
def pipe() -> UniEmoPipeline:
    diffusion = tiny_stable_diffusion(seed=0)
    model = UniEmoModel(micro_understanding(), UniEmoConfig(PromptEncoder(diffusion).condition_dims, mapper_hidden=16))
    g = torch.Generator().manual_seed(0)
    model.prior_scene.copy_(torch.rand(model.prior_scene.shape, generator=g).softmax(1))
    model.prior_object.copy_((4 * torch.rand(model.prior_object.shape, generator=g)).softmax(1))
    with torch.no_grad():
        out = model.understanding(torch.randn(2, 3, 32, 32, generator=g))
    # an emotion space whose emotions lie apart (a random model on random images would give one blur for all)
    labels = torch.arange(48) % 8
    feats = {}
    for name in ("cls", "scene", "object"):
        centres = 3 * torch.randn(8, getattr(out, name).shape[-1], generator=g)
        feats[name] = centres[labels] + 0.3 * torch.randn(48, centres.shape[1], generator=g)
    model.set_emotion_space(emotion_space(feats, labels, 8))
    meta = {"classes": CLASSES, "resolution": 32, "template": "a photo that feels {}"}
    meta["sampling"] = {"steps": 2, "guidance": 10.0, "scheduler": "ddim"}
    return UniEmoPipeline(model, diffusion, meta)


def by_hand(pipe: UniEmoPipeline, conditions: torch.Tensor, text: str, seed: int, negative: str = "", steps: int = 2,
            guidance: float = 10.0, scheduler: str = "ddim") -> list[np.ndarray]:  # fmt: skip
    """The images for conditions (N, Σ d_c), one diffusers call per image, the scheduler built here."""
    import diffusers

    original = pipe.diffusion.scheduler
    cls = {"ddim": diffusers.DDIMScheduler, "ddpm": diffusers.DDPMScheduler}[scheduler]
    pipe.diffusion.scheduler = cls.from_config({k: v for k, v in original.config.items() if k[0] != "_"})
    images = []
    try:
        for i, c in enumerate(conditions):
            positive = pipe.encoder.encode([text], c[None])["prompt_embeds"]
            result = pipe.diffusion(
                prompt_embeds=positive,
                negative_prompt_embeds=pipe.encoder.encode([negative])["prompt_embeds"],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=[torch.Generator().manual_seed(seed + i + 1_000_000)],
                height=32,
                width=32,
                output_type="np",
            )
            images.append((result.images[0] * 255).round())
    finally:
        pipe.diffusion.scheduler = original
    return images


def pixels(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(im, dtype=np.float64) for im in images]


def assert_same_images(got: list[Image.Image], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(pixels(got), expected):
        assert np.abs(a - b).max() <= 1.0  # 8-bit rounding


def emotion_condition(pipe: UniEmoPipeline, emotion: str, seed: int) -> torch.Tensor:
    """c of one emotion for one image by hand: the space's draw with seed, then c from those features."""
    k = torch.tensor([CLASSES.index(emotion)])
    with torch.no_grad():
        feats = pipe.model.sample_features(k, torch.Generator().manual_seed(seed))
        return pipe.model.condition(feats, k)[0]


# ---- conditions ------------------------------------------------------------------------------------------------


def test_emotion_conditions_are_each_images_draw_fused_by_the_weights(pipe):
    got = pipe.emotion_conditions({"amusement": 0.25, "sadness": 0.75}, num_images=2, seed=3)
    assert not got.requires_grad  # generation builds no autograd graph
    for i in range(2):
        expected = 0.25 * emotion_condition(pipe, "amusement", 3 + i) + 0.75 * emotion_condition(
            pipe, "sadness", 3 + i
        )
        torch.testing.assert_close(got[i], expected)
    single = pipe.emotion_conditions({"fear": 1.0}, num_images=2, seed=3)
    torch.testing.assert_close(single[1], emotion_condition(pipe, "fear", 4))
    assert not torch.allclose(single[0], single[1])  # image i draws with seed + i
    # diversity 0: every image gets the emotion's mean features
    mean = pipe.emotion_conditions({"fear": 1.0}, num_images=2, seed=3, diversity=0.0)
    torch.testing.assert_close(mean[0], mean[1])
    feats = {n: getattr(pipe.model, f"space_{n}_mean")[[CLASSES.index("fear")]] for n in ("cls", "scene", "object")}
    with torch.no_grad():
        torch.testing.assert_close(mean[0], pipe.model.condition(feats, torch.tensor([CLASSES.index("fear")]))[0])


def test_reference_condition_is_the_reference_images_own_features(pipe):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]
    conditions = []
    for image in images:
        c, read = pipe.reference_condition(image)
        assert not c.requires_grad
        with torch.no_grad():
            out = pipe.model.understanding(pipe.transform(image).unsqueeze(0))
            emotion = out.logits.argmax(-1)
            expected = pipe.model.condition({"cls": out.cls, "scene": out.scene, "object": out.object}, emotion)
        torch.testing.assert_close(c, expected)
        assert read == CLASSES[int(emotion)]
        conditions.append(c)
    assert not torch.allclose(conditions[0], conditions[1])  # two references, two conditions


def test_emotion_weights_are_parsed_and_normalised():
    assert parse_emotion_weights("awe", CLASSES) == {"awe": 1.0}
    assert parse_emotion_weights(["amusement=1", "awe=3"], CLASSES) == {"amusement": 0.25, "awe": 0.75}
    assert parse_emotion_weights(["awe=1", "awe=1", "fear=2"], CLASSES) == {"awe": 0.5, "fear": 0.5}
    assert parse_emotion_weights({"fear": 2, "awe": 0}, CLASSES) == {"fear": 1.0}  # a zero weight drops out
    for bad, words in [
        (["joy"], "unknown emotion 'joy'"),
        (["awe=x"], "must be a number"),
        (["awe=-1"], "≥ 0"),
        (["awe=nan"], "≥ 0"),
        (["awe=inf"], "≥ 0"),
        (["awe=0"], "positive"),
        ([], "positive"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_emotion_weights(bad, CLASSES)


def test_prompt_for_places_the_placeholder_once(pipe):
    assert pipe.prompt_for(None) == "a photo that feels <emotion>"  # the training template
    assert pipe.prompt_for("") == "a photo that feels <emotion>"
    assert pipe.prompt_for("a house") == "a house, <emotion>"
    assert pipe.prompt_for("<emotion> over a house") == "<emotion> over a house"
    with pytest.raises(ConfigError, match="at most once"):
        pipe.prompt_for("<emotion> and <emotion>")
    with pytest.raises(ConfigError, match="77 tokens"):
        pipe.prompt_for("word " * 80)


def test_default_scheduler_is_the_standins_own_and_dpm_elsewhere(tmp_path):
    assert default_scheduler(STANDIN) == "model"
    assert default_scheduler(str(standin_path("sd"))) == "model"  # the stand-in by its path, as a checkpoint stores it
    assert default_scheduler("runwayml/stable-diffusion-v1-5") == "dpm++"
    assert default_scheduler(None) == "dpm++"
    index = json.loads((standin_path("sd") / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({k: v for k, v in index.items() if k[0] != "_"}))
    assert default_scheduler(str(tmp_path)) == "dpm++"  # a diffusers directory that names no sampler of its own


# ---- the images --------------------------------------------------------------------------------------------------


def test_emotion_mode_images_are_made_from_their_conditions_with_the_carried_defaults(pipe):
    scheduler = pipe.diffusion.scheduler
    out = pipe("awe", num_images=2, seed=5)
    conditions = torch.stack([emotion_condition(pipe, "awe", 5), emotion_condition(pipe, "awe", 6)])
    assert_same_images(out.images, by_hand(pipe, conditions, "a photo that feels <emotion>", seed=5))
    assert torch.equal(out.conditions, conditions)  # the output names the c each image was made from
    assert pipe.diffusion.scheduler is scheduler  # the swapped sampler is put back
    assert out.settings.to_dict() == {
        "prompt": None, "num_images": 2, "steps": 2, "guidance": 10.0, "scheduler": "ddim", "seed": 5,
        "negative_prompt": "", "emotions": {"awe": 1.0}, "diversity": 1.0, "text": "a photo that feels <emotion>",
        "size": 32,
    }  # fmt: skip
    # another emotion, same seed: other images
    other = pipe("sadness", num_images=2, seed=5)
    assert all(np.abs(a - b).mean() > 1.0 for a, b in zip(pixels(out.images), pixels(other.images)))


def test_explicit_settings_prompt_and_negative_prompt_reach_the_images(pipe):
    out = pipe(
        {"amusement": 1, "fear": 1}, prompt="a house", num_images=1, seed=2, steps=3, guidance=12.0,
        scheduler="ddpm", negative_prompt="a dark room",
    )  # fmt: skip
    c = 0.5 * emotion_condition(pipe, "amusement", 2) + 0.5 * emotion_condition(pipe, "fear", 2)
    expected = by_hand(pipe, c[None], "a house, <emotion>", 2, "a dark room", steps=3, guidance=12.0, scheduler="ddpm")
    assert_same_images(out.images, expected)
    assert out.settings.text == "a house, <emotion>" and out.settings.scheduler == "ddpm"
    plain = pipe({"amusement": 1, "fear": 1}, num_images=1, seed=2, steps=3, guidance=12.0, scheduler="ddpm")
    assert np.abs(pixels(plain.images)[0] - pixels(out.images)[0]).mean() > 1.0


def test_batches_give_the_images_of_one_batch(pipe):
    one = pipe("contentment", num_images=3, seed=1, batch_size=3)
    split = pipe("contentment", num_images=3, seed=1, batch_size=2)
    assert_same_images(split.images, pixels(one.images))
    assert np.abs(pixels(one.images)[0] - pixels(one.images)[2]).mean() > 1.0


def test_reference_mode_images_carry_the_references_condition(pipe, tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"ref{i}.png")
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(paths[-1])
    out = pipe(reference=paths, num_images=2, seed=4)
    conditions = [pipe.reference_condition(p) for p in paths]
    stacked = torch.cat([c for c, _ in conditions]).repeat_interleave(2, dim=0)
    assert_same_images(out.images, by_hand(pipe, stacked, "a photo that feels <emotion>", seed=4))
    assert out.settings.reference == [str(p) for p in paths] and out.settings.num_images == 4
    assert out.settings.read == [read for _, read in conditions]
    single = pipe(reference=paths[1], num_images=1, seed=4)
    assert_same_images(single.images, by_hand(pipe, conditions[1][0], "a photo that feels <emotion>", seed=4))
    assert single.settings.reference == str(paths[1]) and single.settings.read == conditions[1][1]
    with Image.open(paths[0]) as image:  # an image given in memory is recorded as such, alone or in a list
        assert pipe(reference=image, steps=1).settings.reference == "<image>"
        assert pipe(reference=[image, paths[1]], steps=1).settings.reference == ["<image>", str(paths[1])]
    # the diffusion model's own sampler is recorded by its class, so that settings.json reproduces the images
    assert pipe("awe", steps=1, scheduler="model").settings.scheduler == type(pipe.diffusion.scheduler).__name__


def test_bad_requests_are_config_errors(pipe):
    for kwargs, words in [
        ({}, "not both or neither"),
        ({"emotion": "awe", "reference": "x.png"}, "not both or neither"),
        ({"emotion": "awe", "num_images": 0}, "≥ 1"),
        ({"emotion": "awe", "steps": 0}, "≥ 1"),
        ({"emotion": "awe", "guidance": -1.0}, "≥ 0"),
        ({"emotion": "awe", "diversity": -0.5}, "≥ 0"),
        ({"emotion": "awe", "scheduler": "heun9"}, "unknown scheduler 'heun9'"),
        ({"reference": []}, "at least one reference"),
    ]:
        with pytest.raises(ConfigError, match=words):
            pipe(**kwargs)


# ---- what the modes write and score --------------------------------------------------------------------------


def test_save_generation_writes_the_images_and_their_settings(pipe, tmp_path):
    out = pipe("awe", num_images=2, seed=0)
    paths = save_generation(out, tmp_path / "run", stem="awe")
    assert [p.name for p in paths] == ["awe_000.png", "awe_001.png"]
    assert_same_images([Image.open(p) for p in paths], pixels(out.images))
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings == {**out.settings.to_dict(), "files": ["awe_000.png", "awe_001.png"]}
    # into a folder that exists (a second run) and one whose parents do not
    assert save_generation(out, tmp_path / "run", stem="again")[0].is_file()
    assert save_generation(out, tmp_path / "a" / "b", stem="awe")[1] == tmp_path / "a" / "b" / "awe_001.png"


class ReadsRed:
    """A judge that names 'amusement' for images with more red than blue and 'fear' otherwise."""

    classes = CLASSES

    def probabilities(self, images):
        out = np.zeros((len(images), len(CLASSES)))
        for i, image in enumerate(images):
            x = np.asarray(image, dtype=float)
            out[i, CLASSES.index("amusement" if x[..., 0].mean() > x[..., 2].mean() else "fear")] = 1
        return out


def test_emotion_accuracy_counts_the_judges_hits_per_emotion(pipe):
    result, images = emotion_accuracy(pipe, ReadsRed(), per_emotion=2, steps=1)
    judge = ReadsRed()
    hits = {e: sum(judge.probabilities(ims).argmax(1) == CLASSES.index(e)) for e, ims in zip(CLASSES, images)}
    assert result["num_images"] == 16 and [len(x) for x in images] == [2] * 8
    assert result["per_emotion"] == {e: h / 2 for e, h in hits.items()}
    assert result["emo_a"] == sum(hits.values()) / 16
    assert set(result["per_emotion"]) == set(CLASSES) and sum(hits.values()) == sum(
        hits[e] for e in ("amusement", "fear")
    )
    # the images of each emotion are that emotion's (seed 0, 1)
    assert_same_images(images[CLASSES.index("awe")], pixels(pipe("awe", num_images=2, steps=1).images))
