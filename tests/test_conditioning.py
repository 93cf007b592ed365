"""The condition must reach the images: joint training makes the UNet read c, and each generation mode hands its
own condition to the UNet. A short joint run on the built-in data with the shipped stand-in diffusion model is the
tiny fixed problem: the stand-in draws palette, scene and object from text, so a c that carries them lowers L(θ)."""

import json
import re

import numpy as np
import pytest
import torch

from tests.conftest import REPO, joint_overrides
from uniemo.config import JointRunConfig, load_config
from uniemo.train.conditioning import VARIANTS, conditioning_report, make_probe
from uniemo.train.joint import train_joint

STEPS = 80


def _standin_config(synth_dir, stage1, out, *extra, steps=STEPS):
    overrides = joint_overrides(synth_dir, stage1, out, steps, "uniemo-standin")
    # the template alone (c must carry everything) and a fast mapper lr: the tiny problem learns in seconds
    overrides += ["joint.diagnostic_images=32", "joint.diagnostic_draws=2", "save_every=1000"]
    overrides += ["joint.content_prompt=0", "joint.mapper_lr=1e-2", *extra]
    return load_config(REPO / "configs" / "tiny-joint.yaml", overrides, JointRunConfig)


@pytest.fixture(scope="module")
def standin_stage1(synth_dir, tmp_path_factory):
    """A stage-1 model on the shipped stand-in CLIP (whose features tell the images apart, unlike a random
    micro CLIP's), briefly trained."""
    from uniemo.train.understanding import train_understanding

    out = tmp_path_factory.mktemp("runs") / "standin-stage1"
    overrides = [f"data.root={synth_dir}", f"output_dir={out}", "optim.batch_size=32", "optim.max_steps=10"]
    train_understanding(load_config(REPO / "configs" / "tiny.yaml", overrides), progress=False)
    return out


@pytest.fixture(scope="module")
def standin_joint(synth_dir, standin_stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "standin-joint"
    summary = train_joint(_standin_config(synth_dir, standin_stage1, out), progress=False)
    return out, summary


def _diagnoses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "diag/loss_own" in r]


def test_after_joint_training_the_unet_reads_each_images_own_c(standin_joint):
    run, summary = standin_joint
    before, after = _diagnoses(run)[0], summary.conditioning
    assert before["step"] == 0 and after["step"] == STEPS
    # Before training c means nothing to the UNet; after 80 steps the image's own c predicts its noise better than
    # another image's c, than the mean c and than no placeholder at all.
    assert abs(before["diag/gap_shuffled"]) < 0.0005
    assert after["diag/gap_shuffled"] > 0.0015
    assert after["diag/loss_own"] < min(after["diag/loss_mean"], after["diag/loss_empty"])
    # the diagnostic reaches TensorBoard too
    assert list((run / "logs").rglob("events.out.tfevents.*"))


def test_mapper_gradient_comes_from_the_diffusion_loss(synth_dir, standin_stage1, tmp_path):
    """One step of the real training objective with L_cond off: the mappers learn only through L(θ), so a c that
    were detached anywhere between the mappers and the UNet would leave them without a gradient."""
    from diffusers import DDPMScheduler

    from uniemo.data.datasets import collate
    from uniemo.train.joint import build_joint_model
    from uniemo.train.objective import JointObjective

    cfg = _standin_config(synth_dir, standin_stage1, tmp_path / "run", "joint.condition_loss=none")
    start = build_joint_model(cfg)
    pipe, model = start.pipe, start.model.train()
    for part in (pipe.vae, pipe.unet, pipe.text_encoder):
        part.requires_grad_(False)
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    objective = JointObjective(start.encoder, pipe.vae, pipe.unet, noise, cfg.joint, cfg.loss)
    from uniemo.data.datasets import EmotionImageDataset, open_dataset
    from uniemo.data.transforms import ClipTransform

    samples = open_dataset(synth_dir).split("train")[:8]
    data = EmotionImageDataset(samples, ClipTransform(model.understanding.image_size), start.scene_vocab,
                               start.object_vocab, diffusion_size=32)  # fmt: skip
    batch = collate([data[i] for i in range(8)])
    loss, parts = objective(model, model, batch, torch.Generator().manual_seed(0))
    assert "loss/cond" not in parts
    loss.backward()
    for mapper in (model.mappers.map_cls, model.mappers.map_scene, model.mappers.map_object):
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in mapper.parameters())
    assert all(p.grad is None for p in pipe.unet.parameters())


