"""The emotion space (models/emotion_space.py): fusion weights, statistics, sampling, the feature bank."""

import math

import pytest
import torch

from uniemo.models.emotion_space import fuse_conditions


def test_emotion_fusion_weights():
    c = torch.randn(2, 6)
    torch.testing.assert_close(fuse_conditions(c, [1, 0]), c[0])
    torch.testing.assert_close(fuse_conditions(c, [2, 2]), c.mean(0))
    for bad in ([1, -1], [0, 0], [1]):
        with pytest.raises(ValueError, match="non-negative weights"):
            fuse_conditions(c, bad)


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


def test_agreeing_keeps_the_images_read_as_their_own_emotion():
    from uniemo.models.emotion_space import agreeing

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    read_as = torch.tensor([0, 1, 1, 0, 0, 1])  # emotion 2: neither of its images agrees, so both stay
    assert agreeing(labels, read_as, num_classes=3).tolist() == [True, False, True, False, True, True]
