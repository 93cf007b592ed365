import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, micro_overrides
from uniemo.config import load_config
from uniemo.errors import ConfigError
from uniemo.train import loop
from uniemo.train import understanding as stage1

TINY = REPO / "configs" / "tiny.yaml"


def test_run_directory_contents(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= {"best", "last", "logs", "metrics.jsonl", "summary.json"}
    assert list((trained_run / "logs").rglob("events.out.tfevents.*")), "no TensorBoard log"
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val/accuracy" in r]
    assert [e["step"] for e in evals] == [6, 12]
    losses = [r for r in records if "loss/total" in r]  # log_every=3: the training curve the demo report plots
    assert [r["step"] for r in losses] == [3, 6, 9, 12] and all(r["loss/total"] > 0 for r in losses)
    summary = json.loads((trained_run / "summary.json").read_text())
    best = json.loads((trained_run / "best" / "model.json").read_text())
    assert best["val_accuracy"] == summary["best_val_accuracy"] == max(e["val/accuracy"] for e in evals)
    assert best["scene_vocab"] and best["object_vocab"]
    assert load_config(trained_run / "best" / "config.yaml").model.backbone == "micro-clip"


def test_resume_after_interruption_is_bit_exact(synth_dir, tmp_path, monkeypatch):
    """A run stopped at step 6 (mid-epoch) and resumed ends with exactly the weights of an uninterrupted run."""
    snapshot = tmp_path / "snapshot"
    real_save = loop.save_training_state

    def save_and_snapshot(directory, optimizer, scheduler, counters):
        real_save(directory, optimizer, scheduler, counters)
        if counters["step"] == 6 and not snapshot.exists():
            shutil.copytree(directory, snapshot)  # the state a killed run leaves behind (written atomically)

    monkeypatch.setattr(loop, "save_training_state", save_and_snapshot)
    full = tmp_path / "full"
    stage1.train_understanding(load_config(TINY, micro_overrides(synth_dir, full) + ["save_every=6"]), progress=False)

    resumed = tmp_path / "resumed"
    (resumed / "last").parent.mkdir()
    shutil.copytree(snapshot, resumed / "last")
    cfg = load_config(TINY, micro_overrides(synth_dir, resumed) + ["save_every=6"])
    stage1.train_understanding(cfg, resume=True, progress=False)
    a = load_file(str(full / "last" / "model.safetensors"))
    b = load_file(str(resumed / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_existing_run_and_resume_mismatch_are_refused(trained_run, synth_dir):
    with pytest.raises(ConfigError, match="already holds a run"):
        stage1.train_understanding(load_config(TINY, micro_overrides(synth_dir, trained_run)), progress=False)
    with pytest.raises(ConfigError, match="cannot resume: 'optim.lr'"):
        cfg = load_config(TINY, micro_overrides(synth_dir, trained_run) + ["optim.lr=0.5"])
        stage1.train_understanding(cfg, resume=True, progress=False)


def test_missing_required_fields(tmp_path):
    with pytest.raises(ConfigError, match="data.root is required"):
        stage1.train_understanding(load_config(TINY, [f"output_dir={tmp_path}"]), progress=False)
    with pytest.raises(ConfigError, match="output_dir is required"):
        stage1.train_understanding(load_config(TINY, ["data.root=/x"]), progress=False)


def test_non_finite_loss_stops_with_a_message(synth_dir, tmp_path):
    cfg = load_config(TINY, micro_overrides(synth_dir, tmp_path / "nan") + ["loss.ce_weight=.nan"])
    with pytest.raises(stage1.TrainingError, match="loss became nan at step 0"):
        stage1.train_understanding(cfg, progress=False)


def test_a_non_finite_loss_after_a_save_keeps_that_checkpoint(synth_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = stage1.understanding_loss

    def nan_at_fifth_step(*args, **kwargs):
        calls["n"] += 1
        loss, parts = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 5 else loss), parts

    monkeypatch.setattr(stage1, "understanding_loss", nan_at_fifth_step)
    cfg = load_config(TINY, micro_overrides(synth_dir, tmp_path / "nan") + ["save_every=2"])
    with pytest.raises(stage1.TrainingError, match=r"loss became nan at step 4 \(the last good checkpoint is in"):
        stage1.train_understanding(cfg, progress=False)
    last = tmp_path / "nan" / "last"
    assert json.loads((last / "training_state.json").read_text())["counters"]["step"] == 4
    assert all(torch.isfinite(t.float()).all() for t in load_file(str(last / "model.safetensors")).values())


def test_batch_larger_than_dataset_is_refused(synth_dir, tmp_path):
    cfg = load_config(TINY, micro_overrides(synth_dir, tmp_path / "big") + ["data.max_train_samples=10"])
    with pytest.raises(ConfigError, match="smaller than one batch"):
        stage1.train_understanding(cfg, progress=False)


def test_param_groups_follow_the_method():
    cfg = load_config(None, ["model.backbone=micro-clip", "optim.lr=1e-3", "optim.backbone_lr_scale=0.1"])
    model = stage1.build_model(cfg, 8, 16, (2, 2))
    groups = stage1.param_groups(model, cfg)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model.scene_queries)]["weight_decay"] == 0 and by_id[id(model.scene_queries)]["lr"] == 1e-3
    assert by_id[id(model.scene_beta)]["weight_decay"] == 0
    assert by_id[id(model.head.weight)]["weight_decay"] == cfg.optim.weight_decay
    patch = model.vision.embeddings.patch_embedding.weight
    assert by_id[id(patch)]["lr"] == pytest.approx(1e-4) and by_id[id(patch)]["weight_decay"] > 0
    assert by_id[id(model.vision.post_layernorm.weight)]["weight_decay"] == 0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_backbone_from_a_local_clip_directory_and_mode_none(synth_dir, tmp_path):
    """The real path: a CLIP checkpoint directory (as `save_pretrained` / the hub lay it out) as backbone and
    attribute text tower. With the backbone's lr at 0, the trained model must still hold the directory's weights."""
    from transformers import CLIPModel, CLIPTextModelWithProjection

    from uniemo.models.factory import architecture_config, clip_tokenizer, encode_texts
    from uniemo.pipelines.classifier import EmotionClassifier

    clip_dir = tmp_path / "my-clip"
    torch.manual_seed(123)  # not the seed a built-in architecture would be initialised with
    CLIPModel(architecture_config("micro-clip")).save_pretrained(clip_dir)
    clip_tokenizer().save_pretrained(clip_dir)
    reference = CLIPModel.from_pretrained(clip_dir).vision_model.state_dict()
    text_tower = CLIPTextModelWithProjection.from_pretrained(clip_dir)
    for mode in ("multi_stage", "none"):
        out = tmp_path / mode
        overrides = micro_overrides(synth_dir, out, steps=2)
        overrides += [f"model.backbone={clip_dir}", f"model.query_mode={mode}", "optim.backbone_lr_scale=0"]
        summary = stage1.train_understanding(load_config(TINY, overrides), progress=False)
        assert summary.steps == 2
        clf = EmotionClassifier.from_pretrained(out)
        assert clf.model.query_mode == mode and len(clf.classes) == 8
        loaded = clf.model.vision.state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(loaded[k], reference[k]) for k in reference), "backbone not loaded from the directory"
        if mode == "multi_stage":
            expected = encode_texts(text_tower, clip_tokenizer(), clf.scene_vocab)
            torch.testing.assert_close(clf.model.scene_vocab_embeds, expected)
        else:
            assert clf.scene_vocab == []
