"""Checkpoints by hub id: what ``push_to_hub`` uploads, laid into a hub cache the way ``huggingface_hub`` lays a
download (blobs, snapshots, refs), is what ``from_pretrained("owner/name")`` and ``--checkpoint owner/name`` read
back offline — the same predictions, the same images, the card's figures. No HTTP is mocked: the hub is never
reached (``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants

from uniemo import hub
from uniemo.checkpoint import resolve_checkpoint
from uniemo.errors import CheckpointError
from uniemo.pipelines.classifier import EmotionClassifier

REPO_ID = "uniemo-test/micro"
MAIN, OTHER = "a" * 40, "b" * 40  # two commits of the repository


def cache_snapshot(folder: Path, cache: Path, repo_id: str, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lays ``folder`` into ``cache`` as ``huggingface_hub`` lays a downloaded commit: content-addressed blobs, the
    snapshot's files as links to them, and refs naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def evaluation(trained_run, synth_dir, tmp_path) -> Path:
    from uniemo.evaluate import evaluate_understanding

    evaluate_understanding(trained_run, synth_dir, out_dir=tmp_path / "eval", progress=False)
    return tmp_path / "eval" / "report.json"


def test_a_classifier_published_by_hub_id_predicts_as_the_local_one(trained_run, synth_dir, hub_cache, evaluation):
    staged = hub.stage_for_hub(trained_run, hub_cache.parent / "upload", REPO_ID, [evaluation])
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "config.yaml", "model.json", "model.safetensors"]
    cache_snapshot(staged, hub_cache, REPO_ID, MAIN)

    images = sorted((synth_dir / "image" / "awe").glob("*.jpg"))[:4]
    local = EmotionClassifier.from_pretrained(trained_run)
    shared = EmotionClassifier.from_pretrained(REPO_ID)
    assert resolve_checkpoint(REPO_ID).is_relative_to(hub_cache)
    torch.testing.assert_close(shared.probabilities(images), local.probabilities(images), rtol=0, atol=0)

    # the card says what was measured, with its N, as `evaluate understanding` reported it
    report = json.loads(evaluation.read_text())
    card = shared.card
    accuracy = next(m for m in card["metrics"] if m["name"] == "accuracy")
    assert accuracy["value"] == pytest.approx(report["accuracy"]) and accuracy["n"] == report["num_samples"] == 96
    assert card["classes"] == local.classes and card["kind"] == "understanding"
    assert card["data"]["train_images"] == 320  # the micro dataset's training split
    assert card["training"]["model"]["backbone"] == "micro-clip"
    assert "root" not in card["training"]["data"] and "output_dir" not in card["training"]  # no machine paths
    text = (staged / "README.md").read_text()
    assert text.startswith("---\n") and "library_name: uniemo" in text
    assert f'EmotionClassifier.from_pretrained("{REPO_ID}")' in text and "| accuracy |" in text


def test_a_revision_selects_its_commit(trained_run, synth_dir, hub_cache, tmp_path):
    """main and another commit hold different weights: each revision loads its own."""
    first = hub.stage_for_hub(trained_run / "best", tmp_path / "best", REPO_ID)
    second = hub.stage_for_hub(trained_run / "last", tmp_path / "last", REPO_ID)
    cache_snapshot(first, hub_cache, REPO_ID, MAIN)
    cache_snapshot(second, hub_cache, REPO_ID, OTHER, refs=("v2",))
    images = sorted((synth_dir / "image" / "fear").glob("*.jpg"))[:4]
    expected = {
        rev: EmotionClassifier.from_pretrained(trained_run / d).probabilities(images)
        for rev, d in (("main", "best"), ("v2", "last"))
    }
    assert not torch.equal(expected["main"], expected["v2"])  # the control: the two commits differ
    for revision in ("main", "v2"):
        got = EmotionClassifier.from_pretrained(REPO_ID, revision=revision).probabilities(images)
        torch.testing.assert_close(got, expected[revision], rtol=0, atol=0)
    got = EmotionClassifier.from_pretrained(REPO_ID, revision=OTHER).probabilities(images)  # a commit hash
    torch.testing.assert_close(got, expected["v2"], rtol=0, atol=0)


def test_a_joint_checkpoint_by_hub_id_generates_the_same_images(joint_run, hub_cache, tmp_path):
    from uniemo.pipelines.generation import UniEmoPipeline

    local = UniEmoPipeline.from_pretrained(joint_run)
    # push_to_hub publishes what save_pretrained writes, staged as below; here that folder goes into the cache
    local.save_pretrained(tmp_path / "saved", include_diffusion=True)
    staged = hub.stage_for_hub(tmp_path / "saved", tmp_path / "upload", "uniemo-test/joint")
    assert (staged / "diffusion" / "model_index.json").is_file() and (staged / "config.yaml").is_file()
    cache_snapshot(staged, hub_cache, "uniemo-test/joint", MAIN)

    shared = UniEmoPipeline.from_pretrained("uniemo-test/joint")
    a = np.asarray(local("amusement", num_images=1, seed=0, steps=2).images[0])
    b = np.asarray(shared("amusement", num_images=1, seed=0, steps=2).images[0])
    assert np.array_equal(a, b)
    assert shared.card["kind"] == "joint" and shared.card["sampling"] == {
        k: v for k, v in local.meta["sampling"].items() if v is not None
    }
    assert shared.card["diffusion"] == local.meta["diffusion"]
    assert any(m["name"] == "test accuracy" and m["split"] == "test" for m in shared.card["metrics"])


def test_a_hub_id_neither_cached_nor_reachable_is_one_clear_error(hub_cache, trained_run):
    with pytest.raises(CheckpointError, match="'nobody/nothing' is neither a local directory nor in the hub cache"):
        EmotionClassifier.from_pretrained("nobody/nothing")
    with pytest.raises(CheckpointError, match="a revision applies to a hub id"):
        EmotionClassifier.from_pretrained(trained_run, revision="main")
    assert EmotionClassifier.from_pretrained(trained_run).classes  # a local path works as before
    with pytest.raises(CheckpointError, match="could not publish to 'nobody/nothing'"):
        hub.push_to_hub(trained_run, "nobody/nothing")  # offline: refused before any upload, in one line


def test_cards_from_both_reports_keep_their_n():
    understanding = {
        "accuracy": 0.5,
        "num_samples": 96,
        "sentiment_accuracy": 0.75,
        "dataset": "/x/EmoSet",
        "split": "test",
    }
    generation = {
        "emo-a": {"value": 0.4, "n": 64, "two_class": 0.9},
        "fid": {"value": 12.0, "n": 64, "network": "clip"},
    }
    assert hub.card_metrics(understanding) == [
        {"name": "accuracy", "value": 0.5, "n": 96, "dataset": "EmoSet", "split": "test"},
        {"name": "2-class accuracy", "value": 0.75, "n": 96, "dataset": "EmoSet"},
    ]
    assert hub.card_metrics(generation) == [
        {"name": "emo-a", "value": 0.4, "n": 64},
        {"name": "emo-a 2-class", "value": 0.9, "n": 64},
        {"name": "fid", "value": 12.0, "n": 64, "network": "clip"},
    ]
    with pytest.raises(CheckpointError, match="not a report"):
        hub.card_metrics({"something": 1})


def _uniemo(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "uniemo", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_the_command_line_takes_a_hub_id(trained_run, synth_dir, tmp_path):
    cache = tmp_path / "cache"
    cache_snapshot(hub.stage_for_hub(trained_run, tmp_path / "upload", REPO_ID), cache, REPO_ID, MAIN)
    image = str(sorted((synth_dir / "image" / "sadness").glob("*.jpg"))[0])
    by_id = _uniemo("classify", "--checkpoint", REPO_ID, image, "--json", cache=cache, cwd=tmp_path)
    by_path = _uniemo("classify", "--checkpoint", str(trained_run), image, "--json", cache=cache, cwd=tmp_path)
    assert by_id.returncode == 0, by_id.stderr
    assert json.loads(by_id.stdout) == json.loads(by_path.stdout)
    pinned = _uniemo(
        "classify", "--checkpoint", REPO_ID, "--revision", MAIN, image, "--json", cache=cache, cwd=tmp_path
    )
    assert json.loads(pinned.stdout) == json.loads(by_path.stdout)

    evaluated = _uniemo(
        "evaluate",
        "understanding",
        "--checkpoint",
        REPO_ID,
        "--data",
        str(synth_dir),
        "--json",
        cache=cache,
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert (tmp_path / f"eval-{synth_dir.name}-test" / "report.json").is_file()  # not inside the hub cache
    assert not list(cache.rglob("eval-*"))

    missing = _uniemo("classify", "--checkpoint", "nobody/nothing", image, cache=cache, cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [
        "error: 'nobody/nothing' is neither a local directory nor in the hub cache, and the hub cannot be reached "
        "(offline, or HF_HUB_OFFLINE=1): download it once with network access, or give a checkpoint directory"
    ]
    unknown = _uniemo("classify", "--checkpoint", REPO_ID, "--revision", "v9", image, cache=cache, cwd=tmp_path)
    assert unknown.returncode == 2 and "at revision 'v9'" in unknown.stderr


def test_a_card_round_trips_through_yaml(trained_run, tmp_path):
    staged = hub.stage_for_hub(trained_run, tmp_path / "upload", REPO_ID)
    front = (staged / "README.md").read_text().split("---\n")[1]
    assert yaml.safe_load(front)["uniemo"] == hub.read_card(staged)
    assert hub.read_card(trained_run / "best") is None  # a checkpoint without a card


def test_the_web_app_loads_a_hub_id(trained_run, synth_dir, hub_cache, tmp_path):
    from uniemo.app import UniEmoApp

    cache_snapshot(hub.stage_for_hub(trained_run, tmp_path / "upload", REPO_ID), hub_cache, REPO_ID, MAIN)
    app = UniEmoApp.load(REPO_ID, device="cpu")
    assert app.name == REPO_ID and app.pipeline is None  # the page names the repository, not a cache folder
    images = sorted((synth_dir / "image" / "awe").glob("*.jpg"))[:2]
    expected = EmotionClassifier.from_pretrained(trained_run).probabilities(images)
    torch.testing.assert_close(app.classifier.probabilities(images), expected, rtol=0, atol=0)


def test_a_card_of_the_stand_in_says_it_is_not_a_real_dataset(trained_run, tmp_path):
    staged = hub.stage_for_hub(trained_run, tmp_path / "upload", REPO_ID)
    assert "not how well it does on real photographs" not in (staged / "README.md").read_text()  # micro-clip
    config = (staged / "config.yaml").read_text().replace("backbone: micro-clip", "backbone: uniemo-standin")
    (staged / "config.yaml").write_text(config)
    hub.write_card(staged, REPO_ID)
    assert "not how well it does on real photographs" in (staged / "README.md").read_text()


def test_push_to_hub_from_the_shell_offline_is_one_line(trained_run, tmp_path):
    r = _uniemo("push-to-hub", str(trained_run), "nobody/nothing", cache=tmp_path / "cache", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: could not publish to 'nobody/nothing'")
    assert len(r.stderr.strip().splitlines()) == 1
