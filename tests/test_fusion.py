import math

import pytest
import torch
import torch.nn.functional as F

from uniemo.losses import supervised_contrastive
from uniemo.models.alpha import attribute_distribution, cooccurrence_prior, correlation_coefficient
from uniemo.models.emotion_space import fuse_conditions
from uniemo.models.mappers import ConditionMappers
from uniemo.models.placeholder import PlaceholderInjector


def test_cooccurrence_prior_by_hand():
    # 3 attributes, 2 emotions; image attributes and labels:
    prior = cooccurrence_prior([[0], [0, 1], [1], [-1]], [0, 0, 1, 1], vocab_size=3, num_classes=2)
    expected = torch.tensor([[3 / 4, 1 / 4], [2 / 4, 2 / 4], [1 / 2, 1 / 2]])  # (count + 1) / (count(a) + K)
    torch.testing.assert_close(prior, expected)


def test_correlation_coefficient_soft_and_hard_by_hand():
    prior = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])  # (V=3, K=2)
    pi = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], requires_grad=True)
    emotions = torch.tensor([0, 1])
    soft = correlation_coefficient(pi, prior, emotions, "soft")
    torch.testing.assert_close(
        soft, torch.tensor([0.6 * 0.7 + 0.3 * 0.2 + 0.1 * 0.5, 0.1 * 0.3 + 0.1 * 0.8 + 0.8 * 0.5])
    )
    hard = correlation_coefficient(pi, prior, emotions, "hard")
    torch.testing.assert_close(hard, torch.tensor([0.7, 0.5]))
    assert not soft.requires_grad and not hard.requires_grad  # α weights; it does not train
    with pytest.raises(ValueError, match="soft' or 'hard"):
        correlation_coefficient(pi, prior, emotions, "medium")


def test_attribute_distribution_is_a_distribution():
    emb = F.normalize(torch.randn(4, 8), dim=-1)
    vocab = F.normalize(torch.randn(5, 8), dim=-1)
    pi = attribute_distribution(emb, vocab)
    assert pi.shape == (4, 5)
    torch.testing.assert_close(pi.sum(-1), torch.ones(4))


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


def test_emotion_fusion_weights():
    c = torch.randn(2, 6)
    torch.testing.assert_close(fuse_conditions(c, [1, 0]), c[0])
    torch.testing.assert_close(fuse_conditions(c, [2, 2]), c.mean(0))
    for bad in ([1, -1], [0, 0], [1]):
        with pytest.raises(ValueError, match="non-negative weights"):
            fuse_conditions(c, bad)


def test_supervised_contrastive_by_hand():
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.1]]), dim=-1)
    labels = torch.tensor([0, 0, 1, 2])  # only samples 0 and 1 have a positive
    tau = 0.5
    got = supervised_contrastive(z, labels, tau)

    def term(i, p):
        sims = {a: float(z[i] @ z[a]) / tau for a in range(4) if a != i}
        return -(sims[p] - math.log(sum(math.exp(v) for v in sims.values())))

    assert math.isclose(float(got), (term(0, 1) + term(1, 0)) / 2, rel_tol=1e-5)
    assert supervised_contrastive(z, torch.tensor([0, 1, 2, 3])) is None
    # three of one emotion: each anchor averages over its two positives
    got = supervised_contrastive(z, torch.tensor([0, 0, 0, 1]), tau)
    by_hand = sum(term(i, p) for i in range(3) for p in range(3) if p != i) / 6
    assert math.isclose(float(got), by_hand, rel_tol=1e-5)


@pytest.fixture
def text_encoder():
    from transformers import CLIPTextModel

    from uniemo.models.factory import architecture_config, clip_tokenizer

    torch.manual_seed(0)
    model = CLIPTextModel(architecture_config("micro-clip").text_config).eval().requires_grad_(False)
    return model, clip_tokenizer()


def test_injection_equals_the_plain_encoder_except_where_c_enters(text_encoder):
    model, tokenizer = text_encoder
    injector = PlaceholderInjector(model, tokenizer)
    assert injector.token_id == 49408 and model.get_input_embeddings().num_embeddings == 49409
    prompts = ["a photo of a bench, <emotion>", "<emotion>", "a cup <emotion> on a table"]
    ids = injector.tokenize(prompts)
    plain = model(input_ids=ids).last_hidden_state
    own_row = model.get_input_embeddings().weight[injector.token_id].expand(3, -1)
    with torch.no_grad():
        same = injector.encode(prompts, own_row.clone()).last_hidden_state
    torch.testing.assert_close(same, plain, rtol=0, atol=0)  # the token's own embedding: the plain encoder

    condition = torch.randn(3, own_row.shape[-1], requires_grad=True)
    out = injector.encode(prompts, condition).last_hidden_state  # (B, L, d_c)
    position = (ids == injector.token_id).int().argmax(dim=1)
    for b in range(3):
        p = int(position[b])
        torch.testing.assert_close(out[b, :p], plain[b, :p], rtol=0, atol=0)  # causal: before c, unchanged
        assert not torch.allclose(out[b, p], plain[b, p])
    out.sum().backward()
    assert condition.grad is not None and bool((condition.grad.abs().sum(-1) > 0).all())
    assert all(p.grad is None for p in model.parameters())  # the frozen encoder gets nothing
    # the hook is gone after the block
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, plain)


