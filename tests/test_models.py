import pytest
import torch

from uniemo.models.architecture import ExpertQueryConfig
from uniemo.models.factory import architecture_config, clip_tokenizer, encode_texts, list_architectures, load_clip_text
from uniemo.models.understanding import ExpertQueryCLIP, default_stage_layers

torch.manual_seed(0)


def _vision(name="micro-clip"):
    from transformers import CLIPVisionModel

    torch.manual_seed(0)
    return CLIPVisionModel(architecture_config(name).vision_config)


def _model(mode="multi_stage", name="micro-clip", gradient_checkpointing=False, **kw):
    arch = ExpertQueryConfig(8, 16, query_mode=mode, num_scene_queries=4, num_object_queries=3, **kw)
    return ExpertQueryCLIP(_vision(name), arch, gradient_checkpointing)


@pytest.mark.parametrize("name", ["micro-clip", "tiny-clip"])
def test_mode_none_equals_plain_clip_vision_model(name):
    """A reference nobody here wrote: transformers' own CLIPVisionModel forward on the same weights."""
    model = _model("none", name).eval()
    size = model.image_size
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        reference = model.vision(pixel_values=x).pooler_output
        ours = model(x).cls
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_default_stage_split():
    assert default_stage_layers(12) == (4, 8)
    assert default_stage_layers(24) == (8, 16)
    assert default_stage_layers(3) == (1, 2)


def _record_lengths(model):
    lengths = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
        for layer in model.vision.encoder.layers
    ]
    return lengths, hooks


@pytest.mark.parametrize("mode", ["multi_stage", "single_step", "none"])
def test_queries_enter_at_the_right_layers(mode):
    arch = ExpertQueryConfig(8, 16, query_mode=mode, num_scene_queries=5, num_object_queries=3)
    model = ExpertQueryCLIP(_vision("tiny-clip"), arch)
    assert (model.scene_layer, model.object_layer) == (2, 4)
    lengths, _ = _record_lengths(model)
    model(torch.randn(2, 3, 64, 64))
    base = 1 + 64
    expected = {
        "multi_stage": [base + 5] * 2 + [base + 5 + 3] * 4,  # scene from layer 1, object after L1 = 2
        "single_step": [base + 5 + 3] * 6,
        "none": [base] * 6,
    }[mode]
    assert lengths == expected


def test_interactive_blocks_run_after_l1_and_l2_and_modulate():
    arch = ExpertQueryConfig(8, 16, num_scene_queries=5, num_object_queries=3, scene_layer=1, object_layer=3)
    model = ExpertQueryCLIP(_vision("tiny-clip"), arch).eval()
    outputs, ib_inputs, next_inputs = {}, {}, {}
    layers = model.vision.encoder.layers
    for i, layer in enumerate(layers, start=1):
        layer.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out))
        layer.register_forward_pre_hook(lambda m, a, i=i: next_inputs.__setitem__(i, a[0]))
    for which in ("scene", "object"):
        getattr(model, f"{which}_ib").register_forward_hook(
            lambda m, args, out, which=which: ib_inputs.__setitem__(which, (args, out[0]))
        )
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    p = 64
    for which, layer_index, start, count in (("scene", 1, 1 + p, 5), ("object", 3, 1 + p + 5, 3)):
        (queries, patches), refined = ib_inputs[which]
        after = outputs[layer_index]
        torch.testing.assert_close(queries, after[:, start : start + count])  # IB reads the queries after L
        torch.testing.assert_close(patches, after[:, 1 : 1 + p])  # and that layer's patch tokens
        beta = getattr(model, f"{which}_beta")
        modulated = queries + beta * refined  # eq. 3
        torch.testing.assert_close(next_inputs[layer_index + 1][:, start : start + count], modulated)
        torch.testing.assert_close(getattr(out, which), modulated.mean(1))
    # Patch and class tokens pass the IB untouched.
    torch.testing.assert_close(next_inputs[2][:, : 1 + p], outputs[1][:, : 1 + p])


def test_swapping_stage_layers_is_refused():
    with pytest.raises(ValueError, match="scene_layer < object_layer"):
        _model(scene_layer=2, object_layer=1)