def test_diagnostic_separates_a_condition_the_unet_reads_from_one_it_ignores(standin_joint, synth_dir):
    """Computed independently of training: with c that is the image's own, the loss is lower than with the same
    c's shuffled; with a UNet made blind to the context (cross-attention output zeroed), all variants are equal."""
    from uniemo.pipelines.generation import UniEmoPipeline
    from uniemo.train.objective import JointObjective

    run, _ = standin_joint
    pipe = UniEmoPipeline.from_pretrained(run)
    cfg = load_config(run / "last" / "config.yaml", [], JointRunConfig)
    from diffusers import DDPMScheduler

    noise = DDPMScheduler.from_config(pipe.diffusion.scheduler.config)
    objective = JointObjective(pipe.encoder, pipe.diffusion.vae, pipe.diffusion.unet, noise, cfg.joint, cfg.loss)
    from uniemo.data.datasets import open_dataset

    size = pipe.model.understanding.image_size
    probe = make_probe(open_dataset(synth_dir).split("val"), size, 32, pipe.diffusion.vae, 24, 2)
    assert len(probe.labels) == 24 and bool((probe.labels != probe.labels[probe.permutation]).all())
    seeing = conditioning_report(pipe.model, objective, probe)
    assert seeing["diag/gap_shuffled"] > 0.0008
    blind = []
    for name, module in pipe.diffusion.unet.named_modules():
        if name.endswith("attn2"):
            blind.append(module.to_out[0].register_forward_hook(lambda m, a, out: torch.zeros_like(out)))
    try:
        ignoring = conditioning_report(pipe.model, objective, probe)
    finally:
        for handle in blind:
            handle.remove()
    losses = [ignoring[f"diag/loss_{v}"] for v in VARIANTS]
    assert max(losses) - min(losses) < 1e-6
    assert ignoring["grad/c_diffusion"] == 0.0 < seeing["grad/c_diffusion"]


def test_the_emotion_space_holds_each_emotions_own_images(standin_joint, synth_dir):
    from uniemo.data.datasets import EmotionImageDataset, open_dataset
    from uniemo.data.transforms import ClipTransform
    from uniemo.pipelines.generation import UniEmoPipeline
    from uniemo.train.joint import dataset_features

    run, _ = standin_joint
    model = UniEmoPipeline.from_pretrained(run).model
    samples = open_dataset(synth_dir).split("train")
    feats = dataset_features(model, EmotionImageDataset(samples, ClipTransform(model.understanding.image_size)))
    cls, labels, read_as = feats["features"]["cls"], feats["labels"], feats["predictions"]
    assert model.config.space_bank  # the demo's recipe: a bank of the images stage 1 reads as their own emotion
    assert bool((read_as != labels).any())  # stage 1 gets some wrong, so the space without the filter differs
    for k in range(8):
        own = cls[labels == k]
        agree = cls[(labels == k) & (read_as == k)]
        own = agree if len(agree) else own  # an emotion none of whose images agrees keeps them all
        torch.testing.assert_close(model.space_cls_mean[k], own.mean(0), atol=1e-4, rtol=1e-4)
        # every entry of the bank is such a training image of that emotion
        assert all(float((own - row).abs().max(1).values.min()) < 1e-4 for row in model.space_cls_bank[k])


def test_transfer_prompt_and_reference_change_what_the_unet_sees(standin_joint, synth_dir):
    from uniemo.data.datasets import open_dataset
    from uniemo.pipelines.generation import UniEmoPipeline

    run, _ = standin_joint
    pipe = UniEmoPipeline.from_pretrained(run)
    plain = pipe("awe", num_images=2, steps=4, seed=0)
    house = pipe("awe", prompt="a house", num_images=2, steps=4, seed=0)
    assert house.settings.text == "<emotion>, a house"  # the checkpoint's transfer template
    pipe.meta.pop("transfer_template")  # a checkpoint written before it was carried
    assert pipe.prompt_for("a house") == "a house, <emotion>"
    a, b = (np.stack([np.asarray(im, dtype=np.int16) for im in out.images]) for out in (plain, house))
    assert np.abs(a - b).mean() > 2  # the content words change the images, not only settings.json
    samples = open_dataset(synth_dir).split("test")
    first = next(s for s in samples if s.label == 1)
    other = next(s for s in samples if s.label == 6)
    c1, read1 = pipe.reference_condition(first.path)
    c2, _ = pipe.reference_condition(other.path)
    assert not torch.allclose(c1, c2, atol=1e-3)
    # the reference's condition is the model's condition of that image's own features, computed here directly
    from uniemo.data.images import load_image

    out = pipe.model.understanding(pipe.transform(load_image(first.path)).unsqueeze(0))
    expected = pipe.model.condition({"cls": out.cls, "scene": out.scene, "object": out.object}, out.logits.argmax(1))
    torch.testing.assert_close(c1, expected)
    assert read1 == pipe.classes[int(out.logits.argmax())]


