"""Emotion datasets as they lie on users' disks (METHOD §1), and the torch Dataset that feeds training.

Readers:
    * ``emoset``: ``info.json``, ``{train,val,test}.json`` (entries of 3 or 4 elements), ``image/<emotion>/…``,
      ``annotation/<emotion>/….json`` (``emotion``, ``scene``, ``object`` list; any attribute may be missing).
    * ``fi``: ``{train,val,test}/<class>/*.jpg``, or ``<class>/*.jpg`` split 80/5/15 at random.
    * ``emotionroi``: ``images/<class>/*.jpg`` and ``training_testing_split/{training,testing}.txt``; val is
      10 % of training.
    * ``twitter``: ``{negative,positive}/*.jpg``, 5-fold cross-validation (``fold`` picks the test fold).
    * ``folder``: any ``<class>/*.jpg`` (or ``<split>/<class>/*.jpg``), with optional ``<split>.txt`` lists.

Derived splits use a fixed seed, so they are the same in every run and on every machine.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uniemo.constants import EMOSET_EMOTIONS, EMOTIONROI_EMOTIONS, SENTIMENTS
from uniemo.data.images import draft_size, is_image_file, load_image
from uniemo.data.transforms import ClipTransform
from uniemo.errors import DataError

logger = logging.getLogger(__name__)

FORMATS = ("emoset", "fi", "emotionroi", "twitter", "folder")
SPLIT_SEED = 20240101  # fixed: derived splits must not change with a run's seed


@dataclass(frozen=True)
class Sample:
    """One image: its path, class index and (EmoSet only) scene name and object names."""

    path: Path
    label: int
    scene: str | None = None
    objects: tuple[str, ...] = ()


@dataclass
class EmotionDataset:
    """A dataset on disk: its class names (index order) and its splits.

    Attributes:
        root: the dataset directory.
        format: which reader read it.
        classes: class names in label-index order.
        splits: split name → samples.
        notes: what the reader derived or skipped (shown to the user).
    """

    root: Path
    format: str
    classes: tuple[str, ...]
    splits: dict[str, list[Sample]]
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        """The samples of split ``name``.

        Raises:
            DataError: the split does not exist or is empty.
        """
        if name not in self.splits:
            raise DataError(
                f"dataset {self.root} ({self.format}) has no split '{name}'; it has: {', '.join(self.splits)}"
            )
        if not self.splits[name]:
            raise DataError(f"split '{name}' of dataset {self.root} is empty")
        return self.splits[name]

    def vocabularies(self, split: str = "train") -> tuple[list[str], list[str]]:
        """Sorted scene and object names that occur in ``split`` (the attribute vocabularies)."""
        samples = self.splits.get(split, [])
        scenes = sorted({s.scene for s in samples if s.scene})
        objects = sorted({o for s in samples for o in s.objects})
        return scenes, objects


# --------------------------------------------------------------------------------------------------------------
# Detection and class order


def detect_format(root: Path) -> str:
    """Guesses a dataset's layout from its files (see the module docstring)."""
    if (root / "info.json").is_file() or any((root / f"{s}.json").is_file() for s in ("train", "val", "test")):
        return "emoset"
    if (root / "images").is_dir() and (root / "training_testing_split").is_dir():
        return "emotionroi"
    class_dirs = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    if class_dirs == set(SENTIMENTS):
        return "twitter"
    if {"train", "test"} <= class_dirs:
        return "fi" if _class_dirs(root / "train") <= set(EMOSET_EMOTIONS) else "folder"
    if class_dirs and class_dirs <= set(EMOSET_EMOTIONS):
        return "fi"
    return "folder"


