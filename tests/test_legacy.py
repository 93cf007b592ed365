"""Checkpoints written before the training engine (``tests/fixtures/legacy``, made by ``make_legacy.py`` with
commit 8ba7721's code) still load, give what they gave then, and an interrupted run of that version resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, micro_overrides
from uniemo.config import load_config

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


def test_a_stage1_checkpoint_of_the_previous_version_predicts_as_it_did(synth_dir):
    from uniemo.data.datasets import EmotionImageDataset, open_dataset
    from uniemo.data.transforms import ClipTransform
    from uniemo.pipelines.classifier import EmotionClassifier, predict_dataset

    clf = EmotionClassifier.from_pretrained(LEGACY / "stage1-step6" / "last")
    samples = open_dataset(synth_dir).split("test")[:8]
    probs, _, _, _ = predict_dataset(clf.model, EmotionImageDataset(samples, ClipTransform(clf.model.image_size)))
    expected = load_file(str(LEGACY / "expected.safetensors"))["stage1_probs"]
    probs = torch.as_tensor(probs).float()
    assert torch.allclose(probs, expected, atol=1e-5), (probs - expected).abs().max()


def test_a_joint_checkpoint_of_the_previous_version_generates_as_it_did():
    from uniemo.pipelines.generation import UniEmoPipeline

    pipe = UniEmoPipeline.from_pretrained(LEGACY / "joint" / "last")
    image = np.asarray(pipe("amusement", num_images=1, seed=0, steps=2).images[0]).astype(np.float32)
    expected = load_file(str(LEGACY / "expected.safetensors"))["amusement_seed0"].numpy()
    assert np.abs(image - expected).max() <= 1.0  # uint8 pixels, one level for rounding
    other = np.asarray(pipe("sadness", num_images=1, seed=0, steps=2).images[0]).astype(np.float32)
    assert np.abs(other - expected).max() > 1.0  # the control: the comparison can tell two images apart


def test_a_run_interrupted_under_the_previous_version_resumes_to_the_same_weights(synth_dir, trained_run, tmp_path):
    """The state saved at step 6 of 12 by the previous version, resumed by this one, ends on exactly the weights
    this version's own uninterrupted run ends on (the same data, config and seed)."""
    from uniemo.train.understanding import train_understanding

    resumed = tmp_path / "resumed"
    shutil.copytree(LEGACY / "stage1-step6" / "last", resumed / "last")
    saved = yaml.safe_load((resumed / "last" / "config.yaml").read_text())
    saved["data"]["root"] = str(synth_dir)  # the same built-in dataset, written where this session's tests put it
    (resumed / "last" / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    cfg = load_config(REPO / "configs" / "tiny.yaml", micro_overrides(synth_dir, resumed) + ["save_every=6"])
    summary = train_understanding(cfg, resume=True, progress=False)
    assert summary.steps == 12
    a = load_file(str(trained_run / "last" / "model.safetensors"))
    b = load_file(str(resumed / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
