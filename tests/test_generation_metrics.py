"""Generation metrics (METHOD §7): FID against torchmetrics, LPIPS against lpips, and hand-computed small cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from uniemo.errors import CheckpointError, MetricNetworkError, UniEmoError
from uniemo.metrics.generation import (
    emo_a,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    pair_distances_mse,
    sample_pairs,
    semantic_clarity,
    semantic_clarity_scores,
    semantic_diversity,
    summary,
    target_probabilities,
    to_signed_pixels,
)
from uniemo.metrics.lpips import LPIPS, AlexNetFeatures, load_lpips, lpips_distances
from uniemo.metrics.networks import load_inception


def _features(n: int = 300, d: int = 64, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Correlated Gaussian features (a random linear map of white noise), float64."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + shift


# ------------------------------------------------------------------------------------------------------------ FID
class _StoredFeatures(torch.nn.Module):
    """A torchmetrics feature network that returns its input: the "images" given to the metric are features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_fid_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _features(400, seed=1), _features(300, shift=0.3, seed=2) * 1.2
    # With a custom feature module torchmetrics passes update()'s input to it unchanged (no uint8 conversion).
    metric = FrechetInceptionDistance(feature=_StoredFeatures(64))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())

    ours = fid_from_features(real, fake)
    assert expected > 1.0  # the sets differ, so the comparison is not between two near-zero numbers
    assert ours == pytest.approx(expected, rel=1e-4)


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric():
    real, fake = _features(200, seed=3), _features(250, shift=0.5, seed=4)
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(real, fake) == pytest.approx(fid_from_features(fake, real), rel=1e-9)
    # Fewer samples than dimensions: a singular covariance still gives a finite, ~0 self-distance.
    few = _features(10, d=64, seed=5)
    assert fid_from_features(few, few) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    # ||(0,0) − (1,2)||² = 5; per axis s1 + s2 − 2√(s1 s2): 1 + 4 − 2·2 = 1 and 4 + 9 − 2·6 = 1; total 7.
    value = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0]))
    assert value == pytest.approx(7.0, abs=1e-12)


def test_feature_statistics_are_float64_unbiased_and_need_two_samples():
    x = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
    mean, cov = feature_statistics(x)
    assert mean.dtype == cov.dtype == np.float64
    np.testing.assert_allclose(mean, [2.0, 4.0])
    # Deviations (−1, −2) and (1, 2) over N − 1 = 1: [[2, 4], [4, 8]].
    np.testing.assert_allclose(cov, [[2.0, 4.0], [4.0, 8.0]])
    with pytest.raises(UniEmoError, match="at least 2 samples"):
        feature_statistics(x[:1])


# ---------------------------------------------------------------------------------------------------------- pairs
def test_sample_pairs_are_distinct_ordered_and_deterministic():
    pairs = sample_pairs(1000, 500, seed=7)
    assert pairs.shape == (500, 2) and pairs.dtype == np.int64
    assert np.all(pairs[:, 0] < pairs[:, 1]) and pairs.min() >= 0 and pairs.max() < 1000
    assert len({tuple(p) for p in pairs.tolist()}) == 500
    np.testing.assert_array_equal(pairs, sample_pairs(1000, 500, seed=7))
    assert not np.array_equal(pairs, sample_pairs(1000, 500, seed=8))


