"""α and its priors (models/alpha.py): by hand and on a shared space."""

import pytest
import torch
import torch.nn.functional as F

from uniemo.models.alpha import attribute_distribution, cooccurrence_prior, correlation_coefficient


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