def test_output_shapes():
    model = _model()
    out = model(torch.randn(2, 3, 32, 32), need_attention=True)
    p = (32 // 8) ** 2
    assert out.logits.shape == (2, 8)
    assert out.cls.shape == out.scene.shape == out.object.shape == (2, 32)
    assert out.scene_embeds.shape == out.object_embeds.shape == (2, 16)
    torch.testing.assert_close(out.scene_embeds.norm(dim=-1), torch.ones(2))
    assert out.scene_attention.shape == (2, 4, p) and out.object_attention.shape == (2, 3, p)
    torch.testing.assert_close(out.scene_attention.sum(-1), torch.ones(2, 4))


@pytest.mark.parametrize("freeze", [False, True])
def test_every_trainable_parameter_gets_a_gradient_and_frozen_ones_none(freeze):
    from uniemo.losses import attribute_infonce

    model = _model(num_scene_names=3, num_object_names=3)
    model.scene_vocab_embeds.copy_(torch.nn.functional.normalize(torch.randn(3, 16), dim=-1))
    model.object_vocab_embeds.copy_(torch.nn.functional.normalize(torch.randn(3, 16), dim=-1))
    if freeze:
        model.vision.requires_grad_(False)
    out = model(torch.randn(4, 3, 32, 32))
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3]))
    loss = loss + attribute_infonce(out.scene_embeds, torch.tensor([0, 1, 2, 0]), model.scene_vocab_embeds)
    loss = loss + attribute_infonce(out.object_embeds, torch.tensor([1, 1, 0, 2]), model.object_vocab_embeds)
    loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert param.grad is None, f"frozen {name} got a gradient"
    assert freeze == all(not p.requires_grad for p in model.vision.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for gc in (False, True):
        model = _model(gradient_checkpointing=gc)
        model(x).logits.sum().backward()
        grads.append(model.scene_queries.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_architectures_and_tokenizer():
    assert {"micro-clip", "tiny-clip", "clip-vit-base-patch32-arch", "clip-vit-large-patch14-arch"} <= set(
        list_architectures()
    )
    tok = clip_tokenizer()
    assert len(tok) == 49408
    # OpenAI CLIP's ids for "a photo of a" (a reference fact, not computed here).
    assert tok("a photo of a").input_ids == [49406, 320, 1125, 539, 320, 49407]
    model, tok = load_clip_text("micro-clip")
    emb = encode_texts(model, tok, ["beach", "forest", "beach"])
    assert emb.shape == (3, 32)
    torch.testing.assert_close(emb[0], emb[2])
    assert not torch.allclose(emb[0], emb[1])


def test_unknown_backbone_is_a_clear_error(tmp_path):
    from uniemo.errors import CheckpointError
    from uniemo.models.factory import load_clip_vision

    with pytest.raises(CheckpointError, match="cannot load the CLIP vision tower"):
        load_clip_vision(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="built-in architectures"):
        load_clip_vision("openai/clip-vit-base-patch32")  # offline: not in the cache


# ------------------------------------------------------------------ factory: presets, configs, from/save_pretrained
def test_every_preset_builds_its_architecture():
    """Each preset names a backbone and fields ExpertQueryConfig accepts; the buildable ones give that model."""
    from uniemo.models.factory import create_model, list_models, model_preset

    assert {"uniemo-vit-b-32", "uniemo-vit-l-14", "uniemo-standin", "uniemo-tiny"} <= set(list_models())
    for name in list_models():
        preset = model_preset(name)
        ExpertQueryConfig.from_dict(preset["expert_queries"])
        assert preset["backbone"] and preset["description"]
    model = create_model("uniemo-tiny", num_classes=4)
    assert model.scene_queries.shape == (8, 128) and model.head.out_features == 4
    assert (model.config.scene_layer, model.config.object_layer) == (2, 4)  # round(6/3), round(12/3)
    assert model.config.attribute_dim == architecture_config("tiny-clip").projection_dim
    standin = create_model("uniemo-standin")
    random = create_model("uniemo-standin", pretrained=False)
    assert random.vision.config.hidden_size == standin.vision.config.hidden_size
    assert not torch.equal(
        random.vision.embeddings.patch_embedding.weight, standin.vision.embeddings.patch_embedding.weight
    )
    plain = create_model("uniemo-tiny", query_mode="none")
    assert not hasattr(plain, "scene_queries") and plain.config.query_mode == "none"


def test_create_model_refuses_what_it_cannot_build(tmp_path):
    from uniemo.errors import CheckpointError, ConfigError
    from uniemo.models.factory import create_model

    with pytest.raises(CheckpointError, match="uniemo-vit-b-32"):
        create_model("uniemo-vit-b-99")
    with pytest.raises(ConfigError, match="num_querys"):
        create_model("uniemo-tiny", num_querys=4)
    model = create_model("uniemo-tiny", num_classes=2)
    model.save_pretrained(tmp_path / "ckpt", ["calm", "tense"])
    with pytest.raises(ConfigError, match="checkpoint"):
        create_model(tmp_path / "ckpt", num_scene_queries=4)


def test_save_pretrained_and_from_pretrained_give_the_same_model(tmp_path):
    """A model saved and loaded back (by the class, by create_model, by EmotionClassifier) predicts the same."""
    from uniemo.models.factory import create_model
    from uniemo.pipelines.classifier import EmotionClassifier

    torch.manual_seed(0)
    model = create_model("uniemo-tiny", num_classes=3, num_scene_queries=5, ib_layers=1).eval()
    model.save_pretrained(tmp_path / "ckpt", ["a", "b", "c"], scene_vocab=["beach"])
    x = torch.randn(2, 3, 64, 64)
    expected = model(x).logits
    for loaded in (
        ExpertQueryCLIP.from_pretrained(tmp_path / "ckpt"),
        create_model(tmp_path / "ckpt"),
        EmotionClassifier.from_pretrained(tmp_path / "ckpt").model,
    ):
        assert loaded.config == model.config
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, expected)
    clf = EmotionClassifier.from_pretrained(tmp_path / "ckpt")
    assert clf.classes == ["a", "b", "c"] and clf.scene_vocab == ["beach"]
    with pytest.raises(ValueError, match="2 class names"):
        model.save_pretrained(tmp_path / "bad", ["a", "b"])


def test_the_run_config_decides_the_architecture():
    """Every architecture field of the run's model section reaches the model (nothing copied by hand is dropped)."""
    from uniemo.config import load_config
    from uniemo.train import understanding as stage1

    overrides = ["model.backbone=tiny-clip", "model.num_scene_queries=5", "model.num_object_queries=2"]
    overrides += ["model.ib_layers=1", "model.beta_init=0.3", "model.scene_layer=1", "model.object_layer=5"]
    model = stage1.build_model(load_config(None, overrides), 4, 16, (3, 7))
    assert model.config == ExpertQueryConfig(4, 16, "multi_stage", 5, 2, 1, 5, 1, 0.3, 3, 7)
    assert float(model.scene_beta.detach()) == pytest.approx(0.3) and len(model.scene_ib.layers) == 1


def test_unified_model_round_trip(tmp_path):
    from tests.test_mechanisms import micro_understanding
    from uniemo.models.architecture import UniEmoConfig
    from uniemo.models.uniemo import UniEmoModel

    torch.manual_seed(0)
    model = UniEmoModel(micro_understanding(), UniEmoConfig([32], mapper_hidden=16, space_bank=2, alpha="hard")).eval()
    model.save_pretrained(tmp_path / "joint", classes=[str(i) for i in range(8)])
    again = UniEmoModel.from_pretrained(tmp_path / "joint")
    assert again.config == model.config and again.config.condition_dims == (32,)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    arch = model.architecture()
    assert "condition_norms" not in arch and arch["space_bank"] == 2  # stored only when set, as before
    with pytest.raises(ValueError, match="unknown field"):
        UniEmoModel.from_architecture({**arch, "mapper_width": 3})


def test_a_negative_architecture_size_is_one_config_error():
    from uniemo.errors import ConfigError
    from uniemo.models.factory import create_model

    with pytest.raises(ConfigError, match=r"create_model\('backbone=micro-clip'\): num_scene_queries"):
        create_model(backbone="micro-clip", num_scene_queries=-1)
