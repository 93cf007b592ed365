"""Stage 2: joint training (METHOD §3-§5) on a micro stage-1 model and a tiny random Stable Diffusion."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO, joint_overrides
from uniemo.config import JointRunConfig, load_config
from uniemo.errors import CheckpointError, ConfigError
from uniemo.losses import diffusion_loss, supervised_contrastive
from uniemo.models.architecture import UniEmoConfig
from uniemo.models.diffusion import tiny_stable_diffusion
from uniemo.models.placeholder import PromptEncoder
from uniemo.models.uniemo import UniEmoModel
from uniemo.pipelines.classifier import EmotionClassifier
from uniemo.train import joint as joint_module
from uniemo.train import objective as objective_module
from uniemo.train.joint import train_joint


def _config(synth_dir, stage1, out, *extra, steps=4, diffusion="tiny-sd"):
    overrides = joint_overrides(synth_dir, stage1, out, steps, diffusion) + list(extra)
    return load_config(REPO / "configs" / "tiny-joint.yaml", overrides, JointRunConfig)


def test_joint_checkpoint_holds_everything_generation_needs(joint_run, trained_run):
    meta = json.loads((joint_run / "last" / "model.json").read_text())
    assert meta["kind"] == "uniemo" and meta["finished"] and meta["steps"] == 4
    assert meta["diffusion"] == "tiny-sd" and meta["placeholder"] == "<emotion>"
    assert 0 <= meta["accuracy_before"] <= 1 and 0 <= meta["accuracy_after"] <= 1
    summary = json.loads((joint_run / "summary.json").read_text())
    assert summary["accuracy_before"] == meta["accuracy_before"]
    rows = [json.loads(line) for line in (joint_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss/total" in r]
    assert {"loss/diffusion", "loss/understanding", "loss/total"} <= set(losses[-1])
    assert "loss/cond" not in losses[-1]  # the default: no L_cond (docs/findings.md)

    from uniemo.pipelines.generation import UniEmoPipeline

    pipe = UniEmoPipeline.from_pretrained(joint_run)
    model = pipe.model
    assert model.has_emotion_space()
    k = len(meta["classes"])
    assert model.space_cls_mean.shape[0] == k and bool((model.space_scene_std > 0).all())
    # P(e | a): rows sum to 1
    torch.testing.assert_close(model.prior_scene.sum(1), torch.ones(model.prior_scene.shape[0]))
    torch.testing.assert_close(model.prior_object.sum(1), torch.ones(model.prior_object.shape[0]))
    # the understanding part trained on, the frozen diffusion model did not
    stage1 = EmotionClassifier.from_pretrained(trained_run).model
    assert not torch.equal(stage1.scene_queries, model.understanding.scene_queries)
    fresh = tiny_stable_diffusion(seed=0)
    for name, tensor in fresh.unet.state_dict().items():
        assert torch.equal(tensor, pipe.diffusion.unet.state_dict()[name]), name
    # the joint checkpoint is also a classifier (the jointly trained understanding model)
    clf = EmotionClassifier.from_pretrained(joint_run)
    torch.testing.assert_close(clf.model.scene_queries, model.understanding.scene_queries)


def test_gradients_reach_mappers_and_queries_not_the_diffusion_model(trained_run):
    stage1 = EmotionClassifier.from_pretrained(trained_run).model.train()
    pipe = tiny_stable_diffusion(seed=0)
    encoder = PromptEncoder(pipe)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
    model = UniEmoModel(stage1, UniEmoConfig(encoder.condition_dims, mapper_hidden=16))
    model.prior_scene.copy_(torch.rand_like(model.prior_scene).softmax(1))
    labels = torch.tensor([0, 1, 0, 1])
    # joint training's optimiser holds exactly the understanding and mapper parameters, nothing of the diffusion model
    cfg = load_config(None, ["optim.backbone_lr_scale=0"], JointRunConfig)
    stage1.vision.requires_grad_(False)
    held = {id(p) for g in joint_module._param_groups(model, cfg) for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(id(p) in held for p in model.mappers.parameters()) and id(stage1.scene_queries) in held
    stage1.vision.requires_grad_(True)
    forward = model(torch.randn(4, 3, stage1.image_size, stage1.image_size), labels)
    out, c = forward.understanding, forward.condition
    text = encoder.encode(["<emotion>"] * 4, c)
    latents = torch.randn(4, 4, 16, 16)
    loss = diffusion_loss(pipe.unet, pipe.scheduler, latents, text["prompt_embeds"], torch.Generator().manual_seed(0))
    loss = loss + supervised_contrastive(c, labels) + F.cross_entropy(out.logits, labels)
    loss.backward()
    for mapper in (model.mappers.map_cls, model.mappers.map_scene, model.mappers.map_object):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mapper.parameters())
    assert stage1.scene_queries.grad.abs().sum() > 0 and stage1.object_queries.grad.abs().sum() > 0
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert all(p.grad is None for p in part.parameters())


def test_without_l_theta_the_objective_is_l_u_alone_and_never_runs_the_unet(trained_run, synth_dir, tmp_path):
    # implicit feedback's control (joint.diffusion_weight=0): the understanding loss of the same batch, no UNet pass
    cfg = _config(synth_dir, trained_run, tmp_path / "run", "joint.diffusion_weight=0")
    start = joint_module.build_joint_model(cfg)
    data = joint_module.joint_data(cfg, start)
    batch = next(iter(torch.utils.data.DataLoader(data.train_set, batch_size=4)))

    def no_unet(*args, **kwargs):
        raise AssertionError("the UNet ran at w_θ = 0")

    pipe = start.pipe
    objective = objective_module.JointObjective(start.encoder, pipe.vae, no_unet, pipe.scheduler, cfg.joint, cfg.loss)
    loss, parts = objective(start.model, start.model, batch, torch.Generator().manual_seed(0))
    assert parts["loss/diffusion"] == 0 and parts["loss/understanding"] > 0
    torch.testing.assert_close(loss, cfg.joint.understanding_weight * parts["loss/understanding"])
    # the run: an understanding model trained on L_U alone, with no emotion space to generate from
    summary = train_joint(cfg, progress=False)
    assert summary.losses["loss/diffusion"] == 0 and 0 <= summary.accuracy_after <= 1
    from uniemo.pipelines.generation import UniEmoPipeline

    with pytest.raises(CheckpointError, match="trained without L\\(θ\\): an understanding model, no generator"):
        UniEmoPipeline.from_pretrained(tmp_path / "run")("awe")


@pytest.mark.parametrize("diffusion", ["tiny-sd", "tiny-sdxl"])
def test_prompt_encoder_matches_the_pipeline_and_pools_at_end_of_text(diffusion):
    from uniemo.models.diffusion import load_stable_diffusion

    pipe = load_stable_diffusion(diffusion)
    if diffusion == "tiny-sdxl":  # SDXL's real second encoder has the legacy eos_token_id 2 (argmax pooling)
        pipe.text_encoder_2.config.eos_token_id = 2
        for module in pipe.text_encoder_2.modules():
            if hasattr(module, "eos_token_id"):
                module.eos_token_id = 2
    with torch.no_grad():
        reference = pipe.encode_prompt(
            "a photo of a bench", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        encoder = PromptEncoder(pipe)
        ours = encoder.encode(["a photo of a bench"])
        torch.testing.assert_close(ours["prompt_embeds"], reference[0])
        if not encoder.is_xl:
            return
        torch.testing.assert_close(ours["pooled_prompt_embeds"], reference[2])
        # the placeholder is now the highest token id; the pooled embedding must still be read at end-of-text
        injector = encoder.injectors[1]
        ids = injector.tokenize(["<emotion> a bench"])
        condition = torch.randn(1, 48)
        with injector.inject(ids, condition):
            out = pipe.text_encoder_2(input_ids=ids)
        eos = int((ids[0] == 49407).nonzero()[0])
        expected = pipe.text_encoder_2.text_projection(out.last_hidden_state[0, eos])
        torch.testing.assert_close(out.text_embeds[0], expected)


def test_alpha_is_detached_and_follows_the_mode(trained_run):
    stage1 = EmotionClassifier.from_pretrained(trained_run).model
    model = UniEmoModel(stage1, UniEmoConfig([32], mapper_hidden=16))
    prior = torch.rand_like(model.prior_scene).softmax(1)
    model.prior_scene.copy_(prior)
    model.prior_object.copy_(torch.rand_like(model.prior_object).softmax(1))
    scene = F.normalize(torch.randn(3, stage1.scene_vocab_embeds.shape[1], requires_grad=True), dim=-1)
    obj = F.normalize(torch.randn(3, stage1.object_vocab_embeds.shape[1]), dim=-1)
    emotions = torch.tensor([0, 3, 5])
    a_s, a_o = model.alphas(scene, obj, emotions)
    assert not a_s.requires_grad and a_s.shape == (3,)
    pi = (scene @ stage1.scene_vocab_embeds.T / 0.07).softmax(-1)
    torch.testing.assert_close(a_s, (pi * prior[:, emotions].T).sum(-1).detach())
    model.alpha_mode = "none"
    assert torch.equal(model.alphas(scene, obj, emotions)[0], torch.ones(3))


def test_alpha_mean_weighs_every_image_by_the_training_sets_mean_soft_alpha(synth_dir, trained_run, tmp_path):
    from uniemo.data.datasets import collate
    from uniemo.pipelines.generation import UniEmoPipeline

    cfg = _config(synth_dir, trained_run, tmp_path / "mean", "joint.alpha=mean", steps=2)
    start = joint_module.build_joint_model(cfg, 0)
    data = joint_module.joint_data(cfg, start)
    start.model.prior_scene.copy_(torch.rand_like(start.model.prior_scene).softmax(1))
    start.model.prior_object.copy_(torch.rand_like(start.model.prior_object).softmax(1))
    mean = joint_module.fill_alpha_mean(start.model, data.train_set, 16)
    # by hand: soft α of every training image with its own emotion, averaged
    start.model.eval()
    scene, obj = [], []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(data.train_set, batch_size=7, collate_fn=collate):
            out = start.model.understanding(batch["pixel_values"])
            a_s, a_o = start.model.alphas(out.scene_embeds, out.object_embeds, batch["label"], mode="soft")
            scene.append(a_s)
            obj.append(a_o)
    assert mean == pytest.approx([float(torch.cat(scene).mean()), float(torch.cat(obj).mean())], rel=1e-5)
    assert 0 < mean[0] < 1 and mean[0] != pytest.approx(mean[1])
    a_s, a_o = start.model.alphas(out.scene_embeds, out.object_embeds, batch["label"])
    assert torch.equal(a_s, torch.full_like(a_s, mean[0])) and torch.equal(a_o, torch.full_like(a_o, mean[1]))

    train_joint(cfg, progress=False)  # the run fills it from its own prior and keeps it with the weights
    pipe = UniEmoPipeline.from_pretrained(tmp_path / "mean")
    kept = pipe.model.alpha_mean.tolist()
    assert pipe.model.alpha_mode == "mean" and kept != [1.0, 1.0] and 0 < min(kept) < max(kept) < 1


def test_sdxl_joint_training_and_generation(synth_dir, trained_run, tmp_path):
    from uniemo.pipelines.generation import UniEmoPipeline

    cfg = _config(synth_dir, trained_run, tmp_path / "xl", "joint.condition_loss=ce", steps=2, diffusion="tiny-sdxl")
    summary = train_joint(cfg, progress=False)
    assert summary.steps == 2
    pipe = UniEmoPipeline.from_pretrained(tmp_path / "xl")
    assert pipe.encoder.is_xl and pipe.model.config.condition_dims == (32, 48)
    assert pipe.model.condition_head is not None  # Σ d_c = 80 ≠ D: c gets its own emotion head for L_ce
    images = pipe("awe", num_images=2, steps=2, seed=1).images
    assert [im.size for im in images] == [(32, 32), (32, 32)]


def test_joint_training_without_queries(synth_dir, tmp_path):
    from tests.conftest import micro_overrides
    from uniemo.train.understanding import train_understanding

    stage1 = tmp_path / "plain"
    cfg1 = load_config(
        REPO / "configs" / "tiny.yaml", micro_overrides(synth_dir, stage1, 4) + ["model.query_mode=none"]
    )
    train_understanding(cfg1, progress=False)
    summary = train_joint(_config(synth_dir, stage1, tmp_path / "j", steps=2), progress=False)
    assert summary.steps == 2
    from uniemo.pipelines.generation import UniEmoPipeline

    assert len(UniEmoPipeline.from_pretrained(tmp_path / "j")("anger", steps=2).images) == 1


def test_resume_after_an_interruption_continues_the_same_run(synth_dir, trained_run, tmp_path, monkeypatch):
    straight = _config(synth_dir, trained_run, tmp_path / "a", steps=4)
    train_joint(straight, progress=False)
    calls = {"n": 0}
    real = objective_module.diffusion_loss

    def interrupt_at_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(objective_module, "diffusion_loss", interrupt_at_third_step)
    # the third training step's L(θ): the conditioning diagnostic (which also computes L(θ)) off for this run
    broken = _config(synth_dir, trained_run, tmp_path / "b", "joint.diagnostic_images=0", steps=4)
    with pytest.raises(joint_module.TrainingError, match="--resume"):
        train_joint(broken, progress=False)
    state = json.loads((tmp_path / "b" / "last" / "training_state.json").read_text())
    assert state["counters"]["step"] == 2
    monkeypatch.setattr(objective_module, "diffusion_loss", real)
    train_joint(broken, resume=True, progress=False)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "last" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_joint_config_errors(synth_dir, trained_run, tmp_path):
    with pytest.raises(ConfigError, match="joint.understanding is required"):
        train_joint(load_config(None, [f"data.root={synth_dir}", f"output_dir={tmp_path}"], JointRunConfig))
    with pytest.raises(ConfigError, match="joint.template"):
        train_joint(_config(synth_dir, trained_run, tmp_path / "t", "joint.template=no-slot"))
    with pytest.raises(ConfigError, match="joint.transfer_template must hold"):
        train_joint(_config(synth_dir, trained_run, tmp_path / "t", "joint.transfer_template={content} only"))
    with pytest.raises(ConfigError, match="unknown config key 'joint.alpah'"):
        _config(synth_dir, trained_run, tmp_path / "t", "joint.alpah=soft")
    with pytest.raises(ConfigError, match="condition_loss"):
        _config(synth_dir, trained_run, tmp_path / "t", "joint.condition_loss=mse")
    with pytest.raises(CheckpointError, match="not a uniemo"):
        train_joint(_config(synth_dir, synth_dir / "image", tmp_path / "t"))
    with pytest.raises(CheckpointError, match="Stable Diffusion"):
        train_joint(_config(synth_dir, trained_run, tmp_path / "t", diffusion=str(tmp_path)))


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synth_dir, trained_run, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = objective_module.diffusion_loss

    def nan_at_third_step(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(objective_module, "diffusion_loss", nan_at_third_step)
    # save_every=2; the third training step's L(θ): the diagnostic (which computes L(θ) too) off for this run
    cfg = _config(synth_dir, trained_run, tmp_path / "nan", "joint.diagnostic_images=0", steps=4)
    with pytest.raises(joint_module.TrainingError, match=r"loss became nan at step 2 \(the last good checkpoint"):
        train_joint(cfg, progress=False)
    last = tmp_path / "nan" / "last"
    assert json.loads((last / "training_state.json").read_text())["counters"]["step"] == 2
    from safetensors.torch import load_file

    assert all(torch.isfinite(t.float()).all() for t in load_file(str(last / "model.safetensors")).values())
    assert not json.loads((last / "model.json").read_text())["finished"]


def test_a_continued_run_starts_from_the_moments_it_finished_with(synth_dir, trained_run, joint_run, tmp_path):
    """Explicit feedback continues a finished joint run (``joint.init_from``). A fresh AdamW's first step moves
    every parameter with a gradient by the learning rate itself (m̂/√v̂ = ±1); from the moments the run finished
    with, the first step is the one that run's own next step would be (docs/findings.md, "Continuing a finished
    joint run")."""
    from safetensors.torch import load_file

    from uniemo.checkpoint import load_optimizer_moments

    before = load_file(str(joint_run / "last" / "model.safetensors"))
    mappers = [k for k in before if k.startswith("mappers.") and before[k].ndim >= 2]

    def first_step(name: str, *extra: str) -> float:
        """The median |Δθ| / lr of the mappers' weights over one continued step at the full learning rate."""
        cfg = _config(
            synth_dir,
            trained_run,
            tmp_path / name,
            f"joint.init_from={joint_run}",
            "optim.warmup_ratio=0",
            "joint.diagnostic_images=0",
            *extra,
            steps=1,
        )
        train_joint(cfg, progress=False)
        after = load_file(str(tmp_path / name / "last" / "model.safetensors"))
        moved = torch.cat([(after[k] - before[k]).abs().flatten() for k in mappers])
        return float(moved.median()) / cfg.joint.mapper_lr

    assert first_step("fresh", "joint.init_optimizer=false") == pytest.approx(1.0, abs=0.02)  # Adam's first step
    assert first_step("continued") < 0.8

    # the moments come over only onto the same parameters; otherwise the optimiser is left as it was
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    other = torch.optim.AdamW(params)
    assert not load_optimizer_moments(joint_run / "last", other) and not other.state
    assert not load_optimizer_moments(trained_run / "best", other)  # no training state there


def test_both_stages_train_in_training_mode(synth_dir, trained_run, tmp_path, monkeypatch):
    """The stage-1 model arrives from its checkpoint in eval mode; every training forward runs in training mode
    (gradient checkpointing and any dropout work only there), and evaluation in between leaves it so."""
    modes = []
    real = UniEmoModel.forward

    def spy(self, *args, **kwargs):
        modes.append(self.training and self.understanding.training)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(UniEmoModel, "forward", spy)
    # the conditioning diagnostic (which runs the model in eval mode, on purpose) off: the spy sees training only
    cfg = _config(synth_dir, trained_run, tmp_path / "j", "eval_every=2", "joint.diagnostic_images=0", steps=4)
    train_joint(cfg, progress=False)
    assert modes == [True] * 4
