"""The README's Python example, run as written (paths resolved against a trained test run)."""

import re

import pytest
import torch

from tests.conftest import REPO
from uniemo import EmotionClassifier


def test_readme_python_example_runs(trained_run, synth_dir, tmp_path, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    demo = tmp_path / "demo-output"
    demo.mkdir()
    (demo / "understanding").symlink_to(trained_run)
    (demo / "data").symlink_to(synth_dir)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[0] in EmotionClassifier.from_pretrained(trained_run).classes
    assert printed[1].startswith("torch.Size([1, 32])")


def test_readme_factory_example_runs(tmp_path, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", readme.split("## Python API", 1)[1], re.S)[2]
    assert "create_model" in code
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    printed = capsys.readouterr().out.splitlines()
    assert "uniemo-vit-b-32" in printed[0] and printed[1] == "8 2"  # the comment's values are the printed ones
    assert scope["plain"].config.query_mode == "none"
    size = scope["model"].image_size
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(scope["again"].eval()(x).logits, scope["model"].eval()(x).logits)


def test_readme_generation_example_runs(joint_run, synth_dir, tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]
    assert "UniEmoPipeline" in code
    demo = tmp_path / "demo-output"
    demo.mkdir()
    (demo / "joint").symlink_to(joint_run)
    (demo / "data").symlink_to(synth_dir)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["images"]) == 4
    assert (tmp_path / "my-uniemo" / "diffusion" / "model_index.json").is_file()


def test_predictions_agree_with_the_model_and_sentiment_sums(trained_run, synth_dir):
    clf = EmotionClassifier.from_pretrained(trained_run)
    paths = sorted((synth_dir / "image" / "awe").glob("*.jpg"))[:3]
    preds = clf.predict(paths)
    probs = clf.probabilities(paths)
    for pred, p in zip(preds, probs):
        assert pred.label == clf.classes[int(p.argmax())]
        assert abs(pred.probability - float(p.max())) < 1e-6
        positive = float(p[:4].sum())  # EmoSet order: the first four emotions are positive
        assert abs(pred.sentiment["positive"] - positive) < 1e-5
    from PIL import Image

    with Image.open(paths[0]) as im:  # a PIL image gives the same result as its path
        torch.testing.assert_close(clf.probabilities([im.convert("RGB")]), probs[:1])


def test_predict_files_keeps_order_and_reports_bad_files(trained_run, synth_dir, tmp_path):
    clf = EmotionClassifier.from_pretrained(trained_run)
    good = sorted((synth_dir / "image" / "fear").glob("*.jpg"))[:5]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    paths = [*good[:2], bad, *good[2:]]
    expected = clf.predict(good)
    for workers in (0, 1):
        results = list(clf.predict_files(paths, batch_size=2, num_workers=workers))
        assert [r[0] for r in results] == paths
        assert results[2][1] is None and "bad.jpg" in results[2][2]
        got = [r[1] for r in results if r[1] is not None]
        assert [g.label for g in got] == [e.label for e in expected]
        assert all(abs(g.probability - e.probability) < 1e-6 for g, e in zip(got, expected))


def test_attention_maps(trained_run, synth_dir):
    import numpy as np

    from uniemo.errors import UniEmoError
    from uniemo.models.architecture import ExpertQueryConfig
    from uniemo.models.factory import load_clip_vision
    from uniemo.models.understanding import ExpertQueryCLIP
    from uniemo.visualize import attention_maps

    clf = EmotionClassifier.from_pretrained(trained_run)
    maps = attention_maps(clf, synth_dir / "image" / "awe" / "awe_00001.jpg")
    grid = clf.model.image_size // clf.model.vision.config.patch_size
    assert maps.scene.shape == maps.object.shape == (grid, grid)
    assert np.isclose(maps.scene.sum(), 1, atol=1e-5) and np.isclose(maps.object.sum(), 1, atol=1e-5)
    assert maps.image.size == (clf.model.image_size,) * 2
    # each map is its own Interactive Block's attention: read from the blocks themselves, a swap shows
    seen = {}
    for name in ("scene_ib", "object_ib"):
        block = getattr(clf.model, name)
        block.register_forward_hook(lambda module, args, out, name=name: seen.__setitem__(name, out[1]))
    maps = attention_maps(clf, synth_dir / "image" / "awe" / "awe_00001.jpg")
    scene = seen["scene_ib"][0].float().mean(0).reshape(grid, grid).numpy()
    obj = seen["object_ib"][0].float().mean(0).reshape(grid, grid).numpy()
    assert np.allclose(maps.scene, scene, atol=1e-6) and np.allclose(maps.object, obj, atol=1e-6)
    assert not np.allclose(maps.scene, maps.object, atol=1e-4)
    plain_model = ExpertQueryCLIP(load_clip_vision("micro-clip"), ExpertQueryConfig(8, 16, query_mode="none"))
    plain = EmotionClassifier(plain_model, clf.classes)
    with pytest.raises(UniEmoError, match="no expert queries"):
        attention_maps(plain, maps.image)
