"""Generation from a joint checkpoint: the four modes, reproducibility, the API and the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_cli import assert_one_line_error, uniemo
from uniemo.errors import CheckpointError, ConfigError
from uniemo.models.factory import STANDIN, standin_path
from uniemo.pipelines.generation import (
    DEFAULT_SCHEDULER,
    SCHEDULERS,
    UniEmoPipeline,
    default_scheduler,
    parse_emotion_weights,
)


@pytest.fixture(scope="module")
def pipe(joint_run):
    return UniEmoPipeline.from_pretrained(joint_run)


def _pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_same_seed_same_images_other_seed_other_images(pipe):
    a = pipe("awe", num_images=2, steps=3, seed=5)
    b = pipe("awe", num_images=2, steps=3, seed=5)
    c = pipe("awe", num_images=2, steps=3, seed=6)
    assert np.array_equal(_pixels(a.images), _pixels(b.images))
    assert not np.array_equal(_pixels(a.images), _pixels(c.images))
    # image i depends only on seed + i: the second image of seed 5 is the first of seed 6
    assert np.array_equal(_pixels(a.images[1:]), _pixels(c.images[:1]))
    assert a.settings.emotions == {"awe": 1.0} and a.settings.text == "<emotion>"
    # more images than a batch: batch after batch, image i is still the image of seed + i
    d = pipe("awe", num_images=3, steps=3, seed=5, batch_size=2)
    e = pipe("awe", num_images=1, steps=3, seed=7)
    assert np.abs(_pixels(d.images[:2]) - _pixels(a.images)).max() <= 1
    assert np.abs(_pixels(d.images[2:]) - _pixels(e.images)).max() <= 1


def test_fusion_weights(pipe):
    single = pipe("fear", num_images=2, steps=3, seed=0)
    fused = pipe(["fear=1", "awe=0"], num_images=2, steps=3, seed=0)
    assert np.array_equal(_pixels(single.images), _pixels(fused.images))
    c_fear = pipe.emotion_conditions({"fear": 1.0}, 1, 0)
    c_awe = pipe.emotion_conditions({"awe": 1.0}, 1, 0)
    c_mix = pipe.emotion_conditions(parse_emotion_weights({"fear": 3, "awe": 1}, pipe.classes), 1, 0)
    torch.testing.assert_close(c_mix, 0.75 * c_fear + 0.25 * c_awe)
    # a real mix moves the images away from both of its emotions
    half = _pixels(pipe(["fear=1", "awe=1"], num_images=2, steps=3, seed=0).images)
    awe = _pixels(pipe("awe", num_images=2, steps=3, seed=0).images)
    assert not np.array_equal(half, _pixels(single.images)) and not np.array_equal(half, awe)


def test_transfer_reference_and_schedulers(pipe, synth_dir):
    out = pipe("contentment", prompt="a bench", num_images=1, steps=2, scheduler="euler-a")
    assert out.settings.text == "<emotion>, a bench" and out.settings.scheduler == "euler-a"
    assert type(pipe.diffusion.scheduler).__name__ == "DDPMScheduler"  # restored afterwards
    image = next((synth_dir / "image").rglob("*.jpg"))
    ref = pipe(reference=image, prompt="a cup", num_images=2, steps=2)
    assert ref.settings.read in pipe.classes and len(ref.images) == 2
    for name in SCHEDULERS:
        assert len(pipe("awe", steps=2, scheduler=name).images) == 1
    # The fast sampler by default; "model" is the diffusion model's own (the paper's setting at 50 steps).
    assert pipe("awe", steps=2).settings.scheduler == DEFAULT_SCHEDULER == "dpm++"
    assert pipe("awe", steps=2, scheduler="model").settings.scheduler == "DDPMScheduler"
    default, dpm = pipe("awe", steps=3).images[0], pipe("awe", steps=3, scheduler="dpm++").images[0]
    assert np.array_equal(np.asarray(default), np.asarray(dpm))
    # the shipped stand-in samples with its own scheduler by default (it does better than DPM-Solver++ on it)
    on_standin = UniEmoPipeline(pipe.model, pipe.diffusion, {**pipe.meta, "diffusion": STANDIN})
    assert on_standin.default_scheduler == "model" == default_scheduler(str(standin_path("sd")))
    assert on_standin("awe", steps=2).settings.scheduler == "DDPMScheduler"
    assert pipe.default_scheduler == default_scheduler("tiny-sd") == "dpm++"
    # the negative prompt's embedding is kept between calls, and follows the negative prompt
    dark = pipe("awe", steps=3, negative_prompt="dark").images[0]
    assert not np.array_equal(np.asarray(dark), np.asarray(default))
    assert np.array_equal(np.asarray(pipe("awe", steps=3).images[0]), np.asarray(default))


def test_bad_requests_are_clear_errors(pipe):
    with pytest.raises(ConfigError, match="unknown emotion 'joy'"):
        pipe("joy")
    with pytest.raises(ConfigError, match="positive"):
        pipe(["awe=0", "fear=0"])
    with pytest.raises(ConfigError, match="must be a number"):
        pipe(["awe=lots"])
    with pytest.raises(ConfigError, match="finite number"):
        pipe(["awe=-1"])
    with pytest.raises(ConfigError, match="not both"):
        pipe("awe", reference=Image.new("RGB", (8, 8)))
    with pytest.raises(ConfigError, match="unknown scheduler"):
        pipe("awe", scheduler="fastest")
    with pytest.raises(ConfigError, match="must leave room for <emotion>"):
        pipe("awe", prompt="a very long prompt " * 20)
    with pytest.raises(ConfigError, match="at most once"):
        pipe("awe", prompt="<emotion> and <emotion>")


def test_save_pretrained_round_trip_with_and_without_the_diffusion_model(pipe, tmp_path):
    ref = pipe("sadness", num_images=1, steps=2, seed=3)
    pipe.save_pretrained(tmp_path / "with", include_diffusion=True)
    assert (tmp_path / "with" / "diffusion" / "model_index.json").is_file()
    again = UniEmoPipeline.from_pretrained(tmp_path / "with")
    assert np.array_equal(_pixels(ref.images), _pixels(again("sadness", num_images=1, steps=2, seed=3).images))
    pipe.save_pretrained(tmp_path / "without")
    assert not (tmp_path / "without" / "diffusion").exists()
    with pytest.raises(CheckpointError, match="takes conditions of width"):
        UniEmoPipeline.from_pretrained(tmp_path / "without", diffusion="tiny-sdxl")


def test_a_stage1_checkpoint_is_not_a_generator(trained_run):
    with pytest.raises(CheckpointError, match="'understanding' checkpoint, not a uniemo 'uniemo'"):
        UniEmoPipeline.from_pretrained(trained_run)


def test_generate_cli(joint_run, tmp_path):
    out = tmp_path / "gen"
    r = uniemo(
        "generate", "--checkpoint", joint_run, "--emotion", "amusement=0.5", "--emotion", "awe=0.5",
        "--prompt", "a street", "--num-images", 2, "--steps", 2, "--guidance", 30, "--seed", 7, "--out", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    settings = json.loads((out / "settings.json").read_text())
    assert settings["emotions"] == {"amusement": 0.5, "awe": 0.5} and settings["seed"] == 7
    assert (
        [p.name for p in sorted(out.glob("*.png"))]
        == settings["files"]
        == [
            "amusement-awe_000.png",
            "amusement-awe_001.png",
        ]
    )

    # the prompt reaches the images: the same seed with another prompt draws other pictures, with the same prompt
    # the same ones (the control). A high guidance: the random tiny-sd fixture barely reads text at 2 steps (at 7.5
    # the two prompts' images were 0.97 apart); the pipeline's own test, test_pipeline_modes.py, checks the prompt
    # against no prompt.
    def first_image(prompt, name):
        r = uniemo(
            "generate", "--checkpoint", joint_run, "--emotion", "amusement=0.5", "--emotion", "awe=0.5",
            "--prompt", prompt, "--num-images", 2, "--steps", 2, "--guidance", 30, "--seed", 7,
            "--out", tmp_path / name,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        with Image.open(tmp_path / name / "amusement-awe_000.png") as image:
            return np.asarray(image, dtype=float)

    with Image.open(out / "amusement-awe_000.png") as image:
        ours = np.asarray(image, dtype=float)
    assert np.abs(ours - first_image("a street", "same")).mean() < 0.1
    assert np.abs(ours - first_image("a boat", "other")).mean() > 1.0
    assert json.loads((tmp_path / "other" / "settings.json").read_text())["prompt"] == "a boat"
    assert_one_line_error(
        uniemo("generate", "--checkpoint", joint_run, "--emotion", "joy", "--out", out), "unknown emotion 'joy'"
    )
    assert_one_line_error(uniemo("generate", "--checkpoint", joint_run, "--out", out), "--emotion")


def test_checkpoint_carries_its_sampling_defaults_to_every_entry_point(joint_run, pipe, tmp_path):
    """What a user gets without flags is what the checkpoint was measured best with (tiny-joint: guidance 3,
    diversity 0.5), from Python, the command line and the web app alike; an explicit value still wins."""
    meta = json.loads((joint_run / "last" / "model.json").read_text())
    assert meta["sampling"] == {"guidance": 3.0, "diversity": 0.5}
    assert pipe.sampling_defaults == {"steps": 25, "guidance": 3.0, "scheduler": "dpm++", "diversity": 0.5}
    quick = pipe("awe", num_images=1, steps=2)
    assert quick.settings.guidance == 3.0 and quick.settings.diversity == 0.5
    assert pipe("awe", num_images=1, steps=2, guidance=7.5).settings.guidance == 7.5
    assert pipe("awe", num_images=1, steps=2, diversity=1.0).settings.diversity == 1.0
    r = uniemo("generate", "--checkpoint", joint_run, "--emotion", "awe", "--steps", 2, "--out", tmp_path / "g")
    assert r.returncode == 0, r.stderr
    settings = json.loads((tmp_path / "g" / "settings.json").read_text())
    assert settings["guidance"] == 3.0 and settings["scheduler"] == "dpm++" and settings["diversity"] == 0.5
    cli_image = np.asarray(Image.open(tmp_path / "g" / "awe_000.png"), dtype=np.int16)
    assert np.array_equal(cli_image, _pixels(quick.images)[0])
    from uniemo.app import build_app

    page = build_app(joint_run).config
    sliders = {c["props"].get("elem_id"): c["props"].get("value") for c in page["components"]}
    assert sliders["create-guidance"] == 3.0 and sliders["create-steps"] == 25
