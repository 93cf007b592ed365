import io
import json
from collections import Counter
from itertools import product

import numpy as np
import pytest
import torch
from PIL import Image

from uniemo.constants import EMOSET_EMOTIONS
from uniemo.data.datasets import EmotionImageDataset, EpochSampler, Sample, collate, detect_format, open_dataset
from uniemo.data.images import draft_size, load_image
from uniemo.data.synth import OBJECTS, PALETTES, SCENES, SynthConfig, emotion_of, write_synthetic_dataset
from uniemo.data.transforms import ClipTransform
from uniemo.errors import DataError

# ---------------------------------------------------------------------------------------------------------------
# The built-in dataset


def test_synth_writes_emoset_layout(synth_dir):
    info = json.loads((synth_dir / "info.json").read_text())
    assert info["label2idx"] == {e: i for i, e in enumerate(EMOSET_EMOTIONS)}
    for split, n in (("train", 320), ("val", 64), ("test", 96)):
        entries = json.loads((synth_dir / f"{split}.json").read_text())
        assert len(entries) == n
        for emotion, image, annotation in entries[:20]:
            assert image == f"image/{emotion}/{image.split('/')[-1]}" and image.endswith(".jpg")
            assert (synth_dir / image).is_file()
            ann = json.loads((synth_dir / annotation).read_text())
            assert ann["emotion"] == emotion
            assert ann["scene"] in SCENES and isinstance(ann["object"], list) and ann["object"][0] in OBJECTS
            assert 0 <= ann["brightness"] <= 1 and round(ann["brightness"] * 10, 6) % 1 == 0
            assert 0 <= ann["colorfulness"] <= 1
    with Image.open(synth_dir / entries[0][1]) as im:
        assert im.size == (32, 32)


def test_synth_is_deterministic_and_refuses_to_overwrite(tmp_path):
    cfg = SynthConfig(train=20, val=4, test=4, resolution=24, seed=3)
    a, b = write_synthetic_dataset(tmp_path / "a", cfg), write_synthetic_dataset(tmp_path / "b", cfg)
    for rel in ("train.json", "image/" + json.loads((a / "train.json").read_text())[5][1].split("image/")[1]):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    with pytest.raises(DataError, match="not empty"):
        write_synthetic_dataset(tmp_path / "a", cfg)
    c = write_synthetic_dataset(tmp_path / "c", SynthConfig(train=20, val=4, test=4, resolution=24, seed=4))
    assert (a / "train.json").read_bytes() != (c / "train.json").read_bytes()


def test_synth_rule_needs_all_three_cues_and_is_balanced():
    combos = list(product(SCENES, OBJECTS, PALETTES))
    labels = [emotion_of(*c) for c in combos]
    counts = Counter(labels)
    assert set(counts) == set(EMOSET_EMOTIONS) and len(set(counts.values())) == 1  # balanced

    def best_accuracy(key):  # the Bayes accuracy of predicting from a subset of the cues
        groups: dict = {}
        for c, y in zip(combos, labels):
            groups.setdefault(key(c), Counter())[y] += 1
        return sum(g.most_common(1)[0][1] for g in groups.values()) / len(combos)

    for cue in range(3):
        assert best_accuracy(lambda c, cue=cue: c[cue]) <= 0.5
    assert best_accuracy(lambda c: (c[0], c[1])) <= 0.5  # scene + object: no valence
    assert best_accuracy(lambda c: (c[0], c[2])) < 0.75  # scene + palette: emotional objects missing
    assert best_accuracy(lambda c: (c[1], c[2])) < 0.9  # object + palette: neutral objects need the scene
    assert best_accuracy(lambda c: c) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Readers


