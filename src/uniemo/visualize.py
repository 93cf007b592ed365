"""Where the expert queries look (paper Fig. 9): the Interactive Blocks' cross-attention over the patches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from uniemo.data.images import load_image
from uniemo.errors import UniEmoError
from uniemo.pipelines.classifier import EmotionClassifier, Prediction
from uniemo.plotting import pyplot, save_figure


@dataclass
class AttentionMaps:
    """Attention of one image's expert queries.

    Attributes:
        image: the model's view of the image (resized and centre-cropped, S × S).
        scene: (g, g) mean over the scene queries of their attention after L₁ (sums to 1).
        object: (g, g) the same for the object queries after L₂.
        prediction: the model's prediction for the image.
    """

    image: Image.Image
    scene: np.ndarray
    object: np.ndarray
    prediction: Prediction


def attention_maps(clf: EmotionClassifier, image: Image.Image | str | Path) -> AttentionMaps:
    """Scene and object query attention maps of one image.

    Raises:
        UniEmoError: the model has no expert queries (``query_mode: none``).
    """
    if clf.model.query_mode == "none":
        raise UniEmoError("this model has no expert queries (query_mode: none), so it has no attention maps")
    pil = load_image(image) if isinstance(image, (str, Path)) else image.convert("RGB")
    out = clf.features([pil], need_attention=True)
    grid = int(round(out.scene_attention.shape[-1] ** 0.5))
    scene = out.scene_attention[0].float().mean(0).reshape(grid, grid).cpu().numpy()  # (g, g)
    obj = out.object_attention[0].float().mean(0).reshape(grid, grid).cpu().numpy()  # (g, g)
    view = clf.transform.view(pil)
    prediction = clf.to_prediction(out.logits[0].float().softmax(-1).cpu(), top_k=3)
    return AttentionMaps(view, scene, obj, prediction)


def save_attention_figure(maps: AttentionMaps, path: str | Path, title: str = "") -> Path:
    """Writes the image and both maps overlaid on it, side by side, as a PNG."""
    plt = pyplot()

    size = maps.image.size[0]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4), dpi=120)
    axes[0].imshow(maps.image)
    axes[0].set_title(f"{maps.prediction.label} {maps.prediction.probability:.2f}")
    panels = ((axes[1], "scene queries (after L₁)", maps.scene), (axes[2], "object queries (after L₂)", maps.object))
    for ax, name, grid in panels:
        heat = Image.fromarray((grid / max(grid.max(), 1e-12) * 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BILINEAR
        )
        ax.imshow(maps.image)
        ax.imshow(np.asarray(heat), cmap="jet", alpha=0.5, vmin=0, vmax=255)
        ax.set_title(name)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
