"""The built-in dataset: procedurally drawn images in EmoSet's exact layout.

Every image shows one of six **scenes** (large background layouts), one large main **object** (sometimes a
small second one) and is painted in one of four colour **palettes** (the mood). The emotion follows a fixed
rule that needs all three cues:

* the palette gives the valence: ``sunny`` and ``pastel`` are positive (amusement, awe, contentment,
  excitement), ``stormy`` and ``fiery`` negative (anger, disgust, fear, sadness);
* an *emotional* main object (balloon, tent, car) picks which of the four emotions of that valence;
* a *neutral* main object (house, flower, boat) leaves that choice to the scene.

So no single cue names the emotion (the best single cue is right about 1 time in 4), some objects carry
emotion and others are neutral (what the emotional correlation coefficient α measures), and the cues are large
shapes and global colour, which a small diffusion model can reproduce at low resolution. Labels are flipped to
a random other emotion with probability ``label_noise`` (default 5 %), like the disagreement of real
annotators. The classes are balanced by construction.

The layout is EmoSet's: ``info.json``, ``train.json`` / ``val.json`` / ``test.json`` (lists of
``[emotion, "image/<emotion>/<emotion>_NNNNN.jpg", "annotation/<emotion>/<emotion>_NNNNN.json"]``),
``image/<emotion>/…jpg`` and ``annotation/<emotion>/…json`` with ``emotion``, ``scene``, ``object`` (a list),
``brightness`` and ``colorfulness`` (0.0–1.0 in steps of 0.1), plus ``palette``, which EmoSet does not have.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from uniemo.constants import EMOSET_EMOTIONS
from uniemo.errors import DataError

logger = logging.getLogger(__name__)

SCENES: tuple[str, ...] = ("beach", "forest", "mountain", "city", "desert", "lake")
OBJECTS: tuple[str, ...] = ("balloon", "tent", "car", "house", "flower", "boat")
PALETTES: tuple[str, ...] = ("sunny", "pastel", "stormy", "fiery")

#: Palette → valence: 0 positive (emotions 0–3), 1 negative (4–7).
PALETTE_VALENCE: dict[str, int] = {"sunny": 0, "pastel": 0, "stormy": 1, "fiery": 1}
#: Emotional objects name the emotion within the valence (0 → amusement/anger, 2 → contentment/fear, …).
OBJECT_SLOT: dict[str, int | None] = {"balloon": 0, "tent": 2, "car": 3, "house": None, "flower": None, "boat": None}
#: Scenes decide for neutral objects. Three scenes share slot 1 so that the classes stay balanced.
SCENE_SLOT: dict[str, int] = {"beach": 2, "forest": 0, "mountain": 1, "city": 3, "desert": 1, "lake": 1}

# Colours per palette and role: sky/back, ground, accent (scene details), object, object detail.
_PALETTE_COLOURS: dict[str, dict[str, tuple[int, int, int]]] = {
    "sunny": {
        "sky": (120, 190, 255),
        "ground": (245, 200, 90),
        "accent": (255, 140, 30),
        "object": (230, 40, 40),
        "detail": (255, 255, 200),
    },
    "pastel": {
        "sky": (250, 215, 235),
        "ground": (190, 240, 210),
        "accent": (200, 190, 250),
        "object": (110, 150, 230),
        "detail": (255, 250, 250),
    },
    "stormy": {
        "sky": (55, 65, 90),
        "ground": (35, 45, 50),
        "accent": (90, 100, 120),
        "object": (170, 180, 190),
        "detail": (20, 20, 30),
    },
    "fiery": {
        "sky": (120, 20, 15),
        "ground": (40, 10, 10),
        "accent": (230, 90, 10),
        "object": (250, 200, 40),
        "detail": (10, 0, 0),
    },
}


def emotion_of(scene: str, main_object: str, palette: str) -> str:
    """The rule of the built-in dataset (before label noise)."""
    slot = OBJECT_SLOT[main_object]
    if slot is None:
        slot = SCENE_SLOT[scene]
    return EMOSET_EMOTIONS[4 * PALETTE_VALENCE[palette] + slot]


@dataclass
class SynthConfig:
    """Options of :func:`write_synthetic_dataset`."""

    train: int = field(default=4000, metadata={"help": "training images"})
    val: int = field(default=500, metadata={"help": "validation images"})
    test: int = field(default=1000, metadata={"help": "test images"})
    resolution: int = field(default=64, metadata={"help": "image side in pixels"})
    seed: int = field(default=0, metadata={"help": "seed"})
    label_noise: float = field(default=0.05, metadata={"help": "fraction of flipped labels"})
    second_object_prob: float = field(default=0.15, metadata={"help": "share of images with a second, smaller object"})
    jpeg_quality: int = field(default=95, metadata={"help": "JPEG quality"})


def caption_of(scene: str | None, objects: tuple[str, ...], palette: str | None) -> str:
    """The caption of a built-in image: palette, scene and objects; never the emotion."""
    head = " ".join(x for x in (palette, scene) if x) or "scene"
    article = "an" if head[0] in "aeiou" else "a"
    text = f"{article} {head}"
    if objects:
        text += " with a " + " and a ".join(objects)
    return text


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _draw_scene(draw: ImageDraw.ImageDraw, scene: str, size: int, pal: dict, rng: np.random.Generator) -> None:
    s = size
    sky = _jitter(rng, pal["sky"])
    ground = _jitter(rng, pal["ground"])
    accent = _jitter(rng, pal["accent"])
    horizon = int(s * rng.uniform(0.45, 0.6))
    draw.rectangle([0, 0, s, s], fill=sky)
    if scene == "beach":  # sea band, sand, a sun
        draw.rectangle([0, horizon, s, s], fill=ground)
        draw.rectangle([0, horizon - s // 8, s, horizon], fill=accent)
        r = s // 10
        cx = int(s * rng.uniform(0.15, 0.85))
        draw.ellipse([cx - r, s // 12, cx + r, s // 12 + 2 * r], fill=pal["detail"])
    elif scene == "forest":  # dark trunks and round canopies
        draw.rectangle([0, horizon, s, s], fill=ground)
        for i in range(5):
            x = int((i + rng.uniform(0.2, 0.8)) * s / 5)
            draw.rectangle([x - s // 40, s // 5, x + s // 40, horizon + s // 10], fill=pal["detail"])
            draw.ellipse([x - s // 9, s // 12, x + s // 9, s // 12 + 2 * s // 9], fill=accent)
    elif scene == "mountain":  # large peaks with snow caps
        draw.rectangle([0, horizon, s, s], fill=ground)
        for x0, h in ((-0.2, 0.75), (0.35, 0.9), (0.7, 0.7)):
            left, peak = int((x0 + rng.uniform(-0.05, 0.05)) * s), int(s * (1 - h))
            apex = (left + s // 3, peak)
            draw.polygon([(left, horizon), apex, (left + 2 * s // 3, horizon)], fill=accent)
            draw.polygon(
                [apex, (apex[0] - s // 14, peak + s // 10), (apex[0] + s // 14, peak + s // 10)], fill=pal["detail"]
            )
    elif scene == "city":  # a skyline of blocks with windows
        draw.rectangle([0, horizon, s, s], fill=ground)
        x = 0
        while x < s:
            w, h = int(s * rng.uniform(0.1, 0.18)), int(s * rng.uniform(0.25, 0.5))
            draw.rectangle([x, horizon - h, x + w, horizon], fill=accent)
            for wy in range(horizon - h + s // 24, horizon - s // 24, s // 12):
                draw.rectangle([x + w // 4, wy, x + w // 4 + s // 40, wy + s // 40], fill=pal["detail"])
            x += w + s // 40
    elif scene == "desert":  # rolling dunes
        for k, y0 in enumerate((horizon - s // 12, horizon + s // 10)):
            phase = rng.uniform(0, 2 * np.pi)
            pts = [(x, int(y0 + s * 0.06 * np.sin(2 * np.pi * x / s * 1.5 + phase))) for x in range(0, s + 1, 4)]
            draw.polygon([*pts, (s, s), (0, s)], fill=ground if k else accent)
    elif scene == "lake":  # water with reflections and a far shore
        draw.rectangle([0, horizon - s // 14, s, horizon], fill=ground)
        draw.rectangle([0, horizon, s, s], fill=accent)
        for k in range(4):
            y = horizon + (k + 1) * (s - horizon) // 5
            x = int(s * rng.uniform(0.1, 0.6))
            draw.line([x, y, x + s // 4, y], fill=pal["detail"], width=max(1, s // 64))
    else:  # pragma: no cover - SCENES is closed
        raise ValueError(scene)


def _draw_object(
    draw: ImageDraw.ImageDraw, obj: str, cx: float, cy: float, r: float, pal: dict, rng: np.random.Generator
) -> None:
    body, detail = _jitter(rng, pal["object"], 12), pal["detail"]
    if obj == "balloon":
        draw.ellipse([cx - 0.7 * r, cy - r, cx + 0.7 * r, cy + 0.6 * r], fill=body)
        draw.line([cx, cy + 0.6 * r, cx + 0.1 * r, cy + 1.2 * r], fill=detail, width=max(1, int(r / 12)))
    elif obj == "tent":
        draw.polygon([(cx - r, cy + 0.8 * r), (cx, cy - r), (cx + r, cy + 0.8 * r)], fill=body)
        draw.polygon([(cx - 0.25 * r, cy + 0.8 * r), (cx, cy), (cx + 0.25 * r, cy + 0.8 * r)], fill=detail)
    elif obj == "car":
        draw.rectangle([cx - r, cy - 0.2 * r, cx + r, cy + 0.45 * r], fill=body)
        draw.rectangle([cx - 0.55 * r, cy - 0.65 * r, cx + 0.5 * r, cy - 0.2 * r], fill=body)
        for wx in (cx - 0.55 * r, cx + 0.55 * r):
            draw.ellipse([wx - 0.28 * r, cy + 0.25 * r, wx + 0.28 * r, cy + 0.8 * r], fill=detail)
    elif obj == "house":
        draw.rectangle([cx - 0.7 * r, cy - 0.1 * r, cx + 0.7 * r, cy + r], fill=body)
        draw.polygon([(cx - 0.95 * r, cy - 0.1 * r), (cx, cy - r), (cx + 0.95 * r, cy - 0.1 * r)], fill=body)
        draw.rectangle([cx - 0.2 * r, cy + 0.35 * r, cx + 0.2 * r, cy + r], fill=detail)
    elif obj == "flower":
        for k in range(6):
            a = k * np.pi / 3
            px, py = cx + 0.55 * r * np.cos(a), cy - 0.2 * r + 0.55 * r * np.sin(a)
            draw.ellipse([px - 0.35 * r, py - 0.35 * r, px + 0.35 * r, py + 0.35 * r], fill=body)
        draw.ellipse([cx - 0.3 * r, cy - 0.5 * r, cx + 0.3 * r, cy + 0.1 * r], fill=detail)
        draw.line([cx, cy + 0.3 * r, cx, cy + r], fill=body, width=max(1, int(r / 6)))
    elif obj == "boat":
        draw.polygon(
            [
                (cx - r, cy + 0.3 * r),
                (cx + r, cy + 0.3 * r),
                (cx + 0.65 * r, cy + 0.8 * r),
                (cx - 0.65 * r, cy + 0.8 * r),
            ],
            fill=body,
        )
        draw.polygon(
            [(cx - 0.05 * r, cy - r), (cx - 0.05 * r, cy + 0.25 * r), (cx - 0.8 * r, cy + 0.25 * r)], fill=detail
        )
        draw.polygon(
            [(cx + 0.05 * r, cy - 0.8 * r), (cx + 0.05 * r, cy + 0.25 * r), (cx + 0.7 * r, cy + 0.25 * r)], fill=body
        )
    else:  # pragma: no cover - OBJECTS is closed
        raise ValueError(obj)


def render(scene: str, objects: list[str], palette: str, resolution: int, rng: np.random.Generator) -> Image.Image:
    """Draws one image (at 2× and downsampled, for smooth edges). ``objects[0]`` is the large main object."""
    size = 2 * resolution
    pal = _PALETTE_COLOURS[palette]
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    _draw_scene(draw, scene, size, pal, rng)
    r = size * rng.uniform(0.22, 0.3)
    cx, cy = size * rng.uniform(0.32, 0.68), size * rng.uniform(0.45, 0.62)
    if len(objects) > 1:  # the small second object goes to the side away from the main one
        r2 = r * rng.uniform(0.3, 0.4)
        cx2 = size * (0.14 if cx > size / 2 else 0.86)
        _draw_object(draw, objects[1], cx2, size * rng.uniform(0.7, 0.82), r2, pal, rng)
    _draw_object(draw, objects[0], cx, cy, r, pal, rng)
    image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    noise = rng.normal(0, 4, (resolution, resolution, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def measure_attributes(image: Image.Image) -> tuple[float, float]:
    """EmoSet-style brightness and colourfulness in [0, 1], rounded to steps of 0.1.

    Brightness is the mean luma; colourfulness is Hasler & Süsstrunk's metric divided by 150 and clipped.
    """
    rgb = np.asarray(image, dtype=np.float32)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colourful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    return round(float(luma.mean() / 255), 1), round(float(min(colourful / 150, 1.0)), 1)


def write_synthetic_dataset(root: str | Path, config: SynthConfig | None = None, overwrite: bool = False) -> Path:
    """Writes the built-in dataset to ``root`` (deterministic from ``config.seed``).

    The dataset is written to a temporary directory beside ``root`` and renamed into place, so an interrupted
    run leaves no half-written dataset.

    Raises:
        DataError: ``root`` exists and is not empty, and ``overwrite`` is False.
    """
    cfg = config or SynthConfig()
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise DataError(f"{root} already exists and is not empty; choose another directory or pass --overwrite")
    if cfg.resolution < 16:
        raise DataError(f"resolution must be at least 16 px, got {cfg.resolution}")
    if min(cfg.train, cfg.val, cfg.test) < 0 or cfg.train == 0:
        raise DataError("split sizes must be >= 0 and the training split non-empty")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write(tmp, cfg)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def generator_info(cfg: SynthConfig) -> dict[str, Any]:
    """info.json's "generator" record: what identifies a built-in dataset (its options and its rule)."""
    return {
        "name": "uniemo built-in synthetic dataset (not EmoSet: procedurally drawn images in EmoSet's layout)",
        **asdict(cfg),
        "palettes": list(PALETTES),
        "palette_valence": PALETTE_VALENCE,
        "object_slot": OBJECT_SLOT,
        "scene_slot": SCENE_SLOT,
    }


