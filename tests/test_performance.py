"""The efficiency options (issue 6): they change speed or memory, never the numbers; and the defaults they rely on."""

import shutil
import sys

import pytest
import torch

from tests.conftest import REPO, joint_overrides, micro_overrides
from uniemo.config import JointRunConfig, LossConfig, load_config
from uniemo.models.architecture import UniEmoConfig
from uniemo.models.diffusion import stable_diffusion_15_architecture, tiny_stable_diffusion
from uniemo.models.placeholder import PromptEncoder
from uniemo.models.understanding import ExpertQueryCLIP
from uniemo.models.uniemo import UniEmoModel
from uniemo.pipelines.classifier import EmotionClassifier
from uniemo.runtime import tune_allocator
from uniemo.train import objective as objective_module
from uniemo.train.joint import train_joint
from uniemo.train.objective import JointObjective
from uniemo.train.prior import compute_prior


def _objective_and_model(trained_run):
    from diffusers import DDPMScheduler

    stage1 = EmotionClassifier.from_pretrained(trained_run).model.train()
    pipe = tiny_stable_diffusion(seed=0)
    encoder = PromptEncoder(pipe)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False).eval()
    model = UniEmoModel(stage1, UniEmoConfig(encoder.condition_dims, mapper_hidden=16))
    cfg = load_config(None, ["joint.resolution=32", "joint.condition_loss=supcon"], JointRunConfig)
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    objective = JointObjective(encoder, pipe.vae, pipe.unet, noise, cfg.joint, LossConfig())
    side = stage1.image_size
    batch = {
        "pixel_values": torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(1)),
        "diffusion_pixels": torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1,
        "label": torch.tensor([0, 1, 0, 1]),
        "scene_id": torch.tensor([0, 1, -1, 2]),
        "object_id": torch.tensor([1, -1, 0, 2]),
    }
    return objective, model, pipe, batch


def test_gradient_checkpointing_changes_memory_not_the_step(trained_run):
    objective, model, pipe, batch = _objective_and_model(trained_run)

    def step():
        model.zero_grad(set_to_none=True)
        loss, parts = objective(model, model, batch, torch.Generator().manual_seed(0))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), parts, grads

    loss, parts, grads = step()
    assert set(parts) >= {"loss/ce", "loss/understanding", "loss/diffusion", "loss/cond"}
    pipe.unet.enable_gradient_checkpointing()
    model.understanding.gradient_checkpointing = True
    assert pipe.unet.is_gradient_checkpointing
    loss_ckpt, _, grads_ckpt = step()
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_joint_options_reach_the_models(synth_dir, trained_run, tmp_path, monkeypatch):
    compiled, seen = [], {}
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    real_loss = objective_module.diffusion_loss

    def spy(unet, *args, **kwargs):
        seen["unet"] = unet.is_gradient_checkpointing
        return real_loss(unet, *args, **kwargs)

    monkeypatch.setattr(objective_module, "diffusion_loss", spy)
    real_layer = ExpertQueryCLIP._run_layer

    def layer_spy(self, layer, hidden):
        if self.training:  # evaluation afterwards runs without checkpointing
            seen["vision"] = self.gradient_checkpointing
        return real_layer(self, layer, hidden)

    monkeypatch.setattr(ExpertQueryCLIP, "_run_layer", layer_spy)
    overrides = joint_overrides(synth_dir, trained_run, tmp_path / "j", 2) + [
        "joint.gradient_checkpointing=true",
        "compile=true",
    ]
    summary = train_joint(load_config(REPO / "configs" / "tiny-joint.yaml", overrides, JointRunConfig), progress=False)
    assert summary.steps == 2
    assert sorted(compiled) == ["ExpertQueryCLIP", "UNet2DConditionModel"]
    assert seen["unet"] is True and seen["vision"] is True


def test_efficiency_options_may_change_on_resume(synth_dir, trained_run, tmp_path):
    from uniemo.train.loop import check_resumable, config_yaml_text

    out = tmp_path / "j"
    cfg = load_config(
        REPO / "configs" / "tiny-joint.yaml", joint_overrides(synth_dir, trained_run, out), JointRunConfig
    )
    saved = tmp_path / "config.yaml"
    saved.write_text(config_yaml_text(cfg))
    cfg.compile, cfg.joint.gradient_checkpointing, cfg.joint.feature_cache = True, True, str(tmp_path / "cache")
    check_resumable(saved, cfg)  # no error: none of them changes what is computed


def test_the_classifier_prior_reads_cached_features_on_the_next_run(synth_dir, trained_run, tmp_path, monkeypatch):
    from uniemo.data.datasets import open_dataset
    from uniemo.metrics.networks import ClipNetwork

    objective, model, _, _ = _objective_and_model(trained_run)
    cache = tmp_path / "cache"
    cfg = load_config(None, ["joint.prior_clip=uniemo-standin", f"joint.feature_cache={cache}"], JointRunConfig)
    samples = open_dataset(synth_dir).split("train")[:64]
    u = model.understanding
    scenes, objects = (
        [str(i) for i in range(len(u.scene_vocab_embeds))],
        [str(i) for i in range(len(u.object_vocab_embeds))],
    )
    used = compute_prior(cfg, model, samples, scenes, objects, "micro-clip")
    assert used == "classifier (uniemo-standin)" and len(list(cache.glob("clip-features-*.safetensors"))) == 1
    first = model.prior_scene.clone()

    def refuse(*args, **kwargs):
        raise AssertionError("the features were computed again")

    monkeypatch.setattr(ClipNetwork, "embed_samples", refuse)
    compute_prior(cfg, model, samples, scenes, objects, "micro-clip")
    torch.testing.assert_close(model.prior_scene, first)
    cfg.joint.feature_cache = ""  # no cache: computed (and refused here)
    with pytest.raises(AssertionError, match="computed again"):
        compute_prior(cfg, model, samples, scenes, objects, "micro-clip")


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile needs a C compiler on a CPU"
)
def test_stage1_with_torch_compile_saves_plain_weight_names(synth_dir, tmp_path):
    from safetensors.torch import load_file

    from uniemo.train.understanding import train_understanding

    out = tmp_path / "compiled"
    overrides = micro_overrides(synth_dir, out, steps=2) + ["compile=true", "eval_every=2"]
    summary = train_understanding(load_config(REPO / "configs" / "tiny.yaml", overrides), progress=False)
    assert summary.steps == 2
    names = load_file(str(out / "best" / "model.safetensors")).keys()
    assert "scene_queries" in names and not any("_orig_mod" in n for n in names)
    assert EmotionClassifier.from_pretrained(out).classes


def test_defaults_the_speed_relies_on():
    from uniemo.models.factory import load_clip_vision

    # transformers' CLIP and diffusers' UNet run PyTorch's fused scaled-dot-product attention by default
    assert load_clip_vision("micro-clip").config._attn_implementation == "sdpa"
    processors = tiny_stable_diffusion().unet.attn_processors.values()
    assert {type(p).__name__ for p in processors} == {"AttnProcessor2_0"}


def test_sd15_architecture_has_stable_diffusion_15s_sizes():
    with torch.device("meta"):  # sizes only: no memory, no initialisation time
        pipe = stable_diffusion_15_architecture()
    counts = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")
    }
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert pipe.unet.config.cross_attention_dim == 768 and pipe.vae_scale_factor == 8
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and pipe.scheduler.config.skip_prk_steps


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_allocator_tuning_can_be_turned_off(monkeypatch):
    assert tune_allocator() is True
    monkeypatch.setenv("UNIEMO_TUNE_MALLOC", "0")
    assert tune_allocator() is False