def _class_dirs(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")} if path.is_dir() else set()


def class_order(names: set[str]) -> tuple[str, ...]:
    """Known label sets keep their canonical order (EmoSet's, EmotionROI's, sentiments); others sort."""
    for canonical in (EMOSET_EMOTIONS, EMOTIONROI_EMOTIONS, SENTIMENTS):
        if names <= set(canonical):
            return tuple(c for c in canonical if c in names) if names != set(canonical) else canonical
    return tuple(sorted(names))


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def _random_split(items: list[Any], fractions: tuple[float, ...], seed: int = SPLIT_SEED) -> list[list[Any]]:
    """Splits ``items`` by ``fractions`` (the first part takes the rest; every other part at least one item)."""
    n = len(items)
    order = np.random.default_rng(seed).permutation(n)
    sizes = [max(1, round(f * n)) if n > len(fractions) else round(f * n) for f in fractions[1:]]
    bounds = np.cumsum([0, n - sum(sizes), *sizes])
    return [[items[i] for i in order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------------------------------------------
# Readers


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} is not valid JSON ({err})") from None


def _emoset_entry(entry: Any, split: str, index: int) -> tuple[str, str, str | None]:
    """(emotion, image path, annotation path or None) from a 3- or 4-element split entry."""
    if not isinstance(entry, (list, tuple)) or not entry or not all(isinstance(x, str) for x in entry):
        raise DataError(f"{split}.json entry {index} is {entry!r}; expected [emotion, image path, annotation path]")
    image = next((x for x in entry[1:] if is_image_file(x)), None)
    annotation = next((x for x in entry[1:] if x.endswith(".json")), None)
    if image is None:
        raise DataError(f"{split}.json entry {index} ({entry!r}) names no image file")
    return entry[0], image, annotation


def _read_annotation(path: Path, emotion: str) -> tuple[str | None, tuple[str, ...], bool]:
    """(scene, objects, found) of one EmoSet annotation file; missing attributes are None / ().

    Raises:
        DataError: not a JSON object, an ``object`` that is not a name or list, or an ``emotion`` field that
            contradicts the split file's label for the image.
    """
    if not path.is_file():
        return None, (), False
    ann = _read_json(path, "annotation")
    if not isinstance(ann, dict):
        raise DataError(f"annotation {path} must be a JSON object, got {type(ann).__name__}")
    stated = ann.get("emotion")
    if stated is not None and stated != emotion:
        raise DataError(
            f"annotation {path} says emotion {stated!r} but its split file says {emotion!r}; fix one of them"
        )
    scene = ann.get("scene")
    scene = scene if isinstance(scene, str) and scene.strip() else None
    objects = ann.get("object") or ()
    if isinstance(objects, str):
        objects = (objects,)
    if not isinstance(objects, (list, tuple)):
        raise DataError(f"annotation {path}: 'object' must be a name or a list of names, got {objects!r}")
    objects = tuple(o for o in objects if isinstance(o, str) and o.strip())
    return scene, objects, True


def read_emoset(root: Path) -> EmotionDataset:
    """Reads EmoSet-118K's layout (or the built-in dataset, which shares it)."""
    classes = EMOSET_EMOTIONS
    info_path = root / "info.json"
    if info_path.is_file():
        info = _read_json(info_path, "info.json")
        label2idx = info.get("label2idx") if isinstance(info, dict) else None
        if isinstance(label2idx, dict) and label2idx:
            classes = tuple(name for name, _ in sorted(label2idx.items(), key=lambda kv: kv[1]))
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    notes: list[str] = []
    for split_file in sorted(root.glob("*.json")):
        split = split_file.stem
        if split == "info":
            continue
        entries = _read_json(split_file, "split file")
        if not isinstance(entries, list):
            continue  # not a split file
        parsed = [_emoset_entry(e, split, i) for i, e in enumerate(entries)]
        for i, (emotion, _, _) in enumerate(parsed):
            if emotion not in index:
                raise DataError(
                    f"{split_file.name} entry {i}: unknown emotion '{emotion}'; expected one of {', '.join(classes)}"
                )
        missing = [img for _, img, _ in parsed if not (root / img).is_file()]
        if missing:
            raise DataError(
                f"{split_file.name} names {len(missing)} image(s) that do not exist, e.g. {root / missing[0]}; "
                "restore the images or remove those entries"
            )
        with ThreadPoolExecutor(8) as pool:
            anns = list(pool.map(lambda e: _read_annotation(root / e[2], e[0]) if e[2] else (None, (), False), parsed))
        absent = sum(1 for _, _, found in anns if not found)
        if absent:
            notes.append(
                f"{split}: {absent} of {len(parsed)} annotation files missing (no scene/object loss for them)"
            )
        splits[split] = [
            Sample(root / img, index[emotion], scene, objects)
            for (emotion, img, _), (scene, objects, _) in zip(parsed, anns)
        ]
    if not splits:
        raise DataError(f"{root} has no split files (train.json, val.json, test.json); is it an EmoSet directory?")
    return EmotionDataset(root, "emoset", classes, splits, notes)


def _samples_from_class_dirs(folder: Path, classes: tuple[str, ...]) -> list[Sample]:
    index = {c: i for i, c in enumerate(classes)}
    return [Sample(p, index[c]) for c in classes for p in _list_images(folder / c)]


def _read_list(list_file: Path, classes: tuple[str, ...], base: Path) -> list[Sample]:
    """Reads a split list: one ``<class>/<file>`` path (relative to ``base``) a line, optional label after it."""
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rel = line.split()[0]
        path = base / rel
        cls = Path(rel).parts[0] if len(Path(rel).parts) > 1 else None
        if cls not in index:
            raise DataError(f"{list_file}:{number}: '{rel}' is not under a class folder ({', '.join(classes)})")
        if not path.is_file():
            raise DataError(f"{list_file}:{number}: image {path} does not exist")
        samples.append(Sample(path, index[cls]))
    return samples


def read_folder(root: Path, format: str = "folder", fold: int = 0) -> EmotionDataset:
    """Reads FI, Twitter I/II and generic ``<class>/*.jpg`` folders (see the module docstring)."""
    notes: list[str] = []
    split_dirs = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if "train" in split_dirs:
        classes = class_order(set().union(*(_class_dirs(root / s) for s in split_dirs)))
        splits = {s: _samples_from_class_dirs(root / s, classes) for s in split_dirs}
        if "val" not in splits:
            splits["train"], splits["val"] = _random_split(splits["train"], (0.95, 0.05))
            notes.append("no val/ folder: val is a fixed random 5 % of train")
        return EmotionDataset(root, format, classes, splits, notes)
    classes = class_order(_class_dirs(root))
    if not classes:
        raise DataError(f"{root} holds no class folders (<class>/*.jpg); is it the dataset's root directory?")
    lists = {s: root / f"{s}.txt" for s in ("train", "val", "test") if (root / f"{s}.txt").is_file()}
    if "train" in lists:
        splits = {s: _read_list(path, classes, root) for s, path in lists.items()}
        if "val" not in splits:
            splits["train"], splits["val"] = _random_split(splits["train"], (0.9, 0.1))
            notes.append("no val.txt: val is a fixed random 10 % of train")
        return EmotionDataset(root, format, classes, splits, notes)
    samples = _samples_from_class_dirs(root, classes)
    if format == "twitter":
        if not 0 <= fold < 5:
            raise DataError(f"Twitter uses 5-fold cross-validation: data.fold must be 0–4, got {fold}")
        folds = [[] for _ in range(5)]
        for label in range(len(classes)):  # stratified folds
            members = [s for s in samples if s.label == label]
            for rank, i in enumerate(np.random.default_rng(SPLIT_SEED + label).permutation(len(members))):
                folds[rank % 5].append(members[i])
        train = [s for k, part in enumerate(folds) if k != fold for s in part]
        train, val = _random_split(train, (0.9, 0.1))
        notes.append(f"5-fold cross-validation, fold {fold} is test; val is 10 % of the other folds")
        return EmotionDataset(root, format, classes, {"train": train, "val": val, "test": folds[fold]}, notes)
    train, val, test = _random_split(samples, (0.8, 0.05, 0.15))
    notes.append("no split given: fixed random 80/5/15 split")
    return EmotionDataset(root, format, classes, {"train": train, "val": val, "test": test}, notes)


def read_emotionroi(root: Path) -> EmotionDataset:
    """Reads EmotionROI: ``images/<class>/`` and ``training_testing_split/{training,testing}.txt``."""
    images = root / "images"
    classes = class_order(_class_dirs(images))
    split_dir = root / "training_testing_split"
    train = _read_list(split_dir / "training.txt", classes, images)
    test = _read_list(split_dir / "testing.txt", classes, images)
    train, val = _random_split(train, (0.9, 0.1))
    notes = ["val is a fixed random 10 % of training.txt"]
    return EmotionDataset(root, "emotionroi", classes, {"train": train, "val": val, "test": test}, notes)


def open_dataset(root: str | Path, format: str = "auto", fold: int = 0) -> EmotionDataset:
    """Reads the dataset at ``root`` in the given (or detected) layout.

    Raises:
        DataError: the directory is missing, empty, or not in the named layout.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset directory not found: {root}")
    if format == "auto":
        format = detect_format(root)
    if format not in FORMATS:
        raise DataError(f"unknown dataset format '{format}'; choose one of auto, {', '.join(FORMATS)}")
    if format == "emoset":
        dataset = read_emoset(root)
    elif format == "emotionroi":
        dataset = read_emotionroi(root)
    else:
        dataset = read_folder(root, format, fold)
    if not any(dataset.splits.values()):
        raise DataError(f"dataset {root} holds no images")
    return dataset


# --------------------------------------------------------------------------------------------------------------
# torch side


class EpochSampler(torch.utils.data.Sampler[int]):
    """A shuffled order that depends only on (seed, epoch): reproducible, and resumable mid-epoch by ``skip``.

    The method is deliberately not called ``set_epoch``: accelerate calls that with its own loader-iteration
    counter, which restarts at 0 in a resumed run.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    def begin_epoch(self, epoch: int, skip: int = 0) -> None:
        """Selects epoch ``epoch``'s order, leaving out its first ``skip`` samples (already trained on)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return max(0, self.size - self.skip)

    def __iter__(self):
        order = range(self.size)
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.size).tolist()
        return iter(list(order)[self.skip :])


class EmotionImageDataset(torch.utils.data.Dataset):
    """Samples → dicts of tensors for training and evaluation.

    Each item holds ``pixel_values`` (3, S, S), ``label``, ``scene_id`` and ``object_id`` (indices into the
    attribute vocabularies, -1 when missing; one object is drawn per image per epoch from its list) and
    ``index``; with ``diffusion_size`` R also ``diffusion_pixels`` (3, R, R) in [-1, 1] (shortest-side resize and
    centre crop, the view a diffusion model's VAE encodes). Randomness (augmentation, the object draw) comes
    from a generator seeded by (seed, epoch, index), so it does not depend on worker processes and is
    reproduced on resume. An unreadable image gives
    ``{"bad": message, "index": index}`` with ``on_bad_image="skip"`` (:func:`collate` drops and counts it),
    or raises.
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: ClipTransform,
        scene_vocab: list[str] | None = None,
        object_vocab: list[str] | None = None,
        seed: int = 0,
        on_bad_image: str = "skip",
        diffusion_size: int | None = None,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.diffusion_view = ClipTransform(diffusion_size) if diffusion_size else None
        self.draft_size = draft_size(transform.image_size, diffusion_size)
        self.scene_index = {n: i for i, n in enumerate(scene_vocab or [])}
        self.object_index = {n: i for i, n in enumerate(object_vocab or [])}
        self.seed = seed
        self.epoch = 0
        self.on_bad_image = on_bad_image

    def begin_epoch(self, epoch: int) -> None:
        """Selects the epoch whose augmentation and object draws ``__getitem__`` reproduces."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        try:
            # A JPEG is decoded at reduced scale when both views (CLIP's, the diffusion model's) still downsample.
            image = load_image(sample.path, draft_size=self.draft_size)
        except DataError as err:
            if self.on_bad_image == "error":
                raise
            return {"bad": str(err), "index": index}
        objects = [self.object_index[o] for o in sample.objects if o in self.object_index]
        item = {
            "pixel_values": self.transform(image, rng),
            "label": sample.label,
            "scene_id": self.scene_index.get(sample.scene, -1) if sample.scene else -1,
            "object_id": objects[int(rng.integers(len(objects)))] if objects else -1,
            "index": index,
        }
        if self.diffusion_view is not None:
            item["diffusion_pixels"] = to_signed_tensor(self.diffusion_view.view(image))
        return item


def per_class(samples: list[Sample], count: int) -> list[Sample]:
    """At most ``count`` samples of each class, the first ones in the split's order (the split order is kept)."""
    taken: dict[int, int] = {}
    out = []
    for sample in samples:
        if taken.get(sample.label, 0) < count:
            taken[sample.label] = taken.get(sample.label, 0) + 1
            out.append(sample)
    return out


def to_signed_tensor(image: Any) -> torch.Tensor:
    """A PIL RGB image → (3, H, W) float tensor in [-1, 1] (what a Stable Diffusion VAE encodes)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks good items; ``bad`` lists (index, message) of the skipped ones."""
    good = [it for it in items if "bad" not in it]
    batch: dict[str, Any] = {"bad": [(it["index"], it["bad"]) for it in items if "bad" in it]}
    if good:
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in good])
        if "diffusion_pixels" in good[0]:
            batch["diffusion_pixels"] = torch.stack([it["diffusion_pixels"] for it in good])
        for key in ("label", "scene_id", "object_id", "index"):
            batch[key] = torch.tensor([it[key] for it in good], dtype=torch.long)
    return batch


def label_counts(samples: list[Sample], classes: tuple[str, ...]) -> dict[str, int]:
    """Number of samples per class name."""
    counts = Counter(s.label for s in samples)
    return {c: counts.get(i, 0) for i, c in enumerate(classes)}