def test_injection_refuses_prompts_without_exactly_one_placeholder(text_encoder):
    injector = PlaceholderInjector(*text_encoder)
    with pytest.raises(ValueError, match="exactly once"):
        injector.tokenize(["a photo of a bench"])
    with pytest.raises(ValueError, match="exactly once"):
        injector.tokenize(["<emotion> and <emotion>"])


def test_prior_head_learns_and_reads_names_in_the_shared_space():
    from uniemo.models.alpha import classifier_prior, train_prior_head

    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 16), dim=-1)  # one direction per emotion in a shared space
    labels = torch.arange(4).repeat(100)
    features = centres[labels] + 0.1 * torch.randn(400, 16)
    head = train_prior_head(features, labels, num_classes=4, epochs=30, lr=1e-2, hidden=32)
    accuracy = (head(F.normalize(features, dim=-1)).argmax(-1) == labels).float().mean()
    assert accuracy > 0.9 and head[0].weight.shape == (32, 16)  # the hidden width asked for
    # "Names" whose text embeddings lie near an emotion's images read as that emotion; rows are distributions.
    prior = classifier_prior(head, centres[[2, 0]])
    torch.testing.assert_close(prior.sum(-1), torch.ones(2))
    assert prior.argmax(-1).tolist() == [2, 0] and bool((prior.max(-1).values > 0.5).all())
    again = train_prior_head(features, labels, num_classes=4, epochs=30, lr=1e-2, hidden=32)  # seeded: reproducible
    torch.testing.assert_close(classifier_prior(again, centres), classifier_prior(head, centres))


def test_emotion_space_statistics_and_sampling():
    from uniemo.models.emotion_space import emotion_space, sample_emotion_space

    cls = torch.tensor([[0.0, 2.0], [2.0, 2.0], [10.0, -1.0], [12.0, -3.0], [11.0, -2.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    space = emotion_space({"cls": cls}, labels, num_classes=2)
    torch.testing.assert_close(space["cls_mean"], torch.tensor([[1.0, 2.0], [11.0, -2.0]]))
    torch.testing.assert_close(space["cls_std"], torch.tensor([[math.sqrt(2), 0.0], [1.0, 1.0]]))
    draws = sample_emotion_space(space, torch.tensor([1] * 2000), torch.Generator().manual_seed(0))["cls"]
    torch.testing.assert_close(draws.mean(0), torch.tensor([11.0, -2.0]), atol=0.1, rtol=0)
    torch.testing.assert_close(draws.std(0), torch.tensor([1.0, 1.0]), atol=0.1, rtol=0)
    same = sample_emotion_space(space, torch.tensor([1] * 2000), torch.Generator().manual_seed(0))["cls"]
    assert torch.equal(draws, same)
    one = emotion_space({"cls": cls[:3]}, labels[:3], num_classes=2)  # one image of emotion 1: its std is 0
    torch.testing.assert_close(one["cls_std"][1], torch.zeros(2))
    with pytest.raises(ValueError, match="no training image of emotion index \\[2\\]"):
        emotion_space({"cls": cls}, labels, num_classes=3)


def test_emotion_space_bank_holds_real_feature_triples_of_each_emotion():
    from uniemo.models.emotion_space import emotion_space, sample_emotion_space

    cls = torch.arange(20.0).view(10, 2)  # image i: (2i, 2i+1)
    feats = {"cls": cls, "scene": cls + 100, "object": cls + 200}
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 1, 1])
    space = emotion_space(feats, labels, num_classes=2, bank=8, seed=3)
    assert space["cls_bank"].shape == (2, 8, 2)
    for k in range(2):
        own = {tuple(row) for row in cls[labels == k].tolist()}
        rows = [tuple(row) for row in space["cls_bank"][k].tolist()]
        assert set(rows) <= own and len(set(rows)) == min(8, len(own))  # all distinct while the emotion has enough
    draws = sample_emotion_space(space, torch.tensor([0, 1] * 50), torch.Generator().manual_seed(0))
    # one image's triple: the scene and object rows are that image's own (cls + 100, cls + 200)
    torch.testing.assert_close(draws["scene"], draws["cls"] + 100)
    torch.testing.assert_close(draws["object"], draws["cls"] + 200)
    for label, row in zip([0, 1] * 50, draws["cls"].tolist()):
        assert tuple(row) in {tuple(r) for r in cls[labels == label].tolist()}
    without = emotion_space(feats, labels, num_classes=2)
    assert "cls_bank" not in without and torch.equal(without["cls_mean"], space["cls_mean"])
    # the bank is the seed's: the same seed the same bank (a run's generation is reproducible), another seed another
    assert torch.equal(emotion_space(feats, labels, 2, bank=8, seed=3)["cls_bank"], space["cls_bank"])
    assert not torch.equal(emotion_space(feats, labels, 2, bank=8, seed=4)["cls_bank"], space["cls_bank"])
    # every entry of the bank is drawn, the first included (a bank of 4 distinct images of emotion 0)
    four = emotion_space(feats, labels, 2, bank=4, seed=3)
    drawn = sample_emotion_space(four, torch.zeros(60, dtype=torch.long), torch.Generator().manual_seed(0))["cls"]
    bank_rows = set(map(tuple, four["cls_bank"][0].tolist()))
    assert len(bank_rows) == 4 and set(map(tuple, drawn.tolist())) == bank_rows


def test_condition_norm_puts_each_encoders_part_at_its_token_norm(trained_run):
    from uniemo.models.configs import UniEmoConfig
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
