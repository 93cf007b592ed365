import json
import shutil

import pytest
import torch

from uniemo.checkpoint import atomic_directory, resolve_checkpoint
from uniemo.errors import CheckpointError
from uniemo.pipelines.classifier import EmotionClassifier


def _copy(run, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(run / "best", target)
    return target


def test_save_load_gives_identical_logits(trained_run, tmp_path):
    clf = EmotionClassifier.from_pretrained(trained_run)
    x = torch.randn(3, 3, clf.model.image_size, clf.model.image_size)
    with torch.no_grad():
        before = clf.model(x).logits
    clf.save_pretrained(tmp_path / "again")
    again = EmotionClassifier.from_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(again.model(x).logits, before)
    assert again.classes == clf.classes and again.scene_vocab == clf.scene_vocab


def test_run_dir_resolves_to_best_then_last(trained_run, tmp_path):
    assert resolve_checkpoint(trained_run) == trained_run / "best"
    only_last = tmp_path / "run"
    shutil.copytree(trained_run / "last", only_last / "last")
    assert resolve_checkpoint(only_last) == only_last / "last"


def test_another_architecture_is_refused(trained_run, tmp_path):
    ckpt = _copy(trained_run, tmp_path)
    meta = json.loads((ckpt / "model.json").read_text())
    meta["architecture"]["num_scene_queries"] += 1
    (ckpt / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="another architecture.*scene_queries has shape"):
        EmotionClassifier.from_pretrained(ckpt)
    meta["kind"] = "generation"
    (ckpt / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="'generation' checkpoint, not a uniemo 'understanding'"):
        EmotionClassifier.from_pretrained(ckpt)


def test_missing_files_and_pickles_are_refused(trained_run, tmp_path):
    ckpt = _copy(trained_run, tmp_path)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        EmotionClassifier.from_pretrained(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        EmotionClassifier.from_pretrained(ckpt)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle weights"):
        EmotionClassifier.from_pretrained(pickled)
    with pytest.raises(CheckpointError, match="pickle file"):
        EmotionClassifier.from_pretrained(pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not found"):
        EmotionClassifier.from_pretrained(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="model.json is missing"):
        EmotionClassifier.from_pretrained(tmp_path / "plain")


def test_atomic_directory_keeps_the_old_copy_on_failure(tmp_path):
    target = tmp_path / "last"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("v2 half")
            raise RuntimeError("killed mid-write")
    assert (target / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no temporary left behind


def test_a_swap_killed_half_way_is_recovered(tmp_path):
    from uniemo.checkpoint import recover_directory

    target = tmp_path / "last"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    # The state a SIGKILL leaves between the two renames: the old copy aside, the new one still temporary.
    (tmp_path / ".last.tmp-x").mkdir()
    target.rename(tmp_path / ".last.old")
    recover_directory(target)
    assert (target / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_pretrained_models_load_from_safetensors_only(tmp_path):
    """A CLIP or Stable Diffusion directory holding pickled .bin weights is refused, never unpickled."""
    from uniemo.models.diffusion import load_stable_diffusion, tiny_stable_diffusion
    from uniemo.models.factory import load_clip_vision

    vision = load_clip_vision("micro-clip")
    vision.save_pretrained(tmp_path / "clip-safe")
    assert torch.equal(
        load_clip_vision(str(tmp_path / "clip-safe")).state_dict()["post_layernorm.weight"],
        vision.state_dict()["post_layernorm.weight"],
    )
    vision.config.save_pretrained(tmp_path / "clip-bin")  # transformers 5 writes only safetensors: a .bin by hand
    torch.save(vision.state_dict(), tmp_path / "clip-bin" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot load the CLIP vision tower"):
        load_clip_vision(str(tmp_path / "clip-bin"))
    tiny_stable_diffusion(0).save_pretrained(tmp_path / "sd-bin", safe_serialization=False)
    unet = tmp_path / "sd-bin" / "unet"
    assert list(unet.glob("*.bin")) and not list(unet.glob("*.safetensors"))  # the UNet's weights are a pickle
    with pytest.raises(CheckpointError, match="cannot load a Stable Diffusion pipeline"):
        load_stable_diffusion(str(tmp_path / "sd-bin"))
