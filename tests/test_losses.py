import math

import torch
import torch.nn.functional as F

from uniemo.losses import attribute_infonce, supervised_contrastive


def test_infonce_matches_hand_computation_with_duplicates_and_missing():
    vocab = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    emb = F.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [0.9, 0.1], [0.5, 0.5]]), dim=-1)
    ids = torch.tensor([0, 1, 0, -1])  # two images share name 0; the last has no attribute
    tau = 0.5  # a large τ keeps the loss far from 0, where float32 rounding would dominate
    got = attribute_infonce(emb, ids, vocab, tau)
    # Candidates are the distinct names {0, 1}, each once; sample 3 is left out.
    losses = []
    for i, target in ((0, 0), (1, 1), (2, 0)):
        sims = [float(emb[i] @ vocab[c]) / tau for c in (0, 1)]
        losses.append(-(sims[target] - math.log(sum(math.exp(s) for s in sims))))
    assert math.isclose(float(got), sum(losses) / 3, rel_tol=1e-5)
    assert float(got) > 0.1


def test_infonce_single_name_and_no_attribute():
    vocab = F.normalize(torch.randn(4, 8), dim=-1)
    emb = F.normalize(torch.randn(3, 8), dim=-1)
    assert float(attribute_infonce(emb, torch.tensor([2, 2, 2]), vocab)) == 0.0  # one candidate: nothing to contrast
    assert attribute_infonce(emb, torch.tensor([-1, -1, -1]), vocab) is None


def test_infonce_gradient_reaches_embeddings_only_for_present_samples():
    vocab = F.normalize(torch.randn(5, 8), dim=-1)
    emb = torch.randn(4, 8, requires_grad=True)
    attribute_infonce(F.normalize(emb, dim=-1), torch.tensor([0, 3, -1, 1]), vocab).backward()
    assert emb.grad[2].abs().sum() == 0
    assert all(emb.grad[i].abs().sum() > 0 for i in (0, 1, 3))


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
