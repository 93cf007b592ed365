"""An attribute judge for the built-in dataset: does a generated image carry the emotion it was asked for?

METHOD §7's Emo-A reads images through a head on CLIP image features. On the built-in dataset that head sits on
the tiny stand-in CLIP (about 54 % on real test images), so a low Emo-A could mean a poor generator or a poor
judge. The built-in dataset's emotion is a known rule of three visible cues (:func:`uniemo.data.synth.emotion_of`:
palette → valence, an emotional object or else the scene → which emotion of that valence). The
:class:`AttributeJudge` is a small CNN with three heads — palette, scene and main object — trained on the real
training images at the generated images' resolution; the rule turns what it reads into an emotion. Its accuracy
on real test images is the ceiling a generator can be read at (:func:`judge_real_accuracy`).

It exists for the built-in dataset only: on EmoSet use METHOD §7's Emo-A.

Shape legend:
    N    images
    S    the judge's input side (32: the stand-in's generation resolution)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from uniemo.checkpoint import atomic_directory
from uniemo.constants import POSITIVE_EMOTIONS
from uniemo.data.datasets import open_dataset, to_signed_tensor
from uniemo.data.images import load_image
from uniemo.data.synth import OBJECTS, PALETTES, SCENES, caption_of, emotion_of
from uniemo.errors import CheckpointError, DataError

ATTRIBUTES: dict[str, tuple[str, ...]] = {"palette": PALETTES, "scene": SCENES, "object": OBJECTS}
_KIND = "uniemo-attribute-judge"
#: The judge shipped with uniemo: :func:`train_attribute_judge` (1000 steps, seed 0) on the training split of the
#: built-in dataset as ``uniemo synth`` writes it by default; its model.json "trained_on" holds that dataset's
#: generator record (info.json), so :func:`judge_for` uses it only on that very dataset.
BUILTIN_JUDGE = Path(__file__).resolve().parents[1] / "assets" / "judge"


class AttributeJudge(nn.Module):
    """Three-headed CNN: (N, 3, S, S) pixels in [-1, 1] → palette, scene and main-object logits.

    Args:
        size: input side S (images are resized to it with a box filter, as generated images are read).
    """

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        self.size = size
        #: the generator record of the dataset it learned from (see :func:`judge_for`), when known
        self.trained_on: dict[str, Any] | None = None
        self.sizes = [len(v) for v in ATTRIBUTES.values()]
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(128 * 4, sum(self.sizes)),
        )  # fmt: skip

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """pixels (N, 3, S, S) → name → logits (N, V_name)."""
        logits = self.net(pixels).split(self.sizes, dim=1)
        return dict(zip(ATTRIBUTES, logits))

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images → (N, 3, S, S) in [-1, 1]."""
        box = Image.Resampling.BOX
        return torch.stack([to_signed_tensor(im.convert("RGB").resize((self.size, self.size), box)) for im in images])

    @torch.no_grad()
    def read(self, images: Sequence[Image.Image], batch_size: int = 256) -> dict[str, list[str]]:
        """The palette, scene and main object the judge sees in each image (names, N each)."""
        self.eval()
        x = self.pixels(images)
        out: dict[str, list[str]] = {name: [] for name in ATTRIBUTES}
        for start in range(0, len(x), batch_size):
            for name, logits in self(x[start : start + batch_size]).items():
                out[name] += [ATTRIBUTES[name][i] for i in logits.argmax(1).tolist()]
        return out

    def emotions(self, images: Sequence[Image.Image]) -> list[str]:
        """The emotion each image shows by the built-in dataset's rule applied to what the judge reads."""
        return rule_emotions(self.read(images))

    def save_pretrained(
        self, directory: str | Path, trained_on: Mapping[str, Any] | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """Writes model.safetensors (in ``dtype`` if given) and model.json (with ``trained_on``, the generator
        record of the dataset it learned from, when given)."""
        from safetensors.torch import save_file

        state = {k: v.to(dtype or v.dtype).contiguous() for k, v in self.state_dict().items()}
        meta = {"kind": _KIND, "size": self.size, **({"trained_on": dict(trained_on)} if trained_on else {})}
        with atomic_directory(directory) as tmp:
            save_file(state, str(tmp / "model.safetensors"))
            (tmp / "model.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AttributeJudge:
        """Raises CheckpointError when ``directory`` is not a saved attribute judge."""
        from safetensors.torch import load_file

        path = Path(directory)
        try:
            meta = json.loads((path / "model.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise CheckpointError(f"{path} is not an attribute judge (no readable model.json)") from None
        if meta.get("kind") != _KIND:
            raise CheckpointError(f"{path} is not an attribute judge (kind {meta.get('kind')!r})")
        judge = cls(int(meta["size"]))
        judge.load_state_dict({k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()})
        judge.trained_on = meta.get("trained_on")
        return judge.eval()


def rule_emotions(seen: Mapping[str, Sequence[str]]) -> list[str]:
    """The built-in dataset's rule (:func:`~uniemo.data.synth.emotion_of`) on read palettes, scenes and objects."""
    return [emotion_of(s, o, p) for p, s, o in zip(seen["palette"], seen["scene"], seen["object"])]


def _attribute_split(root: Path, split: str) -> tuple[list[Path], dict[str, list[int]], list[int]]:
    """Image paths, attribute indices (palette, scene, first object) and emotion labels of a built-in split."""
    if not (root / f"{split}.json").is_file() or not (root / "info.json").is_file():
        raise DataError(f"{root} is not the built-in dataset (no {split}.json / info.json): see `uniemo synth`")
    dataset = open_dataset(root)
    entries = json.loads((root / f"{split}.json").read_text())
    paths, labels, emotions = [], {name: [] for name in ATTRIBUTES}, []
    for entry in entries:
        ann = json.loads((root / entry[2]).read_text())
        if "palette" not in ann:
            raise DataError(f"{root / entry[2]} has no 'palette': the attribute judge needs the built-in dataset")
        paths.append(root / entry[1])
        labels["palette"].append(PALETTES.index(ann["palette"]))
        labels["scene"].append(SCENES.index(ann["scene"]))
        objects = ann["object"] if isinstance(ann["object"], list) else [ann["object"]]
        labels["object"].append(OBJECTS.index(objects[0]))
        emotions.append(dataset.classes.index(entry[0]))
    return paths, labels, emotions


def train_attribute_judge(
    root: str | Path, steps: int = 1500, size: int = 32, seed: int = 0, batch_size: int = 128
) -> AttributeJudge:
    """Trains the judge on the built-in dataset's training split (annotated palette, scene and first object).

    Raises:
        DataError: ``root`` is not the built-in dataset (its annotations hold no palette).
    """
    root = Path(root)
    paths, labels, _ = _attribute_split(root, "train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        judge = AttributeJudge(size)
    x = judge.pixels([load_image(p) for p in paths])
    y = {name: torch.tensor(v) for name, v in labels.items()}
    optimizer = torch.optim.Adam(judge.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    judge.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=generator)
        logits = judge(x[idx])
        loss = sum(F.cross_entropy(logits[name], y[name][idx]) for name in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return judge.eval()


def generator_record(root: str | Path) -> dict[str, Any] | None:
    """The "generator" record of a built-in dataset's info.json (None for any other dataset)."""
    try:
        return json.loads((Path(root) / "info.json").read_text()).get("generator")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def judge_for(root: str | Path, steps: int = 1000) -> tuple[AttributeJudge, str]:
    """A judge for the built-in dataset at ``root`` and where it came from ("shipped" or "trained"): the shipped
    :data:`BUILTIN_JUDGE` when ``root`` is the very dataset it was trained on (same generator record: seed, sizes,
    rule), else one trained on ``root``'s training split for ``steps`` steps.

    Raises:
        DataError: ``root`` is not the built-in dataset.
    """
    record = generator_record(root)
    if record is not None and (BUILTIN_JUDGE / "model.json").is_file():
        shipped = AttributeJudge.from_pretrained(BUILTIN_JUDGE)
        if shipped.trained_on == {**record, "judge_steps": steps}:
            return shipped, "shipped"
    judge = train_attribute_judge(root, steps=steps)
    judge.trained_on = {**record, "judge_steps": steps} if record else None
    return judge, "trained"


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of a binomial proportion hits / n."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference_interval(p1: float, n1: int, p2: float, n2: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % (by default) normal-approximation interval of the difference p1 − p2 of two proportions measured on
    n1 and n2 independent samples (on the same samples, a paired comparison would be narrower: this one is the
    conservative side)."""
    half = z * math.sqrt(p1 * (1 - p1) / max(1, n1) + p2 * (1 - p2) / max(1, n2))
    return (p1 - p2 - half, p1 - p2 + half)


def valence(emotion: str) -> int:
    """0 for a positive emotion (the project's sentiment map, :data:`~uniemo.constants.POSITIVE_EMOTIONS`), 1 else."""
    return int(emotion not in POSITIVE_EMOTIONS)


def judge_images(
    judge: AttributeJudge, images: Mapping[str, Sequence[Image.Image]], classes: Sequence[str]
) -> dict[str, Any]:
    """Emo-A by the judge: images grouped by target emotion → the share read as that emotion (with its N and a
    95 % Wilson interval), per emotion, 2-class (valence) agreement, and the share of each read emotion."""
    hits = n = valence_hits = 0
    per_emotion, read_as = {}, {}
    for target, group in images.items():
        if not group:
            continue
        read = judge.emotions(list(group))
        ok = sum(r == target for r in read)
        per_emotion[target] = ok / len(read)
        read_as[target] = {e: read.count(e) / len(read) for e in classes}
        hits, n = hits + ok, n + len(read)
        valence_hits += sum(valence(r) == valence(target) for r in read)
    return {
        "emo_a": hits / max(1, n),
        "interval": wilson_interval(hits, n),
        "n": n,
        "valence": valence_hits / max(1, n),
        "valence_interval": wilson_interval(valence_hits, n),
        "per_emotion": per_emotion,
        "read_as": read_as,
        "chance": 1 / len(classes),
    }


def judge_real_accuracy(judge: AttributeJudge, root: str | Path, split: str = "test") -> dict[str, Any]:
    """The judge on real images of ``split`` (the ceiling): emotion accuracy against the labels (label noise
    included), valence accuracy and each attribute's accuracy, all with N."""
    root = Path(root)
    paths, labels, emotions = _attribute_split(root, split)
    images = [load_image(p) for p in paths]
    classes = open_dataset(root).classes
    seen = judge.read(images)
    read = rule_emotions(seen)
    truth = [classes[e] for e in emotions]
    hits = sum(r == t for r, t in zip(read, truth))
    result: dict[str, Any] = {
        "emotion": hits / len(truth),
        "interval": wilson_interval(hits, len(truth)),
        "valence": float(np.mean([valence(r) == valence(t) for r, t in zip(read, truth)])),
        "n": len(truth),
    }
    for name, values in ATTRIBUTES.items():
        result[name] = float(np.mean([values.index(s) == y for s, y in zip(seen[name], labels[name])]))
    return result


def emotion_triples(emotion: str) -> list[tuple[str, str, str]]:
    """Every (palette, scene, main object) the built-in dataset's rule maps to ``emotion``."""
    return [(p, s, o) for p in PALETTES for s in SCENES for o in OBJECTS if emotion_of(s, o, p) == emotion]


def oracle_captions(emotion: str, count: int) -> list[str]:
    """``count`` captions cycling through ``emotion``'s own triples ("a stormy beach with a tent", …) in a fixed
    shuffled order: what a text-to-image stand-in is asked to draw when told the cues of the emotion outright."""
    triples = emotion_triples(emotion)
    order = np.random.default_rng(0).permutation(len(triples))  # fixed: a short list still spans palettes and scenes
    return [caption_of(s, (o,), p) for p, s, o in (triples[order[i % len(triples)]] for i in range(count))]


@torch.no_grad()
def oracle_images(
    diffusion: Any,
    classes: Sequence[str],
    per_emotion: int,
    steps: int,
    guidance: float,
    seed: int = 0,
    size: int = 32,
) -> dict[str, list[Image.Image]]:
    """The oracle row: for each emotion, ``per_emotion`` images the diffusion pipeline draws from the emotion's own
    captions (:func:`oracle_captions`), image i with noise seeded ``seed + i`` as the UniEmo pipeline seeds it."""
    out = {}
    for emotion in classes:
        captions, images = oracle_captions(emotion, per_emotion), []
        for start in range(0, per_emotion, 16):
            batch = captions[start : start + 16]
            gens = [torch.Generator().manual_seed(seed + start + i + 1_000_000) for i in range(len(batch))]
            images += diffusion(
                batch, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size, generator=gens
            ).images
        out[emotion] = images
    return out