def _img(path, color=(200, 30, 30), size=(16, 16), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def test_emoset_reader_on_synth(synth_dir):
    ds = open_dataset(synth_dir)
    assert ds.format == "emoset" and ds.classes == EMOSET_EMOTIONS
    assert len(ds.split("train")) == 320 and all(s.scene and s.objects for s in ds.split("train"))
    scenes, objects = ds.vocabularies()
    assert set(scenes) <= set(SCENES) and set(objects) <= set(OBJECTS)


def test_emoset_four_element_entries_and_missing_attributes(tmp_path):
    root = tmp_path / "emoset"
    _img(root / "image/awe/awe_00001.jpg")
    _img(root / "image/fear/fear_00001.jpg")
    (root / "annotation/awe").mkdir(parents=True)
    (root / "annotation/awe/awe_00001.json").write_text(json.dumps({"emotion": "awe", "object": ["tree"]}))
    entries = [
        ["awe", "awe_00001", "image/awe/awe_00001.jpg", "annotation/awe/awe_00001.json"],
        ["fear", "fear_00001", "image/fear/fear_00001.jpg", "annotation/fear/fear_00001.json"],
    ]
    (root / "train.json").write_text(json.dumps(entries))
    ds = open_dataset(root)
    a, f = ds.split("train")
    assert (a.label, a.scene, a.objects) == (1, None, ("tree",))
    assert (f.label, f.scene, f.objects) == (6, None, ())  # annotation file missing: no attributes
    assert any("annotation files missing" in n for n in ds.notes)


@pytest.mark.parametrize(
    "entries, message",
    [
        ([["joy", "image/awe/awe_00001.jpg", "a.json"]], "unknown emotion 'joy'"),
        ([["awe", "image/awe/missing.jpg", "a.json"]], "do not exist"),
        ([["awe"]], "names no image"),
        ([42], "expected \\[emotion, image path"),
    ],
)
def test_emoset_bad_split_files(tmp_path, entries, message):
    root = tmp_path / "emoset"
    _img(root / "image/awe/awe_00001.jpg")
    (root / "train.json").write_text(json.dumps(entries))
    with pytest.raises(DataError, match=message):
        open_dataset(root)


def test_emoset_unparsable_annotation(tmp_path):
    root = tmp_path / "emoset"
    _img(root / "image/awe/awe_00001.jpg")
    (root / "annotation/awe").mkdir(parents=True)
    (root / "annotation/awe/a.json").write_text("{not json")
    (root / "train.json").write_text(json.dumps([["awe", "image/awe/awe_00001.jpg", "annotation/awe/a.json"]]))
    with pytest.raises(DataError, match="a.json is not valid JSON"):
        open_dataset(root)
    (root / "annotation/awe/a.json").write_text(json.dumps({"emotion": "awe", "object": 5}))
    with pytest.raises(DataError, match="'object' must be a name or a list of names, got 5"):
        open_dataset(root)
    (root / "annotation/awe/a.json").write_text(json.dumps({"emotion": "joy", "scene": "beach"}))
    with pytest.raises(DataError, match="says emotion 'joy' but its split file says 'awe'"):
        open_dataset(root)


def test_fi_with_and_without_split_folders(tmp_path):
    fi = tmp_path / "FI"
    for split in ("train", "val", "test"):
        for cls in ("amusement", "sadness"):
            _img(fi / split / cls / f"{cls}_1.jpg")
    ds = open_dataset(fi)
    assert ds.format == "fi" and ds.classes == ("amusement", "sadness")
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 2, "val": 2, "test": 2}

    flat = tmp_path / "FIflat"
    for cls in EMOSET_EMOTIONS:
        for i in range(10):
            _img(flat / cls / f"{i}.jpg")
    ds = open_dataset(flat)
    assert ds.format == "fi" and ds.classes == EMOSET_EMOTIONS
    sizes = {s: len(v) for s, v in ds.splits.items()}
    assert sizes == {"train": 64, "val": 4, "test": 12}
    assert open_dataset(flat).splits["test"] == ds.splits["test"]  # the derived split is fixed
    paths = [s.path for v in ds.splits.values() for s in v]
    assert len(set(paths)) == 80


