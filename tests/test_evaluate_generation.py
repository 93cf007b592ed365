"""`uniemo train emo-classifier`, `uniemo generate --emotion all` and `uniemo evaluate generation`: the networks,
the suite's numbers against hand computations, and one-line errors for what is missing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from uniemo.cli.main import main
from uniemo.constants import CLIP_MEAN, CLIP_STD
from uniemo.metrics import generation as gm
from uniemo.metrics.networks import ClipNetwork, ClipPreprocess, EmotionFeatureClassifier


@pytest.fixture(scope="module")
def emo_classifier(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("emo") / "clf"
    assert main(["train", "emo-classifier", str(synth_dir), "--clip", "uniemo-standin", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def generated(joint_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "images"
    args = ["generate", "--checkpoint", str(joint_run), "--emotion", "all", "--num-images", "3", "--steps", "2"]
    assert main([*args, "--out", str(out)]) == 0
    return out


def _evaluate(images, reference, emo_classifier) -> list[str]:
    return ["evaluate", "generation", "--images", str(images), "--reference", str(reference)] + [
        "--emo-classifier",
        str(emo_classifier),
    ]


def test_preprocessing_rescales_once_and_legacy_reproduces_the_double_rescale():
    white = Image.new("RGB", (40, 30), (255, 255, 255))
    black = Image.new("RGB", (40, 30), (0, 0, 0))
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    correct = ClipPreprocess(16)
    assert correct(white).shape == (3, 16, 16)
    assert torch.allclose(correct(white), ((1 - mean) / std).expand(3, 16, 16), atol=1e-6)
    assert torch.allclose(correct(black), (-mean / std).expand(3, 16, 16), atol=1e-6)
    legacy = ClipPreprocess(16, double_rescale=True)  # EmoGen: [0, 1] images divided by 255 again
    assert torch.allclose(legacy(white), ((1 / 255 - mean) / std).expand(3, 16, 16), atol=1e-6)


def test_emo_classifier_trains_caches_features_and_reloads(emo_classifier, synth_dir, monkeypatch, capsys):
    clf = EmotionFeatureClassifier.from_pretrained(emo_classifier)
    assert clf.clip == "uniemo-standin" and len(clf.classes) == 8
    assert clf.meta["num_train"] == 320 and 0.125 < clf.meta["test_accuracy"] <= 1  # above chance
    # a second run reads the cached features: no image reaches CLIP
    calls: list[int] = []
    embed = ClipNetwork.embed_pixels
    monkeypatch.setattr(ClipNetwork, "embed_pixels", lambda self, px: calls.append(len(px)) or embed(self, px))
    again = emo_classifier.parent / "again"
    argv = ["train", "emo-classifier", str(synth_dir), "--clip", "uniemo-standin", "--out", str(again)]
    argv += ["--cache", str(emo_classifier.parent / "clf-feature-cache")]
    assert main(argv) == 0
    assert calls == []
    assert EmotionFeatureClassifier.from_pretrained(again).meta["test_accuracy"] == clf.meta["test_accuracy"]
    # a changed training image invalidates the training split's cache entry only
    some = next((synth_dir / "image").rglob("*.jpg"))
    train_files = {str(p) for p in (synth_dir / "image").rglob("*.jpg")}
    assert str(some) in train_files
    stat = some.stat()
    os.utime(some, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    try:
        assert main(argv) == 0
    finally:
        os.utime(some, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sum(calls) in (320, 64, 96)  # exactly one split was read again


def test_emo_classifier_never_replaces_another_directory(synth_dir, trained_run, capsys):
    argv = ["train", "emo-classifier", str(synth_dir), "--clip", "uniemo-standin", "--out", str(trained_run)]
    assert main(argv) == 2
    assert "already holds something else" in capsys.readouterr().err
    assert (trained_run / "best" / "model.json").is_file()


def test_lpips_in_the_suite_is_the_per_emotion_mean_over_its_pairs(
    generated, synth_dir, emo_classifier, tmp_path, capsys
):
    """The evaluator's LPIPS path with a network of known weights (LPIPS itself equals the `lpips` package: the
    reference tests): the value is the mean over emotions of each emotion's mean distance over its pairs."""
    from uniemo.metrics.lpips import AlexNetFeatures, load_lpips, lpips_distances

    torch.manual_seed(2)
    alexnet, linear = tmp_path / "alexnet.pth", tmp_path / "alex.pth"
    torch.save({f"features.{k}": v for k, v in AlexNetFeatures().features.state_dict().items()}, alexnet)
    torch.save(
        {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}, linear
    )
    argv = [*_evaluate(generated, synth_dir, emo_classifier), "--lpips-alexnet", str(alexnet), "--lpips-linear"]
    argv += [str(linear), "--pairs", "2", "--json"] + [f"--skip={m}" for m in ("fid", "emo-a", "sem-c", "sem-d")]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)["lpips"]
    network, pairs, per = load_lpips(alexnet, linear), gm.sample_pairs(3, 2, 0), {}
    for folder in sorted(generated.iterdir()):
        images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
        x = torch.stack(
            [torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1 for im in images]
        )
        per[folder.name] = float(lpips_distances(network, x[pairs[:, 0]], x[pairs[:, 1]]).mean())
    assert report["per_emotion"] == pytest.approx(per, rel=1e-5) and report["n_pairs"] == 16
    assert report["value"] == pytest.approx(np.mean(list(per.values())), rel=1e-5) and report["value"] > 1e-4