def test_sample_pairs_returns_all_pairs_when_few_and_none_for_one_image():
    expected = [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    np.testing.assert_array_equal(sample_pairs(4, 6), expected)
    np.testing.assert_array_equal(sample_pairs(4, 1000, seed=3), expected)
    assert sample_pairs(1, 10).shape == (0, 2)
    # Drawing all but one of the 6 pairs leaves out exactly one.
    assert len({tuple(p) for p in sample_pairs(4, 5).tolist()}) == 5


# -------------------------------------------------------------------------------------------- Emo-A, Sem-C, Sem-D
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
TARGETS = np.array([0, 1, 1, 2])


def test_emo_a_and_target_probabilities_by_hand():
    # argmax per row: 0, 2, 1, 0 against targets 0, 1, 1, 2 → rows 0 and 2 are right: 2 / 4.
    assert emo_a(PROBS, TARGETS) == pytest.approx(0.5)
    assert emo_a(torch.tensor(PROBS), torch.tensor(TARGETS)) == pytest.approx(0.5)
    np.testing.assert_allclose(target_probabilities(PROBS, TARGETS), [0.7, 0.3, 0.5, 0.1])
    with pytest.raises(UniEmoError, match="targets"):
        emo_a(PROBS, TARGETS[:3])
    with pytest.raises(UniEmoError, match="class indices"):
        emo_a(PROBS, np.array([0, 1, 1, 3]))


def test_semantic_clarity_by_hand():
    scene = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    objects = np.array([[0.2, 0.5, 0.3], [0.8, 0.1, 0.1], [0.4, 0.35, 0.25]])
    # max(0.9, 0.5) = 0.9, max(0.7, 0.8) = 0.8, max(0.5, 0.4) = 0.5; mean 2.2 / 3.
    np.testing.assert_allclose(semantic_clarity_scores(scene, objects), [0.9, 0.8, 0.5])
    assert semantic_clarity(scene, objects) == pytest.approx(2.2 / 3)
    with pytest.raises(UniEmoError, match="rows"):
        semantic_clarity(scene[:2], objects)


def test_semantic_diversity_by_hand_and_not_normalised():
    embeddings = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]])
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    # (0,1): 4 / 4 = 1; (0,2): (9 + 1) / 4 = 2.5; (1,2): (1 + 1) / 4 = 0.5; mean 4 / 3.
    np.testing.assert_allclose(pair_distances_mse(embeddings, pairs), [1.0, 2.5, 0.5])
    assert semantic_diversity(embeddings, pairs) == pytest.approx(4 / 3)
    assert semantic_diversity(embeddings, pairs[:2]) == pytest.approx(1.75)
    # Raw embeddings: doubling them quadruples Sem-D (a normalising implementation would leave it unchanged).
    assert semantic_diversity(2 * embeddings, pairs) == pytest.approx(16 / 3)
    with pytest.raises(UniEmoError, match="no pairs"):
        semantic_diversity(embeddings, sample_pairs(1, 10))


def test_summary_gives_mean_and_spread():
    stats = summary([1.0, 2.0, 3.0, 4.0])
    assert stats["n"] == 4 and stats["min"] == 1.0 and stats["max"] == 4.0
    assert stats["mean"] == pytest.approx(2.5)
    assert stats["std"] == pytest.approx(1.25**0.5)  # population std: mean squared deviation (2.25+0.25)·2/4
    assert summary([])["n"] == 0


def test_to_signed_pixels_converts_resizes_and_scales():
    images = [Image.new("RGB", (40, 20), (255, 255, 255)), Image.new("L", (8, 8), 0), Image.new("RGBA", (5, 9))]
    pixels = to_signed_pixels(images, 16)
    assert pixels.shape == (3, 3, 16, 16) and pixels.dtype == torch.float32
    assert torch.all(pixels[0] == 1.0) and torch.all(pixels[1] == -1.0)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0


# ---------------------------------------------------------------------------------------------------------- LPIPS
def _random_lpips(seed: int = 0) -> LPIPS:
    """LPIPS with random AlexNet weights and non-negative lin weights (as the learned ones are)."""
    torch.manual_seed(seed)
    network = LPIPS().eval()
    with torch.no_grad():
        for lin in network.lins:
            lin.model[1].weight.uniform_(0.0, 1.0)
    return network


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_lpips_is_zero_for_identical_images_and_grows_with_the_difference():
    network = _random_lpips()
    x = _images(4)
    with torch.no_grad():
        same = network(x, x.clone())
        near = network(x, (x + 0.05 * _images(4, seed=1)).clamp(-1, 1))
        far = network(x, _images(4, seed=2))
    assert same.shape == (4,) and torch.equal(same, torch.zeros(4))
    assert torch.all(near > 0) and torch.all(far > near)


def test_lpips_distances_batches_like_one_pass_and_checks_the_range():
    network = _random_lpips()
    a, b = _images(7, size=32, seed=3), _images(7, size=32, seed=4)
    distances = lpips_distances(network, a, b, batch_size=3)
    with torch.no_grad():
        np.testing.assert_allclose(distances, network(a, b).double().numpy(), rtol=1e-5)
    assert distances.dtype == np.float64 and distances.shape == (7,)
    with pytest.raises(UniEmoError, match=r"\[-1, 1\]"):
        lpips_distances(network, (a + 1) * 127.5, (b + 1) * 127.5)