def test_emotionroi(tmp_path):
    root = tmp_path / "EmotionROI"
    for cls in ("anger", "joy", "surprise"):
        for i in range(10):
            _img(root / "images" / cls / f"{i}.jpg")
    split = root / "training_testing_split"
    split.mkdir()
    (split / "training.txt").write_text(
        "\n".join(f"{c}/{i}.jpg" for c in ("anger", "joy", "surprise") for i in range(7))
    )
    (split / "testing.txt").write_text(
        "\n".join(f"{c}/{i}.jpg" for c in ("anger", "joy", "surprise") for i in (7, 8, 9))
    )
    ds = open_dataset(root)
    assert ds.format == "emotionroi" and ds.classes == ("anger", "joy", "surprise")
    assert len(ds.split("test")) == 9 and len(ds.split("train")) + len(ds.split("val")) == 21
    (split / "testing.txt").write_text("anger/99.jpg\n")
    with pytest.raises(DataError, match="testing.txt:1: image .* does not exist"):
        open_dataset(root)


def test_twitter_folds_partition_the_data(tmp_path):
    root = tmp_path / "twitter"
    for cls in ("negative", "positive"):
        for i in range(25):
            _img(root / cls / f"{i}.jpg")
    tests = []
    for fold in range(5):
        ds = open_dataset(root, fold=fold)
        assert ds.format == "twitter" and ds.classes == ("negative", "positive")
        test = {s.path for s in ds.split("test")}
        rest = {s.path for s in ds.split("train") + ds.split("val")}
        assert not test & rest and len(test | rest) == 50
        tests.append(test)
    assert set().union(*tests) == {p for p in root.rglob("*.jpg")}
    assert sum(len(t) for t in tests) == 50
    with pytest.raises(DataError, match="fold must be 0–4"):
        open_dataset(root, fold=5)


def test_generic_folder_with_split_lists(tmp_path):
    root = tmp_path / "mine"
    for cls in ("calm", "tense"):
        for i in range(4):
            _img(root / cls / f"{i}.png", fmt="PNG")
    (root / "train.txt").write_text("calm/0.png\ncalm/1.png\ntense/0.png 1\ntense/1.png\n# comment\n")
    (root / "test.txt").write_text("calm/2.png\ntense/2.png\n")
    ds = open_dataset(root)
    assert ds.format == "folder" and ds.classes == ("calm", "tense")
    assert len(ds.split("test")) == 2 and len(ds.split("train")) + len(ds.split("val")) == 4
    with pytest.raises(DataError, match="no split 'holdout'"):
        ds.split("holdout")


def test_missing_and_empty_datasets(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        open_dataset(tmp_path / "empty")
    assert detect_format(tmp_path / "empty") == "folder"
    emoset = tmp_path / "emoset"
    _img(emoset / "image/awe/awe_00001.jpg")
    (emoset / "train.json").write_text(json.dumps([["awe", "image/awe/awe_00001.jpg"]]))
    (emoset / "test.json").write_text("[]")
    with pytest.raises(DataError, match="split 'test' of dataset .* is empty"):
        open_dataset(emoset).split("test")


# ---------------------------------------------------------------------------------------------------------------
# Robust image loading


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    im.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "o.jpg").size == (10, 20)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("P", (8, 8), 3),
        lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
        lambda: Image.new("LA", (8, 8), (100, 255)),
        lambda: Image.new("L", (8, 8), 100),
        lambda: Image.new("1", (8, 8), 1),
        lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)),
        lambda: Image.fromarray(np.full((8, 8), 65535, np.uint16)),
    ],
    ids=["palette", "rgba", "la", "grey", "bilevel", "cmyk", "16bit"],
)
def test_odd_modes_become_rgb(tmp_path, make):
    im = make()
    path = tmp_path / ("x.tif" if im.mode == "CMYK" else "x.png")
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (8, 8)
    arr = np.asarray(out)
    if im.mode == "I;16" or im.mode.startswith("I"):
        assert arr.min() == 255  # 16-bit white stays white (not clipped garbage)
    if im.mode == "RGBA":
        assert arr.min() == 255  # fully transparent over white
    if im.mode == "CMYK":
        assert tuple(arr[0, 0]) == (255, 0, 0)
        im.save(tmp_path / "x.jpg")  # CMYK JPEGs (print workflows) too
        jpeg = np.asarray(load_image(tmp_path / "x.jpg")).astype(int)
        assert load_image(tmp_path / "x.jpg").mode == "RGB" and abs(jpeg[0, 0] - (255, 0, 0)).max() < 40