def test_generate_all_writes_one_folder_per_emotion(generated):
    folders = sorted(p.name for p in generated.iterdir())
    assert len(folders) == 8
    assert all(len(list((generated / f).glob("*.png"))) == 3 for f in folders)


def test_suite_numbers_equal_hand_computations(generated, synth_dir, emo_classifier, capsys):
    argv = [
        *_evaluate(generated, synth_dir, emo_classifier),
        "--fid-network",
        "clip",
        "--skip",
        "lpips",
        "--pairs",
        "2",
        "--json",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 24 and report["emo-a"]["n"] == 24
    # by hand: CLIP embeddings with correct preprocessing, the classifier, the pairs, the formulas
    clip = ClipNetwork("uniemo-standin")
    clf = EmotionFeatureClassifier.from_pretrained(emo_classifier)
    hits, same_sign, sem_d, fake = [], [], [], []
    positive = {"amusement", "awe", "contentment", "excitement"}  # EmoSet's positive half, written out by hand
    for emotion in clf.classes:
        images = [Image.open(p).convert("RGB") for p in sorted((generated / emotion).glob("*.png"))]
        pixels = torch.stack([ClipPreprocess(clip.image_size)(im) for im in images])
        embeds = clip.embed_pixels(pixels)
        fake.append(embeds)
        predicted = clf.probabilities(embeds).argmax(1)
        hits += (predicted == clf.classes.index(emotion)).tolist()
        same_sign += [(clf.classes[k] in positive) == (emotion in positive) for k in predicted.tolist()]
        pairs = gm.sample_pairs(3, 2, 0)
        sem_d.append(np.mean([np.mean((embeds[i] - embeds[j]).numpy() ** 2) for i, j in pairs]))
    assert report["emo-a"]["value"] == pytest.approx(np.mean(hits))
    assert report["emo-a"]["two_class"] == pytest.approx(np.mean(same_sign))
    assert report["sem-d"]["value"] == pytest.approx(np.mean(sem_d), rel=1e-5)
    assert report["sem-d"]["n_pairs"] == 16
    assert report["fid"]["n_reference"] == 96 and report["fid"]["reference"] == "split 'test'"
    # FID between the generated images and the real test images (CLIP features), by hand
    test_split = json.loads((synth_dir / "test.json").read_text())
    real = torch.stack(
        [ClipPreprocess(clip.image_size)(Image.open(synth_dir / e[1]).convert("RGB")) for e in test_split]
    )
    fid = gm.fid_from_features(clip.embed_pixels(real), torch.cat(fake))
    assert report["fid"]["value"] == pytest.approx(fid, rel=1e-4) and fid > 1e-3
    assert 0 < report["sem-c"]["value"] <= 1
    # --legacy changes what it says it changes: Sem-D through the double rescale, FID against the whole dataset
    assert main([*argv, "--legacy"]) == 0
    legacy = json.loads(capsys.readouterr().out)
    assert legacy["fid"]["n_reference"] == 320 + 64 + 96
    assert legacy["sem-d"]["value"] != pytest.approx(report["sem-d"]["value"], rel=1e-3)
    assert legacy["emo-a"]["value"] == report["emo-a"]["value"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "FID's Inception-V3"),
        (["--fid-network", "clip"], "alexnet"),
        (["--fid-network", "clip", "--skip", "lpips", "--skip", "sharpness"], "unknown metric"),
    ],
)
def test_missing_networks_and_bad_options_are_one_line(generated, synth_dir, emo_classifier, capsys, extra, message):
    argv = [
        *_evaluate(generated, synth_dir, emo_classifier),
        *extra,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message.lower() in err.lower()


def test_bad_generated_folders_and_missing_classifier(generated, synth_dir, tmp_path, capsys):
    base = ["evaluate", "generation", "--reference", str(synth_dir), "--fid-network", "clip", "--skip", "lpips"]
    assert main([*base, "--images", str(generated)]) == 2
    assert "uniemo train emo-classifier" in capsys.readouterr().err
    (tmp_path / "happy").mkdir()
    assert main([*base, "--skip", "emo-a", "--clip", "uniemo-standin", "--images", str(tmp_path)]) == 2
    assert "not emotions of the reference dataset: happy" in capsys.readouterr().err
    assert main([*base, "--skip", "emo-a", "--clip", "tiny-clip", "--images", str(generated)]) == 2
    assert "random architecture" in capsys.readouterr().err