def test_load_lpips_names_the_missing_file(tmp_path):
    missing_alexnet = tmp_path / "hub" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(MetricNetworkError, match="--skip lpips") as error:
        load_lpips(alexnet_weights=missing_alexnet, linear_weights=tmp_path / "alex.pth")
    assert str(missing_alexnet) in str(error.value)

    alexnet_file = tmp_path / "alexnet.pth"
    torch.save(AlexNetFeatures().state_dict(), alexnet_file)
    missing_linear = tmp_path / "lpips" / "weights" / "v0.1" / "alex.pth"
    with pytest.raises(MetricNetworkError, match="--skip lpips") as error:
        load_lpips(alexnet_weights=alexnet_file, linear_weights=missing_linear)
    assert str(missing_linear) in str(error.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_lpips_loads_torchvision_and_lpips_key_names(tmp_path, suffix):
    torch.manual_seed(1)
    # torchvision's AlexNet file: features.* (conv 0, 3, 6, 8, 10) and a classifier that LPIPS ignores.
    alexnet_state = {f"features.{k}": v for k, v in AlexNetFeatures().features.state_dict().items()}
    alexnet_state["classifier.1.weight"] = torch.randn(8, 4)
    # lpips' alex.pth: Sequential(Dropout, Conv2d) per layer, so the weights sit at model.1.
    linear_state = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    alexnet_file, linear_file = tmp_path / f"alexnet{suffix}", tmp_path / f"alex{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(alexnet_state, str(alexnet_file))
        save_file(linear_state, str(linear_file))
    else:
        torch.save(alexnet_state, alexnet_file)
        torch.save(linear_state, linear_file)

    network = load_lpips(alexnet_weights=alexnet_file, linear_weights=linear_file)
    for index in (0, 3, 6, 8, 10):
        assert torch.equal(network.net.features[index].weight, alexnet_state[f"features.{index}.weight"])
        assert torch.equal(network.net.features[index].bias, alexnet_state[f"features.{index}.bias"])
    for index, lin in enumerate(network.lins):
        assert torch.equal(lin.model[1].weight, linear_state[f"lin{index}.model.1.weight"])
    assert not network.training and not any(p.requires_grad for p in network.parameters())

    linear_state["lin2.model.1.weight"] = torch.rand(1, 10, 1, 1)
    torch.save(linear_state, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="wrong.pth"):
        load_lpips(alexnet_weights=alexnet_file, linear_weights=tmp_path / "wrong.pth")


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore:The parameter 'pretrained' is deprecated:UserWarning")
@pytest.mark.filterwarnings("ignore:Arguments other than a weight enum:UserWarning")
def test_lpips_matches_the_lpips_package(tmp_path):
    lpips = pytest.importorskip("lpips")
    from uniemo.metrics.lpips import default_linear_path

    torch.manual_seed(0)
    # pnet_rand: a random AlexNet (no download); pretrained: lpips' own learned lin weights from its package.
    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    state = reference.state_dict()
    # lpips splits torchvision's features into net.slice1..5 keeping the indices: net.sliceK.I.* → features.I.*
    alexnet_state = {"features." + k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("net.slice")}
    torch.save(alexnet_state, tmp_path / "alexnet.pth")
    # The linear weights come from lpips' installed weight file, found without importing lpips.
    assert default_linear_path().is_file()
    ours = load_lpips(alexnet_weights=tmp_path / "alexnet.pth")
    for index, lin in enumerate(ours.lins):
        assert torch.equal(lin.model[1].weight, state[f"lin{index}.model.1.weight"])

    x, y = _images(6, size=64, seed=10), _images(6, size=64, seed=11)
    y[0] = x[0]
    with torch.no_grad():
        expected = reference(x, y).flatten()
        got = ours(x, y)
    assert got[0] == 0.0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- FID's Inception-V3
def test_load_inception_names_the_missing_file(tmp_path):
    # Without torch-fidelity (the main venv) or without the file (.venv-ref) the error names the file's place.
    missing = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(MetricNetworkError, match="--fid-network clip") as error:
        load_inception(missing)
    assert str(missing) in str(error.value) and "\n" not in str(error.value)


def _random_inception_state(fidelity, seed: int) -> dict[str, torch.Tensor]:
    """A state dict of torch-fidelity's Inception-V3 with random weights, built without downloading anything.

    Without a path its constructor fetches the weights with ``load_state_dict_from_url`` and ``load_state_dict``s
    them; both are bypassed once. Convolutions get He-normal weights and batch norms random affine parameters and
    statistics, so the 2048 features neither vanish nor explode through the network's depth.
    """
    torch.manual_seed(seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        network = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return network.state_dict()


def _uint8_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) uint8: a random colour per image plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(0, 256, (n, 3, 1, 1), generator=g)
    return (colour + torch.randint(-40, 41, (n, 3, size, size), generator=g)).clamp(0, 255).to(torch.uint8)


@pytest.mark.reference
def test_inception_matches_torch_fidelity(tmp_path):
    pytest.importorskip("torch_fidelity")
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity
    from torchmetrics.image.fid import FrechetInceptionDistance

    state = _random_inception_state(fidelity, seed=1)
    torch.save(state, tmp_path / "inception.pth")
    # torch-fidelity's own loading of the same file (it unpickles with weights_only=False: a file written here).
    reference = fidelity.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp_path / "inception.pth")
    )
    ours = load_inception(tmp_path / "inception.pth")
    for key, value in ours.net.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any(p.requires_grad for p in ours.parameters())
    assert not any(m.training for m in ours.train().modules())  # batch norms never use batch statistics

    real, fake = _uint8_images(6, seed=2), _uint8_images(6, seed=3) // 2  # fake: darker
    images = torch.cat([real, fake])
    with torch.no_grad():
        expected = reference(images)[0]
    got = ours(images)
    assert got.shape == (12, 2048) and got.dtype == torch.float32
    assert expected.std(dim=0).mean() > 0.1  # the images give different, non-vanishing features
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    # Other weights in another file give other features: the file given is the one read.
    torch.save(_random_inception_state(fidelity, seed=2), tmp_path / "other.pth")
    other = load_inception(tmp_path / "other.pth")(images[:3])
    assert (other - expected[:3]).abs().max() > 1.0
    # The same weights stored as safetensors give the same features.
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "inception.safetensors"))
    torch.testing.assert_close(load_inception(tmp_path / "inception.safetensors")(images), expected, atol=1e-5, rtol=0)

    # FID of these features as torchmetrics computes it.
    metric = FrechetInceptionDistance(feature=_StoredFeatures(2048))
    metric.update(got[:6], real=True)
    metric.update(got[6:], real=False)
    assert fid_from_features(got[:6], got[6:]) == pytest.approx(float(metric.compute()), rel=1e-4)