def test_bad_files_are_reported_with_their_path(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:200])
    for name, message in (
        ("empty.jpg", "empty"),
        ("text.jpg", "not an image"),
        ("cut.jpg", "truncated"),
        ("gone.jpg", "not found"),
    ):
        with pytest.raises(DataError, match=message) as err:
            load_image(tmp_path / name)
        assert name in str(err.value)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(load_image(tmp_path / "a.gif"))[0, 0]) == (255, 0, 0)


# ---------------------------------------------------------------------------------------------------------------
# torch side


def test_dataset_items_skip_bad_images_and_are_reproducible(synth_dir, tmp_path):
    ds = open_dataset(synth_dir)
    samples = ds.split("train")[:6]
    bad = _img(tmp_path / "bad.jpg")
    bad.write_bytes(b"garbage")
    samples = [*samples[:3], type(samples[0])(bad, 0), *samples[3:]]
    scenes, objects = ds.vocabularies()
    data = EmotionImageDataset(samples, ClipTransform(32, augment=True), scenes, objects, seed=5)
    batch = collate([data[i] for i in range(len(data))])
    assert (
        batch["pixel_values"].shape == (6, 3, 32, 32) and batch["bad"][0][0] == 3 and "bad.jpg" in batch["bad"][0][1]
    )
    assert (batch["scene_id"] >= 0).all() and (batch["object_id"] >= 0).all()
    again = collate([data[i] for i in range(len(data))])
    assert torch.equal(batch["pixel_values"], again["pixel_values"])
    data.begin_epoch(1)
    other = collate([data[i] for i in range(len(data))])
    assert not torch.equal(batch["pixel_values"], other["pixel_values"])  # new epoch, new augmentation
    strict = EmotionImageDataset(samples, ClipTransform(32), on_bad_image="error")
    with pytest.raises(DataError, match="bad.jpg"):
        strict[3]


def test_epoch_sampler_is_a_reproducible_permutation():
    s = EpochSampler(50, seed=1)
    first = list(s)
    assert sorted(first) == list(range(50)) and list(s) == first
    s.begin_epoch(1)
    second = list(s)
    assert second != first and sorted(second) == list(range(50))
    s.begin_epoch(1, skip=20)
    assert list(s) == second[20:] and len(s) == 30


def test_decompression_bombs_are_refused_and_tiny_images_work(tmp_path):
    Image.new("1", (10_000, 9_000)).save(tmp_path / "bomb.png")  # 90 M pixels in a few kB
    with pytest.raises(DataError, match="more pixels than the limit"):
        load_image(tmp_path / "bomb.png")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(tmp_path / "dot.png")
    pixels = ClipTransform(32)(load_image(tmp_path / "dot.png"))
    assert pixels.shape == (3, 32, 32) and torch.isfinite(pixels).all()


def test_reduced_scale_jpeg_decoding_never_upsamples_a_view(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (1333, 1000), "gray").save(path)
    # joint training: CLIP sees 224 px, the diffusion model 512 px; the decode must serve the larger one
    dataset = EmotionImageDataset([Sample(path, 0)], ClipTransform(224), diffusion_size=512)
    assert min(load_image(path, dataset.draft_size).size) >= 1.3 * 512
    assert dataset[0]["diffusion_pixels"].shape == (3, 512, 512)
    # a 64 px model: decoded at 1/8 scale, still above 1.3 × 64
    small = load_image(path, draft_size(64))
    assert small.size == (167, 125) and min(small.size) >= 1.3 * 64
    assert load_image(path).size == (1333, 1000)