def _write(root: Path, cfg: SynthConfig) -> None:
    rng = np.random.default_rng(cfg.seed)
    counters = dict.fromkeys(EMOSET_EMOTIONS, 0)
    for emotion in EMOSET_EMOTIONS:
        (root / "image" / emotion).mkdir(parents=True)
        (root / "annotation" / emotion).mkdir(parents=True)
    splits: dict[str, list[list[str]]] = {}
    for split, count in (("train", cfg.train), ("val", cfg.val), ("test", cfg.test)):
        entries = []
        for _ in range(count):
            scene = SCENES[rng.integers(len(SCENES))]
            palette = PALETTES[rng.integers(len(PALETTES))]
            objects = [OBJECTS[rng.integers(len(OBJECTS))]]
            if rng.random() < cfg.second_object_prob:
                objects.append(OBJECTS[(OBJECTS.index(objects[0]) + 1 + rng.integers(len(OBJECTS) - 1)) % 6])
            emotion = emotion_of(scene, objects[0], palette)
            if rng.random() < cfg.label_noise:
                others = [e for e in EMOSET_EMOTIONS if e != emotion]
                emotion = others[rng.integers(len(others))]
            image = render(scene, objects, palette, cfg.resolution, rng)
            brightness, colorfulness = measure_attributes(image)
            counters[emotion] += 1
            stem = f"{emotion}_{counters[emotion]:05d}"
            image_rel, ann_rel = f"image/{emotion}/{stem}.jpg", f"annotation/{emotion}/{stem}.json"
            image.save(root / image_rel, quality=cfg.jpeg_quality)
            annotation = {
                "emotion": emotion,
                "brightness": brightness,
                "colorfulness": colorfulness,
                "scene": scene,
                "object": objects,
                "palette": palette,
            }
            (root / ann_rel).write_text(json.dumps(annotation))
            entries.append([emotion, image_rel, ann_rel])
        splits[split] = entries
        (root / f"{split}.json").write_text(json.dumps(entries))
    info = {
        "label2idx": {e: i for i, e in enumerate(EMOSET_EMOTIONS)},
        "idx2label": {str(i): e for i, e in enumerate(EMOSET_EMOTIONS)},
        "scene2idx": {s: i for i, s in enumerate(SCENES)},
        "object2idx": {o: i for i, o in enumerate(OBJECTS)},
        "generator": generator_info(cfg),
    }
    (root / "info.json").write_text(json.dumps(info, indent=1))
    logger.debug("wrote %s", {k: len(v) for k, v in splits.items()})
