"""Checkpoints written before the training engine (``tests/fixtures/legacy``, made by ``make_legacy.py`` with
commit 8ba7721's code) still load, give what they gave then, and an interrupted run of that version resumes."""

from __future__ import annotations

import json
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


def _resume_legacy(synth_dir: Path, out: Path, scheduler_behind: int = 0) -> dict[str, torch.Tensor]:
    """Resumes the previous version's state saved at step 6 of 12 (its scheduler set back ``scheduler_behind``
    steps, for the control) and returns the weights it ends on."""
    from uniemo.train.understanding import train_understanding

    shutil.copytree(LEGACY / "stage1-step6" / "last", out / "last")
    saved = yaml.safe_load((out / "last" / "config.yaml").read_text())
    saved["data"]["root"] = str(synth_dir)  # the same built-in dataset, written where this session's tests put it
    (out / "last" / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    state_file = out / "last" / "training_state.json"
    state = json.loads(state_file.read_text())
    state["scheduler"]["last_epoch"] -= scheduler_behind
    state_file.write_text(json.dumps(state))
    cfg = load_config(REPO / "configs" / "tiny.yaml", micro_overrides(synth_dir, out) + ["save_every=6"])
    assert train_understanding(cfg, resume=True, progress=False).steps == 12
    return load_file(str(out / "last" / "model.safetensors"))


def _largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def test_a_run_interrupted_under_the_previous_version_resumes_to_the_same_weights(synth_dir, trained_run, tmp_path):
    """The state saved at step 6 of 12 by the previous version, resumed by this one, ends on the weights this
    version's own uninterrupted run ends on (the same data, config and seed).

    The fixture was written on another CPU, whose kernels round differently: equality is exact only on the machine
    that wrote it. Noise of 1e-6 of each tensor's largest value added to the step-6 weights moves the step-12
    weights by about 1e-5, and two CPUs were measured 8.7e-6 and 9.7e-6 apart, so the bound is 1e-4. A resume
    that gets the state wrong lands far beyond it: the optimiser's moments zeroed 2.1e-3, the data resumed at the
    epoch's start 1.5e-3, the scheduler one step behind 4.8e-4 — the last, the smallest, is the control run here.
    (Resume is bit-exact where both runs are made on one machine: tests/test_train.py, tests/test_interrupt.py.)"""
    uninterrupted = load_file(str(trained_run / "last" / "model.safetensors"))
    resumed = _largest_difference(_resume_legacy(synth_dir, tmp_path / "resumed"), uninterrupted)
    assert resumed <= 1e-4, f"the resumed run ends {resumed:.2e} from the uninterrupted one"
    behind = _largest_difference(_resume_legacy(synth_dir, tmp_path / "behind", scheduler_behind=1), uninterrupted)
    assert behind > 3e-4, f"the control (scheduler one step behind) ends only {behind:.2e} away"