@pytest.mark.reference
def test_load_inception_never_unpickles_code(tmp_path):
    pytest.importorskip("torch_fidelity")
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"Conv2d_1a_3x3.conv.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_inception(tmp_path / "evil.pth")
    assert not marker.exists()

    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="partial.pth.*Inception-V3"):
        load_inception(tmp_path / "partial.pth")


def test_bad_inputs_name_the_argument_and_empty_inputs_keep_their_shape():
    """What a caller sees: each error names the argument at fault; empty sets give empty results of the right shape
    and dtype, not a crash three calls later."""
    eye, zero = np.eye(2), np.zeros(2)
    for call, words in [
        (lambda: feature_statistics(np.zeros(3)), "features must have 2 dimensions"),
        (lambda: frechet_distance(eye, eye, zero, eye), "mu1 must have 1 dimensions"),
        (lambda: frechet_distance(zero, zero, zero, eye), "sigma1 must have 2 dimensions"),
        (lambda: frechet_distance(zero, eye, zero, zero), "sigma2 must have 2 dimensions"),
        (lambda: frechet_distance(zero, np.eye(3), zero, eye), "Fréchet distance needs means"),
        (lambda: emo_a(np.zeros(3), [0, 1, 2]), "probs must have 2 dimensions"),
        (lambda: emo_a(np.zeros((3, 2)), [0.5, 1.0, 0.0]), "targets must be a 1-D array of integer"),
        (lambda: emo_a(np.zeros((1, 2)), [[0]]), "targets must be a 1-D array of integer"),
        (lambda: emo_a(np.zeros((0, 2)), np.zeros(0, dtype=int)), "no images to score: probs and targets are empty"),
        (lambda: pair_distances_mse(np.zeros(3), [[0, 1]]), "embeddings must have 2 dimensions"),
        (lambda: pair_distances_mse(np.zeros((3, 2)), [[0, 3]]), r"pairs index images 0\.\.2 only"),
        (lambda: pair_distances_mse(np.zeros((3, 2)), []), "no pairs to average over"),
        (lambda: summary(np.zeros((2, 2))), "values must have 1 dimensions"),
    ]:
        with pytest.raises(UniEmoError, match=f"^{words}"):
            call()
    empty = summary([])
    assert empty["n"] == 0 and set(empty) == {"mean", "std", "min", "max", "n"}
    assert all(np.isnan(empty[k]) for k in ("mean", "std", "min", "max"))
    assert sample_pairs(2, 5).tolist() == [[0, 1]] and sample_pairs(2, 5).dtype == np.int64
    assert sample_pairs(1, 5).shape == (0, 2) and sample_pairs(1, 5).dtype == np.int64
    assert to_signed_pixels([], 8).shape == (0, 3, 8, 8)
    assert to_signed_pixels([Image.new("RGB", (4, 4), (255, 0, 0))], 1).tolist() == [[[[1.0]], [[-1.0]], [[-1.0]]]]