def test_content_prompts_name_the_images_scene_and_object(synth_dir, standin_stage1, tmp_path):
    """With ``joint.content_prompt`` the training prompt joins the content and the placeholder by
    ``joint.transfer_template`` — the form emotion transfer generates with — for that share of the images; without
    it, the placeholder alone."""
    from diffusers import DDPMScheduler

    from uniemo.train.joint import build_joint_model
    from uniemo.train.objective import JointObjective, content_words

    assert content_words("forest", "tent") == "a forest with a tent" and content_words(None, "apple") == "an apple"
    assert content_words("ocean", None) == "an ocean" and content_words(None, None) is None
    cfg = _standin_config(synth_dir, standin_stage1, tmp_path / "run", "joint.content_prompt=1.0")
    start = build_joint_model(cfg)
    pipe = start.pipe
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    objective = JointObjective(
        start.encoder, pipe.vae, pipe.unet, noise, cfg.joint, cfg.loss, torch.float32, start.scene_vocab,
        start.object_vocab,
    )  # fmt: skip
    scene, obj = start.scene_vocab.index("forest"), start.object_vocab.index("tent")
    batch = {
        "label": torch.tensor([0, 1]),
        "scene_id": torch.tensor([scene, -1]),
        "object_id": torch.tensor([obj, -1]),
    }
    contents = objective.contents(batch, torch.Generator().manual_seed(0))
    assert contents == ["a forest with a tent", None]
    c = torch.randn(2, sum(start.encoder.condition_dims)) * 0.1
    got = objective.context(c, 2, contents)["prompt_embeds"]
    want = start.encoder.encode(["<emotion>, a forest with a tent", "<emotion>"], c)["prompt_embeds"]
    torch.testing.assert_close(got, want)
    cfg.joint.transfer_template = "{content}, {placeholder}"  # the other order is another prompt
    got = objective.context(c, 2, contents)["prompt_embeds"]
    want = start.encoder.encode(["a forest with a tent, <emotion>", "<emotion>"], c)["prompt_embeds"]
    torch.testing.assert_close(got, want)
    cfg.joint.content_prompt = 0.0
    assert objective.contents(batch, torch.Generator().manual_seed(0)) == [None, None]


def test_a_list_of_references_gives_each_its_own_images(standin_joint, synth_dir):
    from uniemo.data.datasets import open_dataset
    from uniemo.pipelines.generation import UniEmoPipeline

    run, _ = standin_joint
    pipe = UniEmoPipeline.from_pretrained(run)
    samples = open_dataset(synth_dir).split("test")
    a, b = samples[0].path, next(s.path for s in samples if s.label != samples[0].label)
    both = pipe(reference=[a, b], num_images=1, steps=3, seed=4, batch_size=1)  # two batches
    alone_a = pipe(reference=a, num_images=1, steps=3, seed=4)
    alone_b = pipe(reference=b, num_images=1, steps=3, seed=5)  # image i uses seed + i
    pixels = [np.asarray(im, dtype=np.int16) for im in both.images]
    assert len(pixels) == 2 and both.settings.reference == [str(a), str(b)]
    assert np.array_equal(pixels[0], np.asarray(alone_a.images[0], dtype=np.int16))
    assert np.array_equal(pixels[1], np.asarray(alone_b.images[0], dtype=np.int16))


def test_evaluate_conditioning_command(standin_joint, synth_dir, trained_run):
    from tests.test_cli import assert_one_line_error, uniemo

    run, summary = standin_joint
    args = ["evaluate", "conditioning", "--checkpoint", run, "--data", synth_dir, "--images", 32, "--draws", 2]
    r = uniemo(*args, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    # the same probe (the val split's first 32 images across emotions, 2 draws, seed 0) as the run's own last diagnosis
    assert report["num_images"] == 32
    for key in ("diag/loss_own", "diag/loss_shuffled", "diag/loss_mean", "diag/loss_empty"):
        assert report[key] == pytest.approx(summary.conditioning[key], rel=1e-4), key
    text = uniemo(*args)
    assert text.returncode == 0 and "(the UNet uses c)" in text.stdout
    # c sits at the text encoder's token-embedding norm (the default), as the page prints both
    norms = re.search(r"‖c‖ ([\d.]+); token embeddings ‖e‖ mean ([\d.]+)", text.stdout)
    assert norms and norms.group(1) == norms.group(2), text.stdout
    assert_one_line_error(
        uniemo("evaluate", "conditioning", "--checkpoint", trained_run, "--data", synth_dir),
        "'understanding' checkpoint",
    )
