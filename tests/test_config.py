import dataclasses
from pathlib import Path

import pytest

from uniemo.config import (
    FeedbackRunConfig,
    JointRunConfig,
    UnderstandingRunConfig,
    load_config,
    parse_overrides,
    save_config,
)
from uniemo.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_paper_and_tiny_configs():
    names = {p.stem for p in CONFIGS}
    assert {"tiny", "emoset-vitb32", "emoset-vitb16", "emoset-vitl14", "fi-vitb32", "fi-vitl14"} <= names
    assert {"tiny-joint", "emoset-sd15", "emoset-sdxl"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads(path):
    if "feedback" in path.stem:
        cfg = load_config(path, cls=FeedbackRunConfig)
        assert cfg.data.root == "" and cfg.feedback.checkpoint == ""
        assert (cfg.feedback.eta, cfg.feedback.delta, cfg.feedback.rho) == (0.2, 0.8, 0.2)  # the paper's
        for cls in (JointRunConfig, UnderstandingRunConfig):
            with pytest.raises(ConfigError, match="explicit-feedback config: use it with `uniemo feedback`"):
                load_config(path, cls=cls)
        return
    if "joint" in path.stem or path.stem.endswith(("sd15", "sdxl", "sd15-paper")):  # stage 2
        cfg = load_config(path, cls=JointRunConfig)
        assert cfg.data.root == "" and cfg.joint.understanding == ""
        weights = (cfg.joint.understanding_weight, cfg.joint.condition_weight, cfg.joint.diffusion_weight)
        if path.stem.endswith("paper"):  # the paper's L_Joint, one config away from the measured default
            assert weights == (0.3, 0.3, 0.4) and cfg.joint.condition_loss == "supcon"
            assert cfg.joint.condition_norm == "none" and cfg.joint.content_prompt == 0
        else:
            assert weights == (0.3, 0.3, 1.0) and cfg.joint.condition_loss == "none"
            assert cfg.joint.condition_norm == "token" and cfg.joint.content_prompt == 0
        with pytest.raises(ConfigError, match="stage-2 \\(joint\\) config: use it with `uniemo train joint`"):
            load_config(path)
        return
    cfg = load_config(path)
    assert isinstance(cfg, UnderstandingRunConfig)
    assert cfg.data.root == "", "configs must not carry default data paths"
    with pytest.raises(ConfigError, match="stage-1"):
        load_config(path, cls=JointRunConfig)
    if path.stem.startswith(("emoset", "fi")):
        assert cfg.model.backbone.startswith("openai/clip-vit-")
        assert cfg.optim.lr == 1e-4 and cfg.optim.batch_size == 128 and cfg.optim.weight_decay == 1e-3


def test_paper_loss_weights_are_the_defaults():
    cfg = load_config(None)
    assert (cfg.loss.scene_weight, cfg.loss.object_weight, cfg.loss.ce_weight) == (0.25, 0.25, 0.5)
    assert cfg.model.temperature == 0.07 and cfg.model.beta_init == 0.1


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-4", "model.query_mode=none", "optim.betas=[0.8,0.99]", "data.fold=2"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.model.query_mode == "none"
    assert cfg.optim.betas == (0.8, 0.99)
    assert cfg.data.fold == 2
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("model.query_mode=both", "model.query_mode"),
        ("optim.batch_size=big", "optim.batch_size"),
        ("optim.batch_size=1.5", "optim.batch_size"),
        ("data.augment=3", "data.augment"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_parse_overrides_keeps_strings():
    assert parse_overrides(["model.backbone=openai/clip-vit-base-patch32"]) == {
        "model": {"backbone": "openai/clip-vit-base-patch32"}
    }


def test_a_preset_sets_the_model_keys_a_config_leaves_out(tmp_path):
    """``model.preset`` fills the model section's unset keys with the preset's; what a config sets wins."""
    cfg = load_config(None, ["model.preset=uniemo-standin"])
    assert cfg.model.backbone == "uniemo-standin" and (cfg.model.num_scene_queries, cfg.model.num_object_queries) == (
        8,
        8,
    )
    (tmp_path / "c.yaml").write_text("model:\n  preset: uniemo-vit-l-14\n  num_object_queries: 4\n")
    cfg = load_config(tmp_path / "c.yaml", ["model.backbone=micro-clip"])
    assert (cfg.model.backbone, cfg.model.num_scene_queries, cfg.model.num_object_queries) == ("micro-clip", 32, 4)
    paper = load_config(None, ["model.preset=uniemo-vit-b-32"]).model
    assert paper == dataclasses.replace(load_config(None).model, preset="uniemo-vit-b-32")  # the defaults
    with pytest.raises(ConfigError, match="model.preset: unknown model 'vit-x'"):
        load_config(None, ["model.preset=vit-x"])
