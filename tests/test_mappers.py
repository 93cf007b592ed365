"""The condition mappers (models/mappers.py): c = M_E(cls) + α_S·M_S(s) + α_O·M_O(o), at the token norm."""

import torch
import torch.nn.functional as F

from uniemo.models.mappers import ConditionMappers


def test_mappers_follow_the_formula_for_every_encoder_at_once():
    torch.manual_seed(0)
    fusion = ConditionMappers(16, condition_dims=(8, 12), hidden=32)
    cls, s, o = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 16)
    a_s, a_o = torch.tensor([0.2, 0.5, 0.0]), torch.tensor([0.9, 0.1, 0.0])
    c = fusion(cls, s, o, a_s, a_o)
    expected = fusion.map_cls(cls) + a_s[:, None] * fusion.map_scene(s) + a_o[:, None] * fusion.map_object(o)
    torch.testing.assert_close(c, expected)
    torch.testing.assert_close(c[2], fusion.map_cls(cls)[2])  # α = 0: the class token alone
    assert c.shape == (3, 8 + 12)
    assert isinstance(fusion.map_cls[1], torch.nn.ReLU) and fusion.map_cls[0].out_features == 32


def test_condition_norm_puts_each_encoders_part_at_its_token_norm(trained_run):
    from uniemo.models.architecture import UniEmoConfig
    from uniemo.models.uniemo import UniEmoModel
    from uniemo.pipelines.classifier import EmotionClassifier

    stage1 = EmotionClassifier.from_pretrained(trained_run).model
    plain = UniEmoModel(stage1, UniEmoConfig((8, 12), mapper_hidden=16))
    normed = UniEmoModel(stage1, UniEmoConfig((8, 12), mapper_hidden=16, condition_norms=(0.5, 2.0)))
    normed.load_state_dict(plain.state_dict())
    feats = {name: torch.randn(3, stage1.vision.config.hidden_size) for name in ("cls", "scene", "object")}
    emotions = torch.tensor([0, 1, 2])
    raw, c = plain.condition(feats, emotions), normed.condition(feats, emotions)
    torch.testing.assert_close(c[:, :8].norm(dim=-1), torch.full((3,), 0.5))
    torch.testing.assert_close(c[:, 8:].norm(dim=-1), torch.full((3,), 2.0))
    # the direction is the mapped condition's own, per encoder
    torch.testing.assert_close(F.normalize(c[:, 8:], dim=-1), F.normalize(raw[:, 8:], dim=-1))
    again = UniEmoModel.from_architecture(normed.architecture())
    assert again.config.condition_norms == (0.5, 2.0)
    assert "condition_norms" not in plain.architecture()  # earlier checkpoints keep their architecture


def test_a_class_token_condition_reads_the_class_token_alone(trained_run):
    from uniemo.models.architecture import UniEmoConfig
    from uniemo.models.uniemo import UniEmoModel
    from uniemo.pipelines.classifier import EmotionClassifier

    stage1 = EmotionClassifier.from_pretrained(trained_run).model
    full = UniEmoModel(stage1, UniEmoConfig((8,), mapper_hidden=16))
    cls_only = UniEmoModel(stage1, UniEmoConfig((8,), mapper_hidden=16, condition_features="class_token"))
    cls_only.load_state_dict(full.state_dict())
    d = stage1.vision.config.hidden_size
    feats = {name: torch.randn(3, d) for name in ("cls", "scene", "object")}
    other = {**feats, "scene": torch.randn(3, d), "object": torch.randn(3, d)}
    emotions = torch.tensor([0, 1, 2])
    # Table V's "Cls" row: c = M_E(cls), whatever the queries hold; the method's c changes with them
    torch.testing.assert_close(cls_only.condition(feats, emotions), full.mappers.map_cls(feats["cls"]))
    torch.testing.assert_close(cls_only.condition(other, emotions), cls_only.condition(feats, emotions))
    assert not torch.allclose(full.condition(other, emotions), full.condition(feats, emotions))
    again = UniEmoModel.from_architecture(cls_only.architecture())
    assert again.config.condition_features == "class_token" and not again.uses_queries
    assert "condition_features" not in full.architecture()  # earlier checkpoints keep their architecture
