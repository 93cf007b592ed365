"""CLIP preprocessing without torchvision: shortest-side resize, centre crop, normalisation; train-time crops."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from uniemo.constants import CLIP_MEAN, CLIP_STD


class ClipTransform:
    """PIL image → (3, S, S) CLIP-normalised tensor.

    Evaluation follows CLIP's processor (bicubic shortest-side resize to S, centre crop). Training with
    ``augment`` takes a random crop of 80–100 % of the area (aspect 3/4–4/3) resized to S, and flips
    horizontally with probability ½, drawing from the ``rng`` it is given, so augmentation is reproducible.

    Args:
        image_size: S.
        augment: enable the training augmentation.
    """

    def __init__(self, image_size: int, augment: bool = False) -> None:
        self.image_size = image_size
        self.augment = augment
        self.mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def view(self, image: Image.Image) -> Image.Image:
        """The S × S image the model sees at evaluation (before normalisation)."""
        s = self.image_size
        w, h = image.size
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - s) // 2, (nh - s) // 2
        return image.crop((left, top, left + s, top + s))

    def _train_geometry(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        area = w * h
        for _ in range(10):
            target = area * rng.uniform(0.8, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                image = image.crop((left, top, left + cw, top + ch))
                break
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.augment and rng is not None:
            image = self._train_geometry(image, rng)
        else:
            image = self.view(image)
        array = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3)
        tensor = torch.from_numpy(array).permute(2, 0, 1)  # (3, S, S)
        return (tensor - self.mean) / self.std
